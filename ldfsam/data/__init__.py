"""Volumes and datasets: reading and writing volumes, preprocessing, labels and boxes, splits, caches, phantom
and its augmentations.

Names are imported lazily so that ``import ldfsam.data.config`` stays light (no SimpleITK or torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PreprocessConfig": "config",
    "read_volume": "volume",
    "write_volume": "volume",
    "write_label_volume": "volume",
    "same_grid": "volume",
    "make_phantom": "phantom",
    "Anatomy": "phantom_anatomy",
    "AugmentConfig": "augment_config",
    "augment_phantom": "augment",
    "training_slices": "synthetic",
    "prepare_volume": "preprocess",
    "to_model_input": "preprocess",
    "map_labels": "labels",
    "instance_boxes": "boxes",
    "find_cases": "layouts",
    "make_splits": "splits",
    "read_splits": "splits",
    "SliceDataset": "slices",
    "PreparedData": "prepared",
    "prepare_dataset": "prepared",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ldfsam.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_EXPORTS)
