"""The YOLOv8 prompt generator: P3/P4/P5 features, detection, and its weight files."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from ldfsam.errors import CheckpointError
from ldfsam.model.config import PromptGeneratorConfig
from ldfsam.model.prompt_generator import (
    PromptGenerator,
    load_prompt_generator_weights,
    load_ultralytics_pt,
    save_prompt_generator,
)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return PromptGenerator(PromptGeneratorConfig(scale="n", num_classes=2, image_size=128)).eval()


def test_features_are_the_detect_heads_inputs(generator):
    x = torch.rand(2, 3, 128, 128)
    seen = {}
    hook = generator.head.register_forward_pre_hook(lambda m, args: seen.setdefault("x", [t.clone() for t in args[0]]))
    try:
        with torch.no_grad():
            generator.detector(x)
    finally:
        hook.remove()
    with torch.no_grad():
        feats = generator.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert generator.feature_channels == (64, 128, 256)
    for ours, theirs in zip(feats, seen["x"]):
        assert torch.equal(ours, theirs)


def test_detect_matches_full_model_and_nms(generator):
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    with torch.no_grad():  # make some boxes pass the threshold
        for seq in generator.head.cv3:
            seq[-1].bias.fill_(2.0)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ours = generator.detect(x, conf=0.25, max_det=7)
        ref = non_max_suppression(generator.detector(x)[0], conf_thres=0.25, iou_thres=0.7, max_det=7, nc=2)
    assert len(ours) == 2
    for a, b in zip(ours, ref):
        assert a.shape[1] == 6 and 0 < a.shape[0] <= 7
        assert torch.equal(a, b)
        assert torch.all(a[:, 4] >= 0.25) and set(a[:, 5].tolist()) <= {0.0, 1.0}


def test_has_objects_is_whether_nms_keeps_a_box():
    """The NMS-free test of "this slice holds teeth" agrees with the full detection, image by image, at
    thresholds that split the images both ways."""
    torch.manual_seed(1)
    gen = PromptGenerator(PromptGeneratorConfig(scale="n", num_classes=1, image_size=128)).eval()
    # Random P3/P4/P5 features: a fresh backbone's are near zero, so every image would score alike.
    feats = tuple(torch.randn(8, c, 128 // s, 128 // s) for c, s in zip(gen.feature_channels, (8, 16, 32)))
    with torch.no_grad():
        best = gen._head_predictions(feats)[:, 4].amax(dim=1)
        splits = 0
        for conf in torch.quantile(best, torch.tensor([0.2, 0.5, 0.8])).tolist():
            has = gen.has_objects(feats, conf=conf)
            boxes = gen.detect_from_features(feats, conf=conf)
            assert has.tolist() == [b.shape[0] > 0 for b in boxes]
            splits += 0 < int(has.sum()) < len(has)
    assert splits == 3



@pytest.mark.parametrize("bf16", [False, True])
def test_has_objects_runs_only_the_class_branch_with_the_full_heads_answer(bf16):
    """Whether a slice holds teeth needs only the class scores: the box branch does not run, and the answer is the
    full head's exactly, also at thresholds equal to an image's best score and under bf16 autocast."""
    torch.manual_seed(2)
    gen = PromptGenerator(PromptGeneratorConfig(scale="n", num_classes=1, image_size=128)).eval()
    gen.detector.fuse(verbose=False)  # as the slice predictor runs it
    feats = tuple(torch.randn(8, c, 128 // s, 128 // s) for c, s in zip(gen.feature_channels, (8, 16, 32)))
    box_calls = []
    for branch in gen.head.cv2:
        branch.register_forward_hook(lambda *_: box_calls.append(1))
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), context:
        best = gen._head_predictions(feats)[:, 4].amax(dim=1).float()
        box_calls.clear()
        for conf in best.tolist() + torch.quantile(best, torch.tensor([0.3, 0.7])).tolist():
            assert torch.equal(gen.has_objects(feats, conf=conf), best > conf)
    assert box_calls == []

def test_weight_file_round_trip_and_build(tmp_path, generator):
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    path = tmp_path / "student.safetensors"
    save_prompt_generator(path, generator.detector, generator.cfg, training={"epochs": 3, "teacher": "yolov8x"})
    state, cfg, meta = load_prompt_generator_weights(path)
    assert cfg == generator.cfg and meta["training"]["teacher"] == "yolov8x"
    own = generator.detector.state_dict()
    assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)

    mcfg = model_config("small")
    mcfg.prompt_generator = PromptGeneratorConfig(scale="n", num_classes=2, image_size=256, init_weights=str(path))
    model = build_model(mcfg)
    loaded = model.prompt_generator.detector.state_dict()
    assert all(torch.equal(loaded[k], own[k]) for k in own)

    mcfg.prompt_generator = PromptGeneratorConfig(scale="n", num_classes=1, image_size=256, init_weights=str(path))
    with pytest.raises(CheckpointError, match="yolov8n with 2 class") as e:
        build_model(mcfg)
    assert str(path) in str(e.value)


def test_model_file_is_not_a_prompt_generator(tmp_path):
    from ldfsam.checkpoint import save_state

    path = tmp_path / "model.safetensors"
    save_state(path, {"a": torch.zeros(1)}, {"format": "ldfsam-model", "version": 1})
    with pytest.raises(CheckpointError, match="not an LDFSAM prompt generator"):
        load_prompt_generator_weights(path)


def test_ultralytics_pt_import(tmp_path, generator):
    plain = tmp_path / "plain.pt"
    torch.save(generator.detector.state_dict(), plain)
    state, cfg = load_ultralytics_pt(plain)
    assert (cfg.scale, cfg.num_classes) == ("n", 2)
    assert all(torch.equal(state[k], v) for k, v in generator.detector.state_dict().items())

    # An ultralytics training checkpoint: a pickled model object of ultralytics' own classes, read weights-only
    # against ultralytics' allow-list, with no opt-in needed.
    pickled = tmp_path / "best.pt"
    torch.save({"model": generator.detector, "epoch": 3}, pickled)
    state, cfg = load_ultralytics_pt(pickled)
    assert (cfg.scale, cfg.num_classes) == ("n", 2)
    assert all(torch.equal(state[k], v) for k, v in generator.detector.state_dict().items())

    # A pickle of a class outside that list could run code: refused unless the user opts in.
    foreign = tmp_path / "foreign.pt"
    detector = copy.deepcopy(generator.detector)
    detector.__class__ = type("ForeignDetectionModel", (type(detector),), {"__module__": __name__})
    globals()["ForeignDetectionModel"] = detector.__class__
    torch.save({"model": detector}, foreign)
    with pytest.raises(CheckpointError, match="allow_pickle") as e:
        load_ultralytics_pt(foreign)
    assert str(foreign) in str(e.value)
    assert "--allow-pickle" not in str(e.value) and "allow_pickle=True" in str(e.value)
    state, cfg = load_ultralytics_pt(foreign, allow_pickle=True)
    assert (cfg.scale, cfg.num_classes) == ("n", 2)
    assert all(torch.equal(state[k], v) for k, v in generator.detector.state_dict().items())


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_damaged_ultralytics_pt_is_said_to_be_damaged(tmp_path, generator, keep):
    """A cut or empty file is damaged whatever allow_pickle says: no advice to unpickle it."""
    whole = tmp_path / "best.pt"
    torch.save({"model": generator.detector, "epoch": 3}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    for allow in (False, True):
        with pytest.raises(CheckpointError) as e:
            load_ultralytics_pt(cut, allow_pickle=allow)
        text = str(e.value)
        assert str(cut) in text and ("is damaged" in text or "empty file" in text), text
        assert "allow_pickle" not in text
