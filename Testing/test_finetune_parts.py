"""Parts of the trainer: the resumable distributed sampler, the loss, the schedule, box prompts from masks and
the flattened training state."""

from __future__ import annotations

import math

import pytest
import torch

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.gt_boxes import boxes_from_masks
from ldfsam.finetune.loss import dice_bce_loss, hard_dice
from ldfsam.finetune.sampler import ResumableBatchSampler
from ldfsam.finetune.trainer import cosine_lr


def test_ranks_together_see_the_single_process_batches():
    single = list(ResumableBatchSampler(11, 4, seed=3))
    ranks = [list(ResumableBatchSampler(11, 2, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for k, batch in enumerate(single):
        together = sorted(ranks[0][k] + ranks[1][k])
        # The last global batch is padded to a multiple of the world size (as DistributedSampler does).
        assert set(batch) <= set(together) and len(together) - len(batch) <= 1
    everything = sorted(i for b in single for i in b)
    assert everything == list(range(11))


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    s = ResumableBatchSampler(10, 3, seed=1)
    s.set_position(2)
    full = list(s)
    s.set_position(2, 2)
    assert list(s) == full[2:]
    assert list(s) == full  # the start position applies to one iteration only
    s.set_position(3)
    assert list(s) != full


def test_loss_and_dice():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 20
    assert dice_bce_loss(good, target) < 0.05
    assert dice_bce_loss(-good, target) > 10
    assert hard_dice(good, target).tolist() == [1.0, 1.0]
    empty = torch.zeros(1, 1, 8, 8)
    assert hard_dice(torch.full((1, 1, 8, 8), -5.0), empty).tolist() == [1.0]  # both empty
    assert hard_dice(torch.full((1, 1, 8, 8), 5.0), empty).tolist() == [0.0]
    # Per-image terms: the mean over a split batch equals the whole batch's loss (what DDP relies on).
    logits = torch.randn(4, 1, 8, 8)
    tgt = (torch.rand(4, 1, 8, 8) > 0.5).float()
    halves = (dice_bce_loss(logits[:2], tgt[:2]) + dice_bce_loss(logits[2:], tgt[2:])) / 2
    assert float(halves) == pytest.approx(float(dice_bce_loss(logits, tgt)), rel=1e-6)


def test_cosine_schedule():
    cfg = FinetuneConfig(lr=1e-4, min_lr=0.0)
    assert cosine_lr(cfg, 0, 100) == pytest.approx(1e-4)
    assert cosine_lr(cfg, 50, 100) == pytest.approx(5e-5)
    assert cosine_lr(cfg, 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_boxes_from_masks():
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, 0, 2:5, 3:9] = 1
    mask[0, 0, 10:12, 10:15] = 1
    boxes = boxes_from_masks(mask, scale=2.0)
    assert boxes[0].tolist() == [[6.0, 4.0, 18.0, 10.0, 1.0, 0.0], [20.0, 20.0, 30.0, 24.0, 1.0, 0.0]]
    assert boxes[1].shape == (0, 6)


def test_training_state_round_trip(tmp_path):
    import random

    import numpy as np

    from ldfsam.finetune.state import load_training_state, save_training_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    save_training_state(tmp_path / "s.safetensors", model, opt, {"epoch": 1, "global_step": 3})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    assert load_training_state(tmp_path / "s.safetensors", model2, opt2) == {"epoch": 1, "global_step": 3}
    assert torch.equal(model.weight, model2.weight)
    for p, q in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(torch.as_tensor(p[k]), torch.as_tensor(q[k])) for k in p)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
    assert not math.isnan(opt2.param_groups[0]["lr"])
