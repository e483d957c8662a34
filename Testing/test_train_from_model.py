"""`ldfsam train --from MODEL`: starting weights, the short schedule, phantoms mixed into training only, model
versions installed with their lineage (never overwriting), and (slow) the whole loop through the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ldfsam.errors import OutputError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LDFSAM_MODEL_REGISTRY", raising=False)
    return tmp_path / "home"


def _small(seed: int, size: int = 64):
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    cfg = model_config("small", prompt_mode="dense+sparse")
    cfg.sam.image_size, cfg.prompt_generator.image_size = size, size
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def test_starting_model_weights_are_copied_except_the_prompt_generator(tmp_path):
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.finetune.from_model import load_starting_model

    parent, cfg = _small(1)
    with torch.no_grad():  # weights no fresh model has, also where SAM starts at zero (the dense α)
        for p in parent.parameters():
            p.add_(0.5)
    save_checkpoint(tmp_path / "parent.safetensors", parent, cfg, PreprocessConfig(sam_size=64, yolo_size=64))
    child, _ = _small(2)
    before = {k: v.clone() for k, v in child.state_dict().items()}
    copied = load_starting_model(child, tmp_path / "parent.safetensors")
    after, source = child.state_dict(), parent.state_dict()
    assert copied and not any(k.startswith("prompt_generator.") for k in copied)
    assert any(".adapter." in k for k in copied) and any(k.startswith("mask_decoder.") for k in copied)
    assert all(torch.equal(after[k], source[k]) for k in copied)
    pg = [k for k in after if k.startswith("prompt_generator.")]
    assert pg and all(torch.equal(after[k], before[k]) for k in pg)

    other, _ = _small(3, size=128)
    from ldfsam.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit"):
        load_starting_model(other, tmp_path / "parent.safetensors")


def test_configure_sets_the_short_schedule_from_the_model():
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.from_model import SHORT_PHASE2_EPOCHS, configure

    cfg = configure(TrainConfig(data="x"), "ldfsam-demo", {"phase2_epochs": 3})
    assert cfg.init_model.endswith(".safetensors") and cfg.init_model_name == "ldfsam-demo"
    assert cfg.keep_prompt_generator  # Phase 1 trains on only when asked to
    assert cfg.finetune.epochs == 3 != SHORT_PHASE2_EPOCHS
    cfg = configure(TrainConfig(data="x"), "ldfsam-demo", {"phase1_epochs": 2})
    assert not cfg.keep_prompt_generator and cfg.finetune.epochs == SHORT_PHASE2_EPOCHS
    assert cfg.distill.ld.scheme == "none" and cfg.distill.student_scale == "n"
    assert cfg.distill.student.imgsz == 256 and cfg.distill.student.epochs == 2
    assert cfg.distill.student.lr0 == 1e-3 and cfg.distill.student.mosaic == 0
    assert cfg.prepare.spacing is None  # the demo model works at the input's spacing
    cfg.validate()


def test_a_learning_rate_given_in_the_config_file_is_kept_even_at_the_default_value(tmp_path):
    """--config's finetune.lr (and epochs) win over the short schedule's, also when the value equals
    FinetuneConfig's own default (once taken as unset and replaced); options win over the file."""
    import argparse

    from ldfsam.cli.train import add_arguments, build_config
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.train.from_model import SHORT_LR

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = [str(tmp_path), "-o", str(tmp_path / "run"), "--from", "ldfsam-demo"]
    assert SHORT_LR != FinetuneConfig.lr
    for lr in (FinetuneConfig.lr, 3e-5):
        (tmp_path / "c.json").write_text(json.dumps({"finetune": {"lr": lr}}))
        assert build_config(parser.parse_args(base + ["--config", str(tmp_path / "c.json")])).finetune.lr == lr
    (tmp_path / "c.json").write_text(json.dumps({"finetune": {"epochs": 2}}))
    cfg = build_config(parser.parse_args(base + ["--config", str(tmp_path / "c.json")]))
    assert cfg.finetune.lr == SHORT_LR and cfg.finetune.epochs == 2
    cfg = build_config(parser.parse_args(base + ["--config", str(tmp_path / "c.json"), "--phase2-epochs", "3"]))
    assert cfg.finetune.epochs == 3
    assert build_config(parser.parse_args(base)).finetune.lr == SHORT_LR


