"""The ``none`` prompt mode: the decoder fine-tuned with no prompt at all (the ablation that separates the prompts'
gain from the fine-tuning's). It has no feature prompt encoder, never runs the YOLO, trains, and its model file
loads back as the same network."""

from __future__ import annotations

import csv

import numpy as np
import torch
from test_finetune_train import make_toy_dataset, tiny_model_config

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.run import finetune
from ldfsam.progress import Progress


def test_none_mode_has_no_prompt_path():
    from ldfsam.model.build import build_model
    from ldfsam.model.trainable import configure_phase2

    model = build_model(tiny_model_config("none"))
    names = configure_phase2(model)
    assert model.feature_prompts is None
    assert not any(n.startswith(("feature_prompts.", "prompt_generator.", "prompt_encoder.box_corner"))
                   for n in names)
    assert any(n.startswith("mask_decoder.") for n in names) and "prompt_encoder.no_mask_embed.weight" in names
    sam, yolo = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert model.prompt_features(yolo) is None

    def no_yolo(*_a, **_k):
        raise AssertionError("the none mode ran the prompt generator")

    model.prompt_generator.features = no_yolo
    model.eval()
    with torch.no_grad():
        out = model(sam, yolo)
        # The YOLO image does not matter: no prompt reaches the decoder.
        assert torch.equal(out, model(sam, torch.zeros_like(yolo)))
        assert torch.equal(out, model.decode(model.encode_image(sam), None))
    assert out.shape == (2, 1, 64, 64)


def test_none_mode_trains_and_reloads(tmp_path):
    from ldfsam.checkpoint import load_checkpoint

    data = make_toy_dataset(tmp_path / "toy")
    cfg = FinetuneConfig(data=str(data), epochs=2, batch_size=4, lr=1e-3, val_fraction=0.25, num_workers=0)
    run = tmp_path / "run"
    result = finetune(cfg, tiny_model_config("none"), run, progress=Progress("none"))
    assert result.global_step == 2 * 3
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    loaded = load_checkpoint(run / "model.safetensors")
    assert loaded.model_cfg.prompt_mode == "none" and loaded.model.feature_prompts is None
    assert not any(k.startswith("feature_prompts.") for k in loaded.model.state_dict())
