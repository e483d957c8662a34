"""The ``auto`` prompt mode: per image, box prompts or feature prompts, as the detection decides.

Why: on Kvasir-SEG (docs/training.md) the box-prompted decoder draws better outlines than the feature-prompted one
where the detector finds the object cleanly, and the feature prompts win where it misses a part or adds a box
(polyps in two or three parts, most of them). How many boxes the detector is sure of tells the two apart: an image
whose prompt generator finds exactly one box scoring at least ``ModelConfig.auto_box_score`` is segmented from its
detected boxes (those scoring at least ``min(box_conf, auto_box_score)``, the best ``max_boxes``, as box mode
does), every other image (no confident box, or several) by the dense and sparse feature prompts.

An ``auto`` model is a ``dense+sparse`` model plus a box branch: the prompt encoder and mask decoder of a ``box``
model fine-tuned on the same frozen encoder and prompt generator. It is not trained itself but assembled from the
two trained models (``auto_assemble.py``, ``ldfsam models combine``); the score threshold is chosen on held-out images
(:func:`choose_box_score`, the same images and tie rule as box mode's confidence: ``finetune/box_conf.py``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn


class BoxBranch(nn.Module):
    """The box-mode model's prompt encoder and mask decoder inside an ``auto`` model (state keys
    ``box_branch.prompt_encoder.*``, ``box_branch.mask_decoder.*``)."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


def box_chosen(detections: Sequence[torch.Tensor], min_score: float) -> torch.Tensor:
    """Per image (N_i×6 detections: x0, y0, x1, y1, score, cls) whether exactly one box scores ``min_score`` or
    more: B bool."""
    return torch.tensor([int((d[:, 4] >= min_score).sum()) == 1 for d in detections], dtype=torch.bool)


def choose_box_score(scores: Sequence[Sequence[float]], box_dice: Sequence[float], feature_dice: Sequence[float],
                     grid: Optional[Sequence[float]] = None) -> Tuple[float, Dict[float, float]]:
    """(threshold, {threshold: mean Dice}) of the rule on held-out images: per image its detections' scores and
    the Dice of the box branch and of the feature prompts. ``grid``: box mode's confidence grid unless given (a
    detector trained on few images scores its boxes in the hundredths: Kvasir-SEG at 10 % chose 0.02, at 100 %
    0.4). Ties go to the middle tied threshold (the lower of two middles), as box mode's confidence does
    (``finetune/box_conf.py``)."""
    from ..finetune.box_conf import CONF_GRID, middle_tied

    grid = CONF_GRID if grid is None else grid
    if not len(scores) or not len(scores) == len(box_dice) == len(feature_dice):
        raise ValueError("choose_box_score needs per-image scores and both Dice lists, of one length")
    means = {}
    for t in grid:
        one = [sum(s >= t for s in sc) == 1 for sc in scores]
        means[float(t)] = float(np.mean([b if o else f for o, b, f in zip(one, box_dice, feature_dice)]))
    return middle_tied(means), means


def branch_boxes(detections: List[torch.Tensor], conf: float, max_boxes: int) -> List[torch.Tensor]:
    """The box prompts of each image: detections scoring at least ``conf``, the best ``max_boxes``."""
    return [d[d[:, 4] >= conf][:max_boxes] for d in detections]
