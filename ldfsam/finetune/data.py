"""The training and validation data of a fine-tuning run: prepared CBCT slices or a 2D image dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..data.config import PreprocessConfig
from ..errors import InputError
from .config import FinetuneConfig
from .image_dataset import ImageMaskDataset


@dataclass
class RunData:
    train: torch.utils.data.Dataset
    val: Optional[torch.utils.data.Dataset]
    preprocess: PreprocessConfig
    # The case ids of each split actually used (after budget and limits), saved as the run's splits.json.
    splits: Dict[str, List[str]]
    info: Dict[str, Any] = field(default_factory=dict)

    def splits_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.splits, sort_keys=True).encode()).hexdigest()


def detect_format(path: Path) -> str:
    """"slices" for a folder prepared by ``ldfsam prepare``, "images" for an image/mask dataset."""
    from . import slices

    if slices.is_prepared(path):
        return "slices"
    return "images"


def _limit(items, n: Optional[int]):
    """At most ``n`` items, evenly spread over the sequence (ids list or dataset)."""
    if n is None or n >= len(items):
        return items
    picks = sorted({int(round(i * (len(items) - 1) / max(n - 1, 1))) for i in range(n)})
    if isinstance(items, list):
        return [items[i] for i in picks]
    return torch.utils.data.Subset(items, picks)


def _image_data(cfg: FinetuneConfig, sam_size: int, yolo_size: int, class_names: List[str]) -> RunData:
    from ..data.layouts import find_image_cases
    from ..data.splits import budget_subset, make_splits, read_splits

    root = Path(cfg.data)
    if len(class_names) != 1:
        raise InputError(f"2D image/mask datasets have one class (their masks are binary), but the model has "
                         f"{len(class_names)}: {', '.join(class_names)}", root)
    pairs = {c.case_id: (c.image, c.label) for c in find_image_cases(root).cases}
    if not pairs:
        raise InputError("holds no image/mask pairs", root)
    if cfg.splits:
        splits = read_splits(cfg.splits)
        unknown = sorted(set(splits.train + splits.val) - set(pairs))
        if unknown:
            raise InputError(f"lists ids that are not in {root}: {', '.join(unknown[:5])}", cfg.splits)
    else:
        splits = make_splits(list(pairs), test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                             seed=cfg.split_seed)
    train_ids = _limit(budget_subset(splits.train, cfg.budget), cfg.max_train_items)
    val_ids = _limit(splits.val, cfg.max_val_items)
    if not train_ids:
        raise InputError("the training split is empty", root)
    make = lambda ids: ImageMaskDataset([(i, *pairs[i]) for i in ids], sam_size, yolo_size)  # noqa: E731
    preprocess = PreprocessConfig(target_spacing=None, sam_size=sam_size, yolo_size=yolo_size,
                                  class_names=list(class_names))
    return RunData(make(train_ids), make(val_ids) if val_ids else None, preprocess,
                        {"train": train_ids, "val": val_ids, "test": list(splits.test)},
                        {"format": "images", "items_total": len(pairs)})


def load_data(cfg: FinetuneConfig, sam_size: int, yolo_size: int, class_names: List[str]) -> RunData:
    """Build the run's datasets from ``cfg.data``; sizes and class names apply to 2D datasets (a prepared
    slice folder brings its own preprocessing configuration)."""
    path = Path(cfg.data)
    if not cfg.data or not path.exists():
        raise InputError("no such dataset folder", path)
    fmt = cfg.dataset_format if cfg.dataset_format != "auto" else detect_format(path)
    if fmt == "images":
        return _image_data(cfg, sam_size, yolo_size, class_names)
    from . import slices

    return slices.slice_data(cfg, sam_size, yolo_size, _limit)