def test_a_warning_when_the_counted_pixels_are_almost_all_tooth(tmp_path):
    """A review of the teeth alone (each structure and its one-pixel shell) counts about half tooth: the run warns
    that nothing teaches background; whole reviewed slices (mostly background) do not warn."""
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import make_phantom
    from ldfsam.data.prepared import PrepareOptions, prepare_dataset
    from ldfsam.data.training_case import add_training_case
    from ldfsam.progress import Progress
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.from_model import MOSTLY_TOOTH, phantoms_to_training, warn_if_no_background

    img, lab = make_phantom((16, 64, 64), 0.5, seed=0, teeth_fraction=0.75)
    sitk.WriteImage(img, str(tmp_path / "scan.nrrd"))
    sitk.WriteImage(lab, str(tmp_path / "seg.nrrd"))
    teeth = [int(v) for v in np.unique(sitk.GetArrayFromImage(lab)) if v]
    shares = {}
    for review, kwargs in (("teeth", {"reviewed_structures": teeth}), ("slices", {"reviewed_slices": range(4, 12)})):
        add_training_case(tmp_path / "scan.nrrd", tmp_path / "seg.nrrd", tmp_path / review, "c", **kwargs)
        prepared = tmp_path / f"prepared_{review}"
        prepare_dataset(tmp_path / review, prepared, PreprocessConfig(target_spacing=None, yolo_size=64, sam_size=64),
                        PrepareOptions(yolo=False, test_fraction=0.0, val_fraction=0.0))
        cfg = TrainConfig(data=str(tmp_path / review))
        cfg.prepare.test_fraction = cfg.prepare.val_fraction = 0.0
        phantoms_to_training(prepared, cfg)
        stream = io.StringIO()
        shares[review] = warn_if_no_background(prepared, cfg, Progress("json", stream=stream))
        warned = [e for e in map(json.loads, stream.getvalue().splitlines()) if e.get("level") == "warning"]
        assert bool(warned) == (review == "teeth"), (review, shares[review])
        if warned:
            assert "Review whole slices" in warned[0]["message"] and warned[0]["tooth_share"] > MOSTLY_TOOTH
    assert shares["teeth"] > MOSTLY_TOOTH > shares["slices"] > 0


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_a_fine_tune_from_a_model_moves_its_weights_from_the_parents(tmp_path):
    """Phase 2 from a model file, a few steps: the decoder and prompt heads move (a fine-tune that leaves the
    weights where they were fails here), yet stay close to the parent's (it started from them, not from SAM's
    own weights)."""
    from ldfsam.checkpoint import load_state, save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import write_phantom_dataset
    from ldfsam.data.prepared import PrepareOptions, prepare_dataset
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.run import finetune
    from ldfsam.progress import Progress

    parent, cfg = _small(1)
    with torch.no_grad():  # a parent unlike any fresh model, the dense α included
        g = torch.Generator().manual_seed(0)
        for p in parent.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    pre = PreprocessConfig(target_spacing=None, sam_size=64, yolo_size=64)
    save_checkpoint(tmp_path / "parent.safetensors", parent, cfg, pre)
    write_phantom_dataset(tmp_path / "src", cases=2, shape=(10, 40, 40), spacing=0.5)
    prepare_dataset(tmp_path / "src", tmp_path / "prepared", pre, PrepareOptions(yolo=False, test_count=0,
                                                                                val_fraction=0.0))
    ft = FinetuneConfig(data=str(tmp_path / "prepared"), epochs=1, batch_size=4, max_steps=3, lr=2e-4,
                        num_workers=0, precision="fp32", embedding_cache="off")
    finetune(ft, cfg, tmp_path / "run", device="cpu", progress=Progress("none"),
             init_model=str(tmp_path / "parent.safetensors"))
    new, _ = load_state(tmp_path / "run" / "state.safetensors")
    old = parent.state_dict()
    trained = {k[len("model."):]: v for k, v in new.items()
               if k.startswith(("model.mask_decoder.", "model.feature_prompts."))}
    assert len(trained) > 10
    moved = [k for k, v in trained.items() if not torch.equal(v, old[k])]
    assert len(moved) > len(trained) // 2
    for k in moved:
        if old[k].numel() > 100:
            assert float((trained[k] - old[k]).norm() / old[k].norm()) < 0.1, k


