"""The ``auto`` prompt mode (ldfsam/model/auto_prompt.py): per image the box branch where the detector keeps exactly
one sure box, else the feature prompts; joining two trained models into one file; the threshold's choice."""

from __future__ import annotations

import copy

import pytest
import torch
from _infer_helpers import tiny_model_config

from ldfsam.errors import CheckpointError, ConfigError
from ldfsam.model.auto_assemble import assemble
from ldfsam.model.auto_prompt import box_chosen, choose_box_score


def _models(seed: int = 0):
    """A dense+sparse and a box model sharing encoder and prompt generator, with different decoders."""
    from ldfsam.model.build import build_model
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    models = {}
    for mode in ("dense+sparse", "box"):
        cfg = tiny_model_config()
        cfg.prompt_mode = mode
        if mode == "box":
            cfg.box_conf, cfg.max_boxes = 0.25, 2
        torch.manual_seed(seed)
        models[mode] = build_model(cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in models["box"].mask_decoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        models["box"].prompt_encoder.no_mask_embed.weight.add_(0.5)
    return models["dense+sparse"], models["box"]


def _save(path, model):
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig

    save_checkpoint(path, model, model.cfg, PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(dense+sparse model, box model, their files), made once for the module."""
    folder = tmp_path_factory.mktemp("auto")
    ds, box = _models()
    return ds, box, _save(folder / "ds.safetensors", ds), _save(folder / "box.safetensors", box)


def _det(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


# Image 0: one sure box (0.9) and a weak one (0.3): the box branch, prompted with both (both >= box_conf 0.25).
# Image 1: two sure boxes: feature prompts. Image 2: no sure box (0.35 < 0.4): feature prompts.
DETECTIONS = [_det([20, 30, 120, 140, 0.9, 0], [150, 150, 220, 230, 0.3, 0]),
              _det([20, 30, 120, 140, 0.8, 0], [150, 150, 220, 230, 0.5, 0]),
              _det([40, 40, 100, 100, 0.35, 0])]


def test_box_chosen_needs_exactly_one_sure_box():
    assert box_chosen(DETECTIONS, 0.4).tolist() == [True, False, False]
    assert box_chosen(DETECTIONS, 0.3).tolist() == [False, False, True]
    assert box_chosen([_det()], 0.1).tolist() == [False]


def test_auto_model_uses_the_box_branch_exactly_where_one_box_is_sure(tmp_path, monkeypatch, pair):
    from ldfsam.checkpoint import load_checkpoint

    ds, box, ds_path, box_path = pair
    out = assemble(ds_path, box_path, tmp_path / "auto.safetensors", box_score=0.4)
    auto = load_checkpoint(out).model
    assert auto.cfg.prompt_mode == "auto" and auto.cfg.auto_box_score == 0.4
    assert (auto.cfg.box_conf, auto.cfg.max_boxes) == (0.25, 2)  # the box model's
    asked = []

    def fake_detect(features, conf=0.25, iou=0.7, max_det=300):
        asked.append((conf, max_det))
        return [d.clone() for d in DETECTIONS]

    monkeypatch.setattr(auto.prompt_generator, "detect_from_features", fake_detect)
    g = torch.Generator().manual_seed(3)
    sam, yolo = torch.rand(3, 3, 256, 256, generator=g), torch.rand(3, 3, 256, 256, generator=g)
    with torch.no_grad():
        got = auto(sam, yolo)
        want_features = ds(sam, yolo)
        emb, feats = box.encode_image(sam), box.prompt_features(yolo)
        want_box = box.decode(emb, feats, [d[:, :6] for d in DETECTIONS])
    assert asked == [(0.25, 2)]
    torch.testing.assert_close(got[0], want_box[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1:], want_features[1:], rtol=1e-4, atol=1e-4)
    assert (got[0] - want_features[0]).abs().max() > 1e-2  # the branches differ, so the test can tell them apart


def test_assemble_refuses_models_that_do_not_belong_together(tmp_path, pair):
    ds, box, ds_path, box_path = pair
    with pytest.raises(CheckpointError, match="the box branch of an auto model is a 'box' one"):
        assemble(ds_path, ds_path, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="the feature branch of an auto model is a 'dense\\+sparse' one"):
        assemble(box_path, box_path, tmp_path / "a.safetensors")
    other = copy.deepcopy(box)
    with torch.no_grad():
        next(other.prompt_generator.parameters()).add_(1e-3)
    with pytest.raises(CheckpointError, match="has another prompt generator than ds.safetensors"):
        assemble(ds_path, _save(tmp_path / "other.safetensors", other), tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


def test_phase2_refuses_an_auto_model():
    from ldfsam.finetune.run import _build

    cfg = tiny_model_config()
    cfg.prompt_mode = "auto"
    with pytest.raises(ConfigError, match="not trained itself"):
        _build(cfg, None, 0, load_init=False)


def test_choose_box_score_takes_the_best_threshold_and_the_middle_of_ties():
    scores = [[0.9], [0.9, 0.45], [0.35], [0.6, 0.2]]
    box = [0.95, 0.5, 0.9, 0.95]
    feat = [0.90, 0.8, 0.7, 0.90]
    t, means = choose_box_score(scores, box, feat, grid=(0.1, 0.3, 0.4, 0.5))
    # By box: at 0.1 images 0 and 2; at 0.3 images 0, 2, 3; at 0.4 images 0, 3; at 0.5 images 0, 1, 3.
    assert means[0.1] == pytest.approx((0.95 + 0.8 + 0.9 + 0.90) / 4)
    assert means[0.3] == pytest.approx((0.95 + 0.8 + 0.9 + 0.95) / 4)
    assert means[0.4] == pytest.approx((0.95 + 0.8 + 0.7 + 0.95) / 4)
    assert t == 0.3
    t, _ = choose_box_score([[0.9]], [0.9], [0.8], grid=(0.1, 0.2, 0.3, 0.4))
    assert t == 0.2  # all tie: the lower middle
    with pytest.raises(ValueError):
        choose_box_score([], [], [])


def test_models_combine_command_writes_the_auto_model_and_keeps_an_existing_file(tmp_path, pair, capsys):
    from ldfsam.checkpoint import read_checkpoint_configs
    from ldfsam.cli import main

    _, _, ds_path, box_path = pair
    out = tmp_path / "auto.safetensors"
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out), "--box-score", "0.3"]) == 0
    cfg, _, meta = read_checkpoint_configs(out)
    assert (cfg.prompt_mode, cfg.auto_box_score) == ("auto", 0.3)
    assert meta["training"]["assembled_from"]["box_model"] == str(box_path)
    assert main(["info", str(out), "--json"]) == 0  # the box branch is a part of its own
    assert '"box_branch"' in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert out.read_bytes() == before


def _with_record(path, model, data, max_val_items: int = 4):
    """``model`` saved with a fine-tuning record naming ``data`` and its checkpoint-selection images."""
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.config import to_dict
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.finetune.config import FinetuneConfig

    cfg = FinetuneConfig(data=str(data), val_fraction=0.5, max_val_items=max_val_items, split_seed=3)
    save_checkpoint(path, model, model.cfg, PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256,
                                                             class_names=list(model.cfg.class_names)),
                    training={"phase": "finetune", "config": to_dict(cfg)})
    return path


def test_combine_chooses_the_box_score_on_the_runs_checkpoint_selection_images(tmp_path, pair, capsys):
    from _finetune_helpers import toy_disc_dataset

    from ldfsam.checkpoint import load_checkpoint, read_checkpoint_configs
    from ldfsam.cli import main
    from ldfsam.finetune.auto_score import choose_for_models, selection_data
    from ldfsam.finetune.loss import hard_dice

    ds, box, _, box_path = pair
    data = toy_disc_dataset(tmp_path / "discs", 6, seed=1)
    ds_path = _with_record(tmp_path / "ds.safetensors", ds, data, max_val_items=2)
    chosen = choose_for_models(ds_path, box_path)
    assert chosen["images"] == 2  # the run's max_val_items of its 3 validation images
    means = chosen["means"]
    assert chosen["box_score"] in means and means[chosen["box_score"]] == max(means.values())
    # A threshold's figure is what the auto model joined at it scores on those images (0.5 >= the box model's
    # confidence 0.25, so its box branch keeps the box model's boxes).
    joined = load_checkpoint(assemble(ds_path, box_path, tmp_path / "at05.safetensors", box_score=0.5))
    items = selection_data(load_checkpoint(ds_path), ds_path)
    with torch.no_grad():
        dice = [float(hard_dice(joined.model(it["sam_image"][None], it["yolo_image"][None]), it["mask"][None])[0])
                for it in (items[i] for i in range(len(items)))]
    assert abs(sum(dice) / len(dice) - means[0.5]) < 1e-6
    # The dataset moved: without --data the recorded folder is reported missing, --data names its new place.
    moved = data.rename(tmp_path / "moved")
    out = tmp_path / "auto.safetensors"
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out)]) != 0  # --box-score auto
    assert "no such dataset folder" in capsys.readouterr().err and not out.exists()
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out), "--data", str(moved)]) == 0
    assert f"box score {chosen['box_score']} chosen on 2 checkpoint-selection images" in capsys.readouterr().out
    assert read_checkpoint_configs(out)[0].auto_box_score == chosen["box_score"]


def test_combine_auto_needs_a_training_record(tmp_path, pair, capsys):
    from ldfsam.cli import main

    _, _, ds_path, box_path = pair  # saved without a fine-tuning record
    out = tmp_path / "auto.safetensors"
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "no fine-tuning record" in err and "--box-score a number" in err and str(ds_path) in err
    assert not out.exists()
    assert main(["models", "combine", str(ds_path), str(box_path), "-o", str(out), "--box-score", "high"]) != 0
    assert "--box-score must be auto or a number" in capsys.readouterr().err and not out.exists()
