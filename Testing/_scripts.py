"""The repository's scripts and benchmarks (plain files, not a package) loaded as modules for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str, register: bool = False) -> ModuleType:
    """The module of ``REPO / relative`` (e.g. ``"scripts/train_demo_model.py"``), named after its file. ``register``:
    also put it in ``sys.modules`` (a script's dataclasses resolve their annotations there); the caller removes it."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
