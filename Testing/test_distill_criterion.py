"""The student's criterion on real (tiny) YOLOv8 models: wiring of L_det + LD terms, schemes, teacher isolation."""

from __future__ import annotations

import copy

import pytest
import torch

from ldfsam.distill.config import LDConfig
from ldfsam.distill.criterion import FrozenTeacher, make_distillation_loss
from ldfsam.model.config import PromptGeneratorConfig
from ldfsam.model.prompt_generator import build_detection_model
from ldfsam.offline import import_ultralytics


def _model(seed: int):
    import_ultralytics()
    from ultralytics.cfg import get_cfg

    torch.manual_seed(seed)
    model = build_detection_model(PromptGeneratorConfig(scale="n", num_classes=1))
    model.args = get_cfg()
    return model


def _batch():
    torch.manual_seed(5)
    return {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.zeros(3, 1),
        "bboxes": torch.tensor([[0.3, 0.35, 0.3, 0.25], [0.7, 0.6, 0.2, 0.4], [0.5, 0.5, 0.5, 0.45]]),
    }


def test_identical_teacher_adds_zero_and_keeps_the_detection_loss():
    from ultralytics.utils.loss import v8DetectionLoss

    student = _model(0).eval()  # eval: the student's BatchNorm matches the frozen teacher's
    teacher = FrozenTeacher(copy.deepcopy(student))
    batch = _batch()
    preds = student(batch["img"])
    loss, items = make_distillation_loss(student, teacher, LDConfig())(preds, batch)
    plain, plain_items = v8DetectionLoss(student)(preds, batch)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "ld_main", "ld_vlr"]
    assert torch.allclose(loss[:3], plain, atol=1e-6)
    assert abs(items["ld_main"].item()) < 1e-6 and abs(items["ld_vlr"].item()) < 1e-6


def test_schemes_weights_and_gradients():
    student = _model(0).train()
    teacher = FrozenTeacher(_model(1))
    batch = _batch()
    preds = student(batch["img"])
    loss, items = make_distillation_loss(student, teacher, LDConfig())(preds, batch)
    assert items["ld_main"].item() > 0 and items["ld_vlr"].item() > 0
    # Returned like v8DetectionLoss: every term times the batch size.
    assert loss[3].item() == pytest.approx(2 * items["ld_main"].item(), rel=1e-5)

    doubled = make_distillation_loss(student, teacher, LDConfig(lambda_main=2.0, lambda_vlr=3.0))(preds, batch)[1]
    assert doubled["ld_main"].item() == pytest.approx(2 * items["ld_main"].item(), rel=1e-5)
    assert doubled["ld_vlr"].item() == pytest.approx(3 * items["ld_vlr"].item(), rel=1e-5)

    main_only = make_distillation_loss(student, teacher, LDConfig(scheme="ld_main"))(preds, batch)[1]
    assert list(main_only)[3:] == ["ld_main"]
    kd = make_distillation_loss(student, teacher, LDConfig(scheme="kd"))(preds, batch)[1]
    assert list(kd)[3:] == ["kd_loss"] and kd["kd_loss"].item() > 0

    loss.sum().backward()
    assert student.model[-1].cv2[0][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training


def test_vlr_term_alone_drives_the_box_branch_only():
    student = _model(0).train()
    teacher = FrozenTeacher(_model(1))
    batch = _batch()
    preds = student(batch["img"])
    loss, _ = make_distillation_loss(student, teacher, LDConfig())(preds, batch)
    loss[4].backward()  # the VLR LD term
    head = student.model[-1]
    assert head.cv2[0][-1].weight.grad.abs().sum() > 0  # box-distribution logits
    assert head.cv3[0][-1].weight.grad is None or head.cv3[0][-1].weight.grad.abs().sum() == 0


def test_teacher_stays_out_of_state_dict_ema_and_pickles():
    import pickle

    from ultralytics.utils.torch_utils import ModelEMA

    student = _model(0)
    keys = set(student.state_dict())
    teacher = FrozenTeacher(_model(1))
    student.criterion = make_distillation_loss(student, teacher, LDConfig())
    assert set(student.state_dict()) == keys
    ema = ModelEMA(student)
    assert set(ema.ema.state_dict()) == keys
    # Deep copies share the one teacher instead of duplicating it; pickling the handle drops it.
    assert ema.ema.criterion.teacher is teacher
    assert pickle.loads(pickle.dumps(teacher)).model is None


def test_mismatched_teacher_is_reported():
    import_ultralytics()
    from ultralytics.cfg import get_cfg

    student = _model(0)
    other = build_detection_model(PromptGeneratorConfig(scale="n", num_classes=2))
    other.args = get_cfg()
    batch = _batch()
    with pytest.raises(RuntimeError, match="teacher outputs"):
        make_distillation_loss(student, FrozenTeacher(other), LDConfig())(student(batch["img"]), batch)
