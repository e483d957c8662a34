"""Every model the user can pick: registry entries with their state, plus models imported into the cache.

The one answer to "which models are there", shared by ``ldfsam models list`` and the Slicer model selector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .cache import installed_models
from .lineage import describe, lineage_of
from .registry import load_registry
from .resolve import DEFAULT_MODEL


@dataclass
class ModelInfo:
    name: str
    kind: str  # "ldfsam" (a segmentation model) or "sam-checkpoint" (official SAM weights, for training)
    state: str  # "bundled", "installed" or "available" (can be downloaded)
    size: int  # bytes
    description: str
    default: bool
    path: Optional[Path]  # the local file, where there is one
    # A model version made by ``ldfsam train --from``: its parent, cases and figures (models/lineage.py).
    lineage: Optional[dict] = None


def list_models() -> List[ModelInfo]:
    """Registry models in registry order, then models imported under names the registry does not know."""
    installed = installed_models()
    by_file = {p.name: p for p in installed.values()}
    out, listed = [], set()
    for e in load_registry().values():
        path = e.bundled_path if e.bundled else installed.get(e.name) or by_file.get(e.file)
        state = "bundled" if e.bundled else "installed" if path is not None else "available"
        out.append(ModelInfo(e.name, e.kind, state, e.size, e.description, e.name == DEFAULT_MODEL, path))
        listed |= {e.name, e.file}
    for name, p in installed.items():
        if name not in listed and p.name not in listed:
            lineage = lineage_of(p) if p.name.endswith(".safetensors") else None
            out.append(ModelInfo(name, "ldfsam", "installed", p.stat().st_size,
                                 describe(lineage) if lineage else f"imported: {p}", name == DEFAULT_MODEL, p,
                                 lineage))
    return out
