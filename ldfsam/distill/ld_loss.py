"""Localization Distillation (LD) and classification KD losses on raw YOLOv8 head outputs (section 3.3).

Each side (l, t, r, b) of a YOLOv8 box is a distribution over ``reg_max`` bins (the DFL logits). LD softens the
teacher's and the student's logits with a generalised softmax of temperature tau and measures
KL(p_T || p_S), scaled by tau^2 so that its gradients keep their size as tau grows (Hinton et al.).

The reduction is the LD reference implementation's (HikariTJU/LD: mmdet's ``KnowledgeDistillationKLDivLoss`` on
one row of bins per side, ``.mean(1) * T * T``, then ``avg_factor=4`` over the sides): the pointwise KL terms are
averaged over the bins and the sides, not summed, which keeps LD on the scale of the detection loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ld_per_anchor(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reg_max: int) -> torch.Tensor:
    """LD of each anchor: its pointwise KL terms averaged over the four sides and the bins.

    student, teacher: N x (4 * reg_max) box logits (side-major, as the Detect head lays them out).
    Returns N: tau^2 / (4 * reg_max) * sum_sides KL(softmax(teacher / tau) || softmax(student / tau)).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} logits differ in shape")
    n = student.shape[0]
    s = student.float().reshape(n, 4, reg_max) / temperature
    t = teacher.detach().float().reshape(n, 4, reg_max) / temperature
    log_ps = F.log_softmax(s, dim=-1)
    log_pt = F.log_softmax(t, dim=-1)
    pointwise = log_pt.exp() * (log_pt - log_ps)  # N x 4 x reg_max
    return pointwise.mean(dim=(1, 2)) * temperature**2


def kd_per_anchor(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Classification KD of each anchor for YOLO's independent (sigmoid) class scores.

    student, teacher: N x C class logits. Each class is a Bernoulli variable; returns N:
    tau^2 * sum_classes KL(Bern(sigmoid(z_T / tau)) || Bern(sigmoid(z_S / tau))).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} logits differ in shape")
    s = student.float() / temperature
    t = teacher.detach().float() / temperature
    pt = t.sigmoid()
    # log sigmoid(x) and log(1 - sigmoid(x)) = log sigmoid(-x), both stable for large |x|.
    kl = pt * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(-1) * temperature**2
