"""Dice + binary cross-entropy (section 4.2) and the hard Dice used for validation.

Both are means of per-image terms, so the loss of a batch split across processes averages to the loss of the
whole batch: DistributedDataParallel's gradient averaging then equals single-process training.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - soft Dice, per image and class, averaged. logits, target: B×C×H×W; valid: B×1×H×W or None."""
    prob = torch.sigmoid(logits.float())
    if valid is not None:  # pixels whose label was not reviewed take no part (ldfsam.data.training_case)
        prob, target = prob * valid, target * valid
    dims = tuple(range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                  bce_weight: float = 1.0, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dice_weight * soft Dice loss + bce_weight * mean BCE. logits, target: B×C×H×W (target in {0, 1}).

    ``valid`` (B×1×H×W, 1 = the label counts) masks both terms per pixel: the BCE is the mean over each image's
    valid pixels, averaged over the images, so an all-ones mask gives exactly the unmasked loss.
    """
    target = target.float()
    if valid is None:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    else:
        valid = valid.float()
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * valid
        dims = tuple(range(1, per_pixel.ndim))
        count = valid.expand_as(per_pixel).sum(dims)
        bce = (per_pixel.sum(dims) / count.clamp(min=1)).mean()
    return dice_weight * soft_dice_loss(logits, target, valid) + bce_weight * bce


@torch.no_grad()
def hard_dice(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
              valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dice of the thresholded prediction per image (classes pooled), B values; both empty counts 1.
    ``valid`` (B×1×H×W): only those pixels are compared."""
    pred = torch.sigmoid(logits.float()) > threshold
    ref = target > 0.5
    if valid is not None:
        pred, ref = pred & (valid > 0.5), ref & (valid > 0.5)
    dims = tuple(range(1, pred.ndim))
    inter = (pred & ref).sum(dims).float()
    total = pred.sum(dims).float() + ref.sum(dims).float()
    return torch.where(total > 0, 2.0 * inter / total.clamp(min=1), torch.ones_like(total))
