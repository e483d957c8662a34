"""Localization distillation and KD losses: exact values on hand-built distributions, temperature behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ldfsam.distill.ld_loss import kd_per_anchor, ld_per_anchor


def test_ld_is_zero_for_identical_distributions():
    torch.manual_seed(1)
    logits = torch.randn(7, 4 * 16) * 5
    for tau in (1.0, 10.0):
        assert torch.allclose(ld_per_anchor(logits, logits.clone(), tau, 16), torch.zeros(7), atol=1e-6)
    # Logits shifted per side by a constant give the same softmax: still zero.
    shifted = logits.reshape(7, 4, 16) + torch.arange(4.0).reshape(1, 4, 1) * 3
    # float32 rounding, amplified by tau^2 = 100
    assert torch.allclose(ld_per_anchor(shifted.reshape(7, 64), logits, 10.0, 16), torch.zeros(7), atol=1e-5)


def test_ld_equals_hand_computation():
    # Teacher side distribution (1/2, 1/4, 1/8, 1/8), student uniform over 4 bins. Pointwise KL terms
    # p_t ln(p_t / p_s): 1/2 ln 2, 1/4 ln 1 = 0, 1/8 ln(1/2), 1/8 ln(1/2); their sum (the KL) is 1/4 ln 2 per side.
    p_t = torch.tensor([0.5, 0.25, 0.125, 0.125])
    tau = 2.0
    teacher = (tau * p_t.log()).repeat(4)[None]  # softmax(teacher / tau) = p_t on every side
    student = torch.zeros(1, 16)
    # Mean over 4 sides x 4 bins = 4 * (1/4 ln 2) / 16 = ln 2 / 16; times tau^2 = 4: ln 2 / 4.
    assert ld_per_anchor(student, teacher, tau, 4).item() == pytest.approx(math.log(2) / 4, rel=1e-6)
    # One anchor with one differing side only: 4 * (1/4 ln 2) / 16 = ln 2 / 16.
    teacher_one = torch.zeros(1, 16)
    teacher_one[0, 8:12] = tau * p_t.log()
    assert ld_per_anchor(student, teacher_one, tau, 4).item() == pytest.approx(math.log(2) / 16, rel=1e-6)


def test_ld_matches_the_reference_implementations_reduction():
    # HikariTJU/LD: one row of reg_max + 1 bins per side, F.kl_div(..., reduction="none").mean(1) * T * T
    # (mmdet's KnowledgeDistillationKLDivLoss), each side weighted by its anchor's weight, summed, / avg_factor=4.
    torch.manual_seed(2)
    s, t = torch.randn(5, 64) * 3, torch.randn(5, 64) * 3
    tau = 10.0
    rows = F.kl_div(F.log_softmax(s.reshape(20, 16) / tau, dim=1), F.softmax(t.reshape(20, 16) / tau, dim=1),
                    reduction="none").mean(1) * (tau * tau)
    weight = torch.rand(5)
    reference = (rows * weight[:, None].expand(-1, 4).reshape(-1)).sum() / 4.0
    assert (ld_per_anchor(s, t, tau, 16) * weight).sum().item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(ld_per_anchor(s, t, tau, 16), rows.reshape(5, 4).sum(1) / 4.0, atol=1e-6)


def test_temperature_softens_and_tau_squared_keeps_scale():
    torch.manual_seed(3)
    t = torch.randn(1, 64) * 4
    s = torch.randn(1, 64) * 4

    def entropy(z, tau):
        p = F.softmax(z.reshape(4, 16) / tau, -1)
        return -(p * p.log()).sum(-1).mean().item()

    assert entropy(t, 10.0) > entropy(t, 1.0)
    assert entropy(t, 10.0) < math.log(16)
    # Raw KL shrinks like 1/tau^2 as tau grows; tau^2 * KL tends to the logit-matching limit
    # 1/(2 n) * sum_i (d_i - mean d)^2, d = t - s, per side (n = reg_max bins); LD averages over the 4 n terms.
    d = (t - s).reshape(4, 16)
    limit = (0.5 * ((d - d.mean(-1, keepdim=True)) ** 2).mean(-1)).sum().item() / (4 * 16)
    big = ld_per_anchor(s, t, 1000.0, 16).item()
    assert big == pytest.approx(limit, rel=1e-2)
    raw_10 = ld_per_anchor(s, t, 10.0, 16).item() / 100
    raw_100 = ld_per_anchor(s, t, 100.0, 16).item() / 10000
    assert raw_100 < raw_10 / 50


def test_ld_gradient_reaches_only_the_student():
    s = torch.randn(3, 64, requires_grad=True)
    t = torch.randn(3, 64, requires_grad=True)
    ld_per_anchor(s, t, 10.0, 16).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_hand_value_and_zero():
    z = torch.tensor([[2.0, -1.0]])
    assert kd_per_anchor(z, z.clone(), 1.0).abs().max().item() < 1e-7
    # One class: teacher p = sigmoid(ln 3) = 3/4, student p = 1/2: KL = 3/4 ln(3/2) + 1/4 ln(1/2).
    teacher = torch.tensor([[math.log(3.0)]])
    student = torch.zeros(1, 1)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_per_anchor(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # Temperature 2 on doubled logits: same probabilities, times tau^2.
    assert kd_per_anchor(student, 2 * teacher, 2.0).item() == pytest.approx(4 * expected, rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ld_per_anchor(torch.zeros(2, 64), torch.zeros(3, 64), 10.0, 16)
