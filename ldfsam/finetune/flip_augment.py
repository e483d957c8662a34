"""Flip augmentation of Phase 2 that keeps the embedding and feature caches exact (``FinetuneConfig.flip_augment``).

A random flip of the SAM input would make every step's embedding new, and the frozen encoder is 10-20× the cost
of the rest of a lite model's step (``embedding_cache.py``). So a flip is an image of its own: the training set
becomes its items and their flips (``FlipVariants``: the SAM and YOLO images, the mask and the valid-pixel map
flipped together), every variant is encoded and its YOLO features computed once, like any image, and each epoch
shows every training item once, in one of its variants drawn from (seed, epoch, item) (``VariantBatchSampler``):
the same steps per epoch as without flips, resumable at any step. Validation is never flipped.

One-class models only: a flip swaps a jaw's sides, so a tooth model's FDI classes would be wrong on the flips.
Measured on Kvasir-SEG: docs/training.md, "Fifth series".
"""

from __future__ import annotations

from typing import Dict, List

import torch

from ..data.images import FLIPS
from .config import FlipAugment
from .sampler import ResumableBatchSampler

# Item fields that are images of the item's grid (C×H×W): flipped with it. Everything else is kept as it is.
SPATIAL = ("sam_image", "yolo_image", "mask", "valid")


class FlipVariants(torch.utils.data.Dataset):
    """The items of ``dataset`` and their flips: index ``v * N + i`` is item ``i`` under ``FLIPS[flips][v]``."""

    def __init__(self, dataset: torch.utils.data.Dataset, flips: FlipAugment):
        self.dataset, self.flips = dataset, flips
        self.dims = FLIPS[flips]
        self.base = len(dataset)

    def __len__(self) -> int:
        return self.base * len(self.dims)

    def __getitem__(self, index: int) -> Dict[str, object]:
        variant, i = divmod(index, self.base)
        item = self.dataset[i]
        dims = self.dims[variant]
        if not dims:
            return item
        item = dict(item)
        for key in SPATIAL:
            value = item.get(key)
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                item[key] = torch.flip(value, dims)
        return item


class VariantBatchSampler(ResumableBatchSampler):
    """Batches over ``size`` base items (their order as ``ResumableBatchSampler``'s), each item given as one of its
    ``variants`` (index ``v * size + i``), ``v`` drawn from (seed, epoch) for all items at once, so every rank and
    a resumed run draw the same."""

    def __init__(self, size: int, variants: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        super().__init__(size, batch_size, rank, world_size, shuffle=True, seed=seed)
        self.variants = variants

    def _indices(self) -> List[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch + 7919)
        choice = torch.randint(self.variants, (self.size,), generator=g).tolist()
        return [choice[i] * self.size + i for i in super()._indices()]


def check_flips(flips: str, class_names: List[str], psc: bool) -> None:
    """Refuse flip augmentation where it would teach wrong labels (several classes) or break slice pairs (PSC)."""
    from ..errors import ConfigError

    if flips not in FLIPS:
        raise ConfigError(f"FinetuneConfig: flip_augment must be one of {', '.join(FLIPS)}, not {flips!r}")
    if flips == "none":
        return
    if len(class_names) != 1:
        raise ConfigError(f"FinetuneConfig: flip_augment {flips!r} needs a one-class model (a flip swaps the jaw's "
                          f"sides, so classes such as {', '.join(class_names[:2])} would be wrong on the flips)")
    if psc:
        raise ConfigError("FinetuneConfig: flip_augment needs psc off (PSC pairs adjacent slices of one volume)")
