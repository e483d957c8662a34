"""Prepared datasets (``ldfsam prepare`` output: CBCT slices or 2D images) as a fine-tuning run's data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.prepared import MANIFEST, PreparedData
from ..data.splits import read_splits
from ..errors import InputError
from .config import FinetuneConfig


def is_prepared(path: Path) -> bool:
    """True when ``path`` is a folder written by ``ldfsam prepare``."""
    return (Path(path) / MANIFEST).is_file()


def slice_data(cfg: FinetuneConfig, sam_size: int, yolo_size: int, limit):
    """The run data of a prepared folder: its splits (or ``cfg.splits``), budget and slice selection; the model
    input sizes are the model's (the cache stores full-resolution slices and resizes on access)."""
    from .data import RunData

    prepared = PreparedData(cfg.data)
    if cfg.splits:
        prepared.splits = read_splits(cfg.splits)
    preprocess = dataclasses.replace(prepared.preprocess, sam_size=sam_size, yolo_size=yolo_size)
    train = prepared.slice_dataset("train", cfg.budget)
    val = prepared.slice_dataset("val") if prepared.splits.val else None
    train.cfg = preprocess
    if val is not None:
        val.cfg = preprocess
    if len(train) == 0:
        raise InputError("the training split has no slices", cfg.data)
    train, val = limit(train, cfg.max_train_items), (limit(val, cfg.max_val_items) if val is not None else None)
    splits = {"train": prepared.case_ids("train", cfg.budget), "val": prepared.case_ids("val"),
              "test": prepared.case_ids("test")}
    return RunData(train, val, preprocess, splits, {"format": "slices", "kind": prepared.kind})
