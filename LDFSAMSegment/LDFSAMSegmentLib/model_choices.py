"""The entries of the model selector: installed and bundled models first, then those that can be downloaded.

Read straight from the core's registry and cache (``ldfsam.models``, the code behind ``ldfsam models list``):
no torch, no process start, so the list refreshes instantly. ``LDFSAM_HOME`` chooses the cache, as for the core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional


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


def model_choices(ldfsam_home: Optional[str] = None) -> List[ModelChoice]:
    """Segmentation models known to the core; official SAM checkpoints (for training) are left out."""
    previous = os.environ.get("LDFSAM_HOME")
    if ldfsam_home:
        os.environ["LDFSAM_HOME"] = str(ldfsam_home)
    try:
        from ldfsam.models import DEFAULT_MODEL, installed_models, load_registry

        registry = load_registry()
        installed = installed_models()
    finally:
        if ldfsam_home:
            if previous is None:
                os.environ.pop("LDFSAM_HOME", None)
            else:
                os.environ["LDFSAM_HOME"] = previous
    by_file = {path.name for path in installed.values()}
    choices, seen = [], set()
    for entry in registry.values():
        if entry.kind != "ldfsam":
            continue
        if entry.bundled:
            state = "bundled"
        elif entry.name in installed or entry.file in by_file:
            state = "installed"
        else:
            state = "available"
        choices.append(ModelChoice(entry.name, state, entry.description, entry.name == DEFAULT_MODEL))
        seen |= {entry.name, entry.file}
    for name, path in installed.items():
        if name not in seen and path.name not in seen:
            choices.append(ModelChoice(name, "installed", f"imported: {path}", name == DEFAULT_MODEL))
    order = {"bundled": 0, "installed": 0, "available": 1}
    return sorted(choices, key=lambda c: (order[c.state], not c.default, c.name.lower()))
