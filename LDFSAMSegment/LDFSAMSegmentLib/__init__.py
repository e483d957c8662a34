"""The LDFSAM Segment module's parts, shared with LDFSAM Train.

Plain Python (no Slicer, no Qt, tested outside Slicer): ``commands``, ``process`` and ``pipes``, ``run_state``,
``dependencies``, ``model_choices``, ``segments``, ``bindings``, ``cohort``, ``prompts``, ``prompt_client``,
``prompt_targets``, ``reload_order``. Slicer layer: ``parameters``, ``logic``,
``install_logic``, ``widget`` with its sections (``model_section``, ``interactive_section``,
``training_section``), and ``lifecycle`` (what both modules' widgets share).
"""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"


def requirements_file() -> Path:
    """The core's Python requirements, as shipped with the module."""
    return RESOURCES / "requirements.txt"