def test_mixed_in_phantoms_go_to_training_only(tmp_path):
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import write_phantom_dataset
    from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.from_model import MIX_PREFIX, phantoms_to_training

    src = tmp_path / "src"
    write_phantom_dataset(src, cases=5, shape=(10, 40, 40), spacing=0.5)
    for k in range(3):  # as build_sources names them
        for suffix in (".nii.gz", "_label.nii.gz"):
            os.symlink(src / f"phantom_00{k}{suffix}", src / f"{MIX_PREFIX}{k:03d}{suffix}")
    out = tmp_path / "prepared"
    prepare_dataset(src, out, PreprocessConfig(target_spacing=None, yolo_size=64, sam_size=64),
                    PrepareOptions(yolo=False))
    cfg = TrainConfig(data=str(src))
    cfg.prepare.test_fraction, cfg.prepare.val_fraction = 0.2, 0.25
    phantoms_to_training(out, cfg)
    prepared = PreparedData(out)
    s = prepared.splits
    mixed = {f"{MIX_PREFIX}{k:03d}" for k in range(3)}
    assert mixed <= set(s.train) and not mixed & set(s.val + s.test)
    assert len(s.test) == 1 and len(s.val) == 1 and len(s.train) == 3 + 3
    assert prepared.summary["mixed_phantoms"] == 3
    yolo = prepared.yolo_data_yaml().parent  # exported on the new splits
    assert list((yolo / "images" / "train").glob(f"{MIX_PREFIX}000_*.png"))


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory) -> Path:
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig

    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    model, cfg = _small(5)
    save_checkpoint(path, model, cfg, PreprocessConfig(sam_size=64, yolo_size=64))
    return path


def _fake_run(root: Path, name: str, parent: str, parent_name: str, model_file: Path) -> Path:
    """A finished `--from` run folder as far as installing needs: config, splits, model, evaluations."""
    import shutil

    from ldfsam.data.splits import Splits, write_splits
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.run import RunFolder

    folder = RunFolder(root / name)
    folder.root.mkdir(parents=True)
    folder.write_config(TrainConfig(data=str(root), init_model=parent, init_model_name=parent_name))
    write_splits(Splits(train=["a", "b", "mix_phantom_000"], val=["c"], test=["d"], seed=1, val_fraction=0.1),
                 folder.splits)
    folder.phase2.mkdir()
    shutil.copyfile(model_file, folder.model)
    folder.evaluation.mkdir()
    for sub, dice in (("", 0.8), ("starting_model", 0.6)):
        (folder.evaluation / sub).mkdir(exist_ok=True)
        (folder.evaluation / sub / "summary.json").write_text(json.dumps(
            {"cases": 1, "metrics": {"tooth": {"dice": {"mean": dice, "ci_low": dice - 0.1, "ci_high": dice}}}}))
    return folder.root


