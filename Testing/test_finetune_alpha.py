"""The dense prompt's α learns (docs/training.md, "Why α stayed at 0").

AdamW moves a parameter by about its learning rate per step whatever its gradient, so α (one scalar, starting at 0)
could travel at most lr × steps / 2 in a cosine schedule: with the decoder's learning rate it stayed near 0 and the
dense prompt never counted. On a tiny synthetic problem where only the dense prompt knows the answer (the target is
marked in the YOLO features, the image embedding carries noise of LiteMedSAM's scale), the old setup (α in the
decoder's group with weight decay, raw P_dense) leaves α at the lr-bound and the loss flat; the current one (α's own
group, P_dense normalised) lets α grow to the embedding's scale and the dense prompt solve the problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.optim import make_optimizer, param_groups, set_lr
from ldfsam.finetune.trainer import cosine_lr
from ldfsam.model.feature_prompts import FeaturePromptEncoder

EMBEDDING_RMS = 0.1  # LiteMedSAM's image embeddings on Kvasir-SEG: RMS 0.109


class Toy(nn.Module):
    """Feature prompt encoder (dense head only) + a trainable 1×1 readout standing in for the decoder."""

    def __init__(self, dense_norm: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feature_prompts = FeaturePromptEncoder((8, 16, 32), 16, 32, (16, 16), dense=True, sparse=False,
                                                    yolo_size=128, dense_norm=dense_norm)
        self.readout = nn.Conv2d(32, 1, 1)


def _batch(g: torch.Generator, n: int = 8):
    mask = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        y, x = torch.randint(0, 10, (2,), generator=g).tolist()
        mask[i, :, y:y + 6, x:x + 6] = 1
    feats = [torch.randn(n, 8, 16, 16, generator=g) * 0.5 + mask, torch.randn(n, 16, 8, 8, generator=g),
             torch.randn(n, 32, 4, 4, generator=g)]
    z = torch.randn(n, 32, 16, 16, generator=g) * EMBEDDING_RMS  # no information about the target
    return feats, z, mask


def _train(cfg: FinetuneConfig, dense_norm: str, steps: int = 40):
    model = Toy(dense_norm)
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(1)
    losses, grads = [], []
    for step in range(steps):
        set_lr(opt, cosine_lr(cfg, step, steps))
        feats, z, mask = _batch(g)
        dense, _ = model.feature_prompts(feats)
        loss = F.binary_cross_entropy_with_logits(model.readout(z + dense), mask)
        opt.zero_grad()
        loss.backward()
        grads.append(float(model.feature_prompts.alpha.grad))
        opt.step()
        losses.append(loss.item())
    return float(model.feature_prompts.alpha), losses, grads


def test_alpha_has_its_own_group_without_weight_decay():
    model = Toy("group")
    cfg = FinetuneConfig(lr=2e-4)
    groups = param_groups(model, cfg)
    assert [len(g["params"]) for g in groups][-1] == 1 and groups[-1]["params"][0] is model.feature_prompts.alpha
    assert groups[-1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == cfg.weight_decay
    opt = make_optimizer(model, cfg)
    set_lr(opt, 1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4 * cfg.alpha_lr_scale])
    assert cfg.alpha_lr_scale > 1


def test_alpha_grows_and_the_dense_prompt_solves_the_problem():
    alpha, losses, grads = _train(FinetuneConfig(lr=5e-4), "group")
    # α receives a gradient from the first step on (the head's output is not zero at α = 0).
    assert abs(grads[0]) > 0
    # α moved far beyond what the decoder's learning rate allows in 40 steps (Σ lr_t = 0.01), to the embedding's
    # scale (P_dense has unit RMS, so α is its strength against the embedding's RMS of 0.1).
    assert alpha > 0.1, alpha
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses


def test_old_setup_left_alpha_at_the_learning_rate_bound():
    """The setup before the fix, for contrast: the same problem stays unsolved."""
    alpha, losses, _ = _train(FinetuneConfig(lr=5e-4, alpha_lr_scale=1.0, alpha_weight_decay=0.01), "none")
    assert abs(alpha) <= 40 * 5e-4 / 2 * 1.2, alpha  # Σ lr_t of the cosine schedule
    assert sum(losses[-5:]) / 5 > 0.95 * losses[0], losses
