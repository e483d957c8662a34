"""A fine-tuning run chooses its prompt generator's box confidence on its validation images and saves it in the
model (FinetuneConfig.box_conf "auto"), instead of the fixed 0.25 at which a detector scoring low keeps no box."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_finetune_train import make_toy_dataset, tiny_model_config

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.run import finetune
from ldfsam.progress import Progress

LOW_SCORE = 0.04  # between two thresholds of the grid (0.03, 0.05): no tie at the boundary


def _low_scoring_generator(path, model_cfg):
    """A prompt generator file whose every candidate box scores exactly LOW_SCORE (class branch: zero weights,
    bias logit(LOW_SCORE)): below the default 0.25 it detects nothing."""
    from ldfsam.model.build import build_model
    from ldfsam.model.prompt_generator import save_prompt_generator

    torch.manual_seed(0)
    generator = build_model(model_cfg).prompt_generator
    with torch.no_grad():
        for branch in generator.head.cv3:
            branch[-1].weight.zero_()
            branch[-1].bias.fill_(math.log(LOW_SCORE / (1 - LOW_SCORE)))
    save_prompt_generator(path, generator, model_cfg.prompt_generator)
    return str(path)


def _run(tmp_path, mode: str, name: str, **cfg_fields):
    data = tmp_path / "toy"
    if not data.exists():
        make_toy_dataset(data)
    model_cfg = tiny_model_config(mode)
    model_cfg.prompt_generator.init_weights = _low_scoring_generator(tmp_path / f"{name}-pg.safetensors", model_cfg)
    cfg = FinetuneConfig(data=str(data), epochs=1, batch_size=4, lr=1e-3, val_fraction=0.25, num_workers=0,
                         **cfg_fields)
    finetune(cfg, model_cfg, tmp_path / name, progress=Progress("none"))
    return tmp_path / name


# Every mode makes the same choice (the empty-image check uses it); the feature-prompt run is the heavier one.
@pytest.mark.parametrize("mode", ["box", pytest.param("dense+sparse", marks=pytest.mark.slow)])
def test_the_run_chooses_the_confidence_on_its_validation_images_and_saves_it(tmp_path, mode):
    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.finetune.box_conf import choose_box_prompts
    from ldfsam.finetune.data import load_data

    run = _run(tmp_path, mode, "run", max_steps=1)
    loaded = load_checkpoint(run / "model.safetensors")
    cfg = loaded.model_cfg
    assert cfg.box_conf < 0.25 and cfg.box_conf <= LOW_SCORE  # the detector keeps boxes at the saved threshold
    # The choice is the one box_conf.py makes on the run's validation images with the run's prompt generator.
    saved = json.loads((run / "config.json").read_text())
    run_cfg = FinetuneConfig(**saved["finetune"])
    data = load_data(run_cfg, cfg.sam.image_size, cfg.prompt_generator.image_size, list(cfg.class_names))
    conf, k, scores = choose_box_prompts(loaded.model.prompt_generator, data.val, 32)
    assert (cfg.box_conf, cfg.max_boxes) == (conf, k)
    assert scores[conf, k] > 0.0 and scores[0.25, 32] == 0.0  # at 0.25 nothing was detected
    # Recorded in the run's configuration (read back on resume) and in the model file's training record.
    assert (saved["model"]["box_conf"], saved["model"]["max_boxes"]) == (conf, k)
    chosen = loaded.meta["training"]["box_conf"]
    assert (chosen["conf"], chosen["max_boxes"], chosen["images"]) == (conf, k, len(data.val))
    assert chosen["replaced"] == {"conf": 0.25, "max_boxes": 32, "box_cover_dice": 0.0}
    with torch.no_grad():
        yolo = torch.stack([data.val[i]["yolo_image"] for i in range(len(data.val))])
        assert all(len(d) > 0 for d in loaded.model.detect(yolo))


def test_model_and_oracle_runs_keep_the_model_config(tmp_path):
    from ldfsam.checkpoint import load_checkpoint

    kept = load_checkpoint(_run(tmp_path, "box", "kept", box_conf="model", max_steps=1) / "model.safetensors")
    assert (kept.model_cfg.box_conf, kept.model_cfg.max_boxes) == (0.25, 32)
    assert kept.meta["training"]["box_conf"] == "model"
    oracle_run = _run(tmp_path, "box", "oracle", box_prompts="ground_truth", max_steps=1)
    oracle = load_checkpoint(oracle_run / "model.safetensors")
    assert (oracle.model_cfg.box_conf, oracle.model_cfg.max_boxes) == (0.25, 32)


def test_a_resumed_run_keeps_its_choice(tmp_path, monkeypatch):
    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.finetune import box_conf
    from ldfsam.finetune.trainer import Trainer

    real_step = Trainer._train_step
    steps = []

    def interrupted_after_one_step(self, net, batch):
        if steps:
            raise KeyboardInterrupt
        steps.append(1)
        return real_step(self, net, batch)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_after_one_step)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "box", "run", checkpoint_every_steps=1)
    run = tmp_path / "run"
    first = json.loads((run / "config.json").read_text())["model"]["box_conf"]
    assert first < 0.25 and (run / "state.safetensors").is_file()

    def no_second_choice(*_a, **_k):
        raise AssertionError("a resumed run chose the box confidence again")

    monkeypatch.setattr(Trainer, "_train_step", real_step)
    monkeypatch.setattr(box_conf, "choose_for_run", no_second_choice)
    result = finetune(None, None, run, resume=True, progress=Progress("none"))
    assert result.global_step == 3  # 9 training images, batch 4: the epoch's three steps
    loaded = load_checkpoint(run / "model.safetensors")
    assert loaded.model_cfg.box_conf == first and loaded.meta["training"]["box_conf"]["conf"] == first
