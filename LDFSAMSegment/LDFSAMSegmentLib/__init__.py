"""Plain-Python parts of the LDFSAM Slicer modules (no Slicer, no Qt): command lines, background processes,
progress, dependencies, model choices and result segments. The LDFSAM Train module uses them too."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"


def requirements_file() -> Path:
    """The core's Python requirements, as shipped with the module."""
    return RESOURCES / "requirements.txt"
