"""The entries of the model selector: installed and bundled models first, then those that can be downloaded.

Read straight from the core's model catalog (``ldfsam.models.list_models``, as ``ldfsam models list`` is):
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
        from ldfsam.models import list_models

        models = list_models()
    finally:
        if ldfsam_home:
            if previous is None:
                os.environ.pop("LDFSAM_HOME", None)
            else:
                os.environ["LDFSAM_HOME"] = previous
    choices = [ModelChoice(m.name, m.state, m.description, m.default) for m in models if m.kind == "ldfsam"]
    order = {"bundled": 0, "installed": 0, "available": 1}
    return sorted(choices, key=lambda c: (order[c.state], not c.default, c.name.lower()))
