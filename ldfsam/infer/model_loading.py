"""Loading the model for inference: a name, a path or an already loaded checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def _is_loaded(model: Any) -> bool:
    return model is not None and all(hasattr(model, a) for a in ("model", "model_cfg", "preprocess"))


def check_model_file(model: Any) -> Optional[Path]:
    """Resolve a model name or path and check its header (cheap), so a bad model fails before any work; None for
    a model already loaded."""
    if _is_loaded(model):
        return None
    from ..checkpoint import read_checkpoint_meta
    from ..models import resolve_model

    path = resolve_model(model)
    read_checkpoint_meta(path)
    return path


def load_model(model: Any = None, encoder_dtype=None):
    """A LoadedCheckpoint from a name, a path, or an object that already has model/model_cfg/preprocess. A file
    that is not a model raises CheckpointError; anything else is a bug and surfaces as it is."""
    import torch

    if _is_loaded(model):
        return model
    from ..checkpoint import load_checkpoint
    from ..models import resolve_model

    return load_checkpoint(resolve_model(model), encoder_dtype=encoder_dtype or torch.float32)
