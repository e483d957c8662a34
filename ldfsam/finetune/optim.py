"""Phase 2's optimiser: AdamW over the trainable parameters, with the dense prompt's α in a group of its own.

α (Z_cond = Z_img + α·P_dense, ``model/feature_prompts.py``) is one scalar that starts at 0 and has to travel to
the order of the embedding's scale for the dense prompt to count. AdamW moves a parameter by about its learning
rate per step whatever its gradient, so at the decoder's learning rate α cannot get far within a short schedule
(at most lr × steps / 2 under the cosine schedule: 0.018 in 72 steps of lr 5e-4), and weight decay pulls it back
to 0. Its own group takes ``alpha_lr_scale`` × the learning rate and no weight decay (a gain, like a norm's weight);
docs/training.md, "Why α stayed at 0", has the measurements behind this.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from .config import FinetuneConfig

ALPHA_SUFFIX = "feature_prompts.alpha"


def param_groups(model: torch.nn.Module, cfg: FinetuneConfig) -> List[Dict[str, Any]]:
    """The trainable parameters as AdamW groups: everything else, then α alone (when the model has one).

    Each group carries ``lr_scale``: the schedule sets its learning rate to ``lr_scale`` × the scheduled lr.
    """
    rest, alpha = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (alpha if name.endswith(ALPHA_SUFFIX) else rest).append(p)
    groups: List[Dict[str, Any]] = []
    if rest:
        groups.append({"params": rest, "weight_decay": cfg.weight_decay, "lr_scale": 1.0})
    if alpha:
        groups.append({"params": alpha, "weight_decay": cfg.alpha_weight_decay, "lr_scale": cfg.alpha_lr_scale})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled learning rate: each group gets ``lr`` × its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
