"""Phase 2 fine-tuning end to end on tiny data: the loss falls, only the Phase 2 parameters move, the run folder
and the model file are complete, and a prepared CBCT phantom dataset trains too."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.run import finetune
from ldfsam.progress import Progress


def make_toy_dataset(root: Path, n: int = 12, seed: int = 0) -> Path:
    """Bright discs on noise (images/ + masks/ PNGs, Kvasir layout), deterministic."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :56]
    for i in range(n):
        cy, cx, r = rng.integers(16, 32), rng.integers(16, 40), rng.integers(7, 14)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = (rng.normal(60, 20, (48, 56, 3)) + m[..., None] * np.array([130, 70, 30])).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"c{i:02d}.png")
    return root


def tiny_model_config(mode: str = "dense+sparse"):
    from ldfsam.model.presets import model_config

    cfg = model_config("small", prompt_mode=mode)
    cfg.sam.image_size, cfg.prompt_generator.image_size = 64, 64
    return cfg


def test_finetune_lowers_loss_and_trains_only_phase2(tmp_path):
    from ldfsam.checkpoint import load_checkpoint, load_state
    from ldfsam.model.build import build_model

    data = make_toy_dataset(tmp_path / "toy")
    cfg = FinetuneConfig(data=str(data), epochs=5, batch_size=4, lr=1e-3, val_fraction=0.25, num_workers=0)
    model_cfg = tiny_model_config()
    run = tmp_path / "run"
    events = []

    class Capture:
        def write(self, text):
            events.extend(json.loads(line) for line in text.splitlines() if line.strip())

        def flush(self):
            pass

    result = finetune(cfg, model_cfg, run, progress=Progress("json", stream=Capture()))
    assert result.global_step == 5 * 3 and result.epochs_done == 5
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 5 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    assert {r["skipped_steps"] for r in rows} == {"0"}  # bf16 (on bf16 CPUs) kept the loss finite
    # Events: start, one progress per step with loss and ETA, epoch summaries with val_dice, done.
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and all(e["phase"] == "finetune" for e in events)
    steps = [e for e in events if e["kind"] == "progress" and "total" in e]
    assert [e["step"] for e in steps] == list(range(1, 16)) and all("eta_s" in e and "loss" in e for e in steps)
    assert sum(1 for e in events if e["kind"] == "progress" and "val_dice" in e) == 5

    for name in ("config.json", "splits.json", "log.csv", "state.safetensors", "model.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    splits = json.loads((run / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"])) == (9, 3)
    loaded = load_checkpoint(run / "model.safetensors")
    training = loaded.meta["training"]
    for key in ("dataset", "splits_sha256", "budget", "epochs", "seed", "prompt_generator", "package_version"):
        assert key in training, key
    assert training["selected"] == "best_val_dice"
    assert training["val_dice"] == pytest.approx(max(float(r["val_dice"]) for r in rows))
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)

    # Frozen parts (YOLO, including its BatchNorm statistics, and the encoder's original weights) did not move;
    # the Phase 2 parts did.
    torch.manual_seed(cfg.seed)
    initial = build_model(tiny_model_config()).state_dict()
    tensors, _ = load_state(run / "state.safetensors")
    final = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    frozen = [k for k in initial if k.startswith("prompt_generator.") or
              (k.startswith("image_encoder.") and ".adapter." not in k)]
    assert frozen and all(torch.equal(initial[k], final[k]) for k in frozen)
    moved = [k for k in initial if k.startswith(("mask_decoder.", "feature_prompts.")) or ".adapter." in k]
    assert sum(not torch.equal(initial[k], final[k]) for k in moved) > 0.9 * len(moved)

    # The run folder is never overwritten by a new run.
    from ldfsam.errors import InputError

    with pytest.raises(InputError, match="holds a fine-tuning run already"):
        finetune(cfg, tiny_model_config(), run, progress=Progress("none"))


def test_finetune_on_a_prepared_cbct_phantom(tmp_path):

    from ldfsam.checkpoint import read_checkpoint_meta
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import write_phantom_dataset
    from ldfsam.data.prepared import PrepareOptions, prepare_dataset

    src = tmp_path / "cbct"
    src.mkdir()
    write_phantom_dataset(src, cases=3, shape=(10, 40, 40), spacing=0.5)
    prepared = tmp_path / "prepared"
    prepare_dataset(src, prepared, PreprocessConfig(target_spacing=None),
                    PrepareOptions(test_count=0, val_fraction=0.34, yolo=False))
    cfg = FinetuneConfig(data=str(prepared), epochs=2, batch_size=4, max_steps=3, num_workers=0)
    result = finetune(cfg, tiny_model_config(), tmp_path / "run", progress=Progress("none"))
    assert result.global_step == 3
    meta = read_checkpoint_meta(tmp_path / "run" / "model.safetensors")
    assert meta["training"]["dataset_format"] == "slices"
    assert meta["training"]["split_counts"] == {"train": 2, "val": 1, "test": 0}
    assert meta["preprocess"]["sam_size"] == 64 and meta["preprocess"]["target_spacing"] is None
    state = json.loads((tmp_path / "run" / "config.json").read_text())
    assert state["finetune"]["max_steps"] == 3


def test_bad_configuration_is_a_clear_error(tmp_path):
    from ldfsam.errors import ConfigError, InputError

    with pytest.raises(InputError, match="no such dataset folder"):
        finetune(FinetuneConfig(data=str(tmp_path / "nope")), tiny_model_config(), tmp_path / "r1")
    with pytest.raises(ConfigError, match="budget"):
        finetune(FinetuneConfig(data=str(tmp_path), budget=0.0), tiny_model_config(), tmp_path / "r2")
    with pytest.raises(InputError, match="no config.json"):
        finetune(None, None, tmp_path / "r3", resume=True)


def test_early_stop_after_validations_without_improvement(tmp_path):
    data = make_toy_dataset(tmp_path / "toy", n=8)
    # A learning rate too small to change the thresholded predictions: validation Dice never improves.
    cfg = FinetuneConfig(data=str(data), epochs=6, batch_size=4, lr=1e-12, val_fraction=0.25, num_workers=0,
                         early_stop_patience=2)
    result = finetune(cfg, tiny_model_config(), tmp_path / "run", progress=Progress("none"))
    assert result.stopped_early and result.epochs_done == 3 and result.global_step == 3 * 2
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 3 and len({r["val_dice"] for r in rows}) == 1
