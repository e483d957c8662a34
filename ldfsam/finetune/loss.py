"""Dice + binary cross-entropy (section 4.2) and the hard Dice used for validation.

Both are means of per-image terms, so the loss of a batch split across processes averages to the loss of the
whole batch: DistributedDataParallel's gradient averaging then equals single-process training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, per image and class, averaged. logits, target: B×C×H×W."""
    prob = torch.sigmoid(logits.float())
    dims = tuple(range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                  bce_weight: float = 1.0) -> torch.Tensor:
    """dice_weight * soft Dice loss + bce_weight * mean BCE. logits, target: B×C×H×W (target in {0, 1})."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    return dice_weight * soft_dice_loss(logits, target) + bce_weight * bce


@torch.no_grad()
def hard_dice(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of the thresholded prediction per image (classes pooled), B values; both empty counts 1."""
    pred = torch.sigmoid(logits.float()) > threshold
    ref = target > 0.5
    dims = tuple(range(1, pred.ndim))
    inter = (pred & ref).sum(dims).float()
    total = pred.sum(dims).float() + ref.sum(dims).float()
    return torch.where(total > 0, 2.0 * inter / total.clamp(min=1), torch.ones_like(total))