def test_model_versions_are_installed_with_lineage_and_never_overwritten(home, tmp_path, small_model_file):
    from ldfsam.models import resolve_model
    from ldfsam.models.lineage import chain, install_version, lineage_of

    demo = str(resolve_model("ldfsam-demo"))
    run1 = _fake_run(tmp_path, "run1", demo, "ldfsam-demo", small_model_file)
    v1 = install_version(run1, "clinic-v1")
    assert v1 == home / "models" / "clinic-v1.safetensors"
    lin = lineage_of(v1)
    assert lin["parent"]["name"] == "ldfsam-demo" and len(lin["parent"]["sha256"]) == 64
    assert lin["cases"] == {"train": ["a", "b"], "val": ["c"], "test": ["d"], "mixed_phantoms": ["mix_phantom_000"]}
    assert lin["validation"]["new"]["tooth"]["dice"] == 0.8 and lin["validation"]["parent"]["tooth"]["dice"] == 0.6
    assert install_version(run1, "clinic-v1") == v1  # the same run again (a resumed run): nothing changes
    data = v1.read_bytes()
    run2 = _fake_run(tmp_path, "run2", str(v1), "clinic-v1", small_model_file)
    with pytest.raises(OutputError, match="never overwritten"):
        install_version(run2, "clinic-v1")
    with pytest.raises(OutputError, match="registry"):
        install_version(run2, "ldfsam-demo")
    assert v1.read_bytes() == data
    v2 = install_version(run2, "clinic-v2")
    assert chain(lineage_of(v2)) == ["clinic-v2", "clinic-v1", "ldfsam-demo"]
    # The model loads and `ldfsam models list` shows the versions with their lineage.
    from ldfsam.checkpoint import load_checkpoint

    assert load_checkpoint(v2).meta["lineage"]["name"] == "clinic-v2"
    env = dict(os.environ, LDFSAM_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "ldfsam", "models", "list"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "clinic-v2 <- clinic-v1 <- ldfsam-demo" in out.stdout
    assert "improved from clinic-v1 on 2 case(s) + 1 phantoms; test Dice 0.800 (was 0.600)" in out.stdout
    listed = json.loads(subprocess.run([sys.executable, "-m", "ldfsam", "models", "list", "--json"],
                                       capture_output=True, text=True, env=env, timeout=60).stdout)
    assert {m["name"]: (m["lineage"] or {}).get("parent", {}).get("name") for m in listed}["clinic-v2"] == "clinic-v1"


def test_train_refuses_a_taken_name_and_phantoms_without_from(home, tmp_path):
    env = dict(os.environ, LDFSAM_HOME=str(home))
    (tmp_path / "data").mkdir()
    run = [sys.executable, "-m", "ldfsam", "train", str(tmp_path / "data"), "-o", str(tmp_path / "run")]
    out = subprocess.run(run + ["--mix-phantoms", "2"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "--mix-phantoms needs --from" in out.stderr
    out = subprocess.run(run + ["--from", "ldfsam-demo", "--name", "ldfsam-demo"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode != 0 and "registry" in out.stderr and not (tmp_path / "run").exists()


def _shifted_case(folder: Path, seed: int):
    from ldfsam.data.phantom import make_phantom

    img, lab = make_phantom((32, 128, 128), 0.4, seed=seed, teeth_fraction=0.6)
    sitk.WriteImage(img, str(folder / f"s{seed}.nrrd"))
    sitk.WriteImage(lab, str(folder / f"s{seed}_seg.nrrd"))
    return folder / f"s{seed}.nrrd", folder / f"s{seed}_seg.nrrd"


@pytest.mark.slow
def test_improve_the_demo_model_end_to_end(home, tmp_path):
    """add-case (partly reviewed) -> train --from ldfsam-demo --mix-phantoms --name -> an installed version whose
    weights moved from its parent's, with a report comparing both on the held-out case."""
    from ldfsam.checkpoint import load_state
    from ldfsam.models import resolve_model

    env = dict(os.environ, LDFSAM_HOME=str(home))
    src = tmp_path / "src"
    src.mkdir()
    cases = ((60, ["--reviewed-slices", "8-24"]), (61, ["--all-reviewed"]), (62, ["--all-reviewed"]),
             (63, ["--all-reviewed"]))
    for seed, review in cases:
        vol, seg = _shifted_case(src, seed)
        done = subprocess.run([sys.executable, "-m", "ldfsam", "add-case", str(vol), str(seg), "--to",
                               str(tmp_path / "cases")] + review, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ldfsam", "train", str(tmp_path / "cases"), "-o", str(run), "--from", "ldfsam-demo",
           "--mix-phantoms", "1", "--name", "clinic-v1", "--phase2-epochs", "1",
           "--device", "cpu", "--workers", "0", "--progress", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = home / "models" / "clinic-v1.safetensors"
    assert installed.is_file()
    new, doc = load_state(installed)
    old, _ = load_state(resolve_model("ldfsam-demo"))
    moved = [k for k in old if k.startswith("mask_decoder.") and not torch.equal(old[k].float(), new[k].float())]
    assert len(moved) > 10  # Phase 2 trained on from the demo's decoder
    pg = [k for k in old if k.startswith("prompt_generator.") and old[k].is_floating_point()]
    assert pg and all(torch.equal(old[k].float(), new[k].float()) for k in pg)  # kept: no --phase1-epochs
    # Started from the parent, not from scratch: the decoder is still close to the parent's.
    k = "mask_decoder.output_upscaling.0.weight"
    assert float((new[k].float() - old[k].float()).norm() / old[k].float().norm()) < 0.2
    lin = doc["lineage"]
    assert lin["parent"]["name"] == "ldfsam-demo" and lin["cases"]["mixed_phantoms"] == ["mix_phantom_000"]
    assert len(lin["cases"]["test"]) == 1 and lin["validation"]["parent"] is not None
    assert lin["validation"]["new"]["tooth"]["dice"] > 0.5  # improved, not collapsed (see docs/training.md)
    report = (run / "report.html").read_text()
    assert "Starting model (ldfsam-demo) and the new model" in report
    splits = json.loads((run / "splits.json").read_text())
    assert "mix_phantom_000" in splits["train"] and "s60" in splits["train"]  # partly reviewed: never held out
    data = installed.read_bytes()
    again = subprocess.run(cmd[:7] + ["--resume", "--progress", "none"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert installed.read_bytes() == data  # a finished run resumed: the version is installed once
