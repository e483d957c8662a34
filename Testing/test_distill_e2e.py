"""Phase 1 end to end through `ldfsam distill`, in real subprocesses with the network guard recording attempts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]


def _phantom_yolo(root: Path) -> Path:
    """A tiny YOLO data set: axial slices of two procedural CBCT phantoms (train / val), one box per tooth."""
    import SimpleITK as sitk
    from PIL import Image

    from ldfsam.data.phantom import make_phantom

    for split, seed, count in (("train", 0, 8), ("val", 1, 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        image, labels = make_phantom(shape=(12, 96, 96), seed=seed, teeth_fraction=0.8)
        grey = sitk.GetArrayFromImage(image).astype(np.float32)
        lab = sitk.GetArrayFromImage(labels)
        lo, hi = np.percentile(grey, [0.5, 99.5])
        slices = [z for z in range(lab.shape[0]) if lab[z].any()][:count]
        for z in slices:
            pixels = (np.clip((grey[z] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{seed}_{z}.png")
            rows = []
            for tooth in np.unique(lab[z])[1:]:
                ys, xs = np.nonzero(lab[z] == tooth)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                rows.append(f"0 {(x0 + x1) / 192:.6f} {(y0 + y1) / 192:.6f} {(x1 - x0) / 96:.6f} {(y1 - y0) / 96:.6f}")
            (root / "labels" / split / f"{seed}_{z}.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: tooth\n")
    return root / "data.yaml"


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return _phantom_yolo(tmp_path_factory.mktemp("phantom_yolo"))


def _env(netlog: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", LDFSAM_TEST_NETLOG=str(netlog))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _distill(args, netlog: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ldfsam", "distill", *map(str, args), "--progress", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(netlog), timeout=timeout, cwd=REPO)


TINY = ["--imgsz", "64", "--batch", "4", "--teacher-scale", "n"]


@pytest.fixture(scope="module")
def finished_run(data_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "phase1"
    netlog = out.parent / "netlog.txt"
    proc = _distill([data_yaml, "-o", out, "--epochs", "1", *TINY], netlog)
    return out, netlog, proc


def test_teacher_then_ld_student_offline(finished_run):
    out, netlog, proc = finished_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not netlog.exists() or netlog.read_text() == "", f"network attempts: {netlog.read_text()}"
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    assert events and all(e is not None for e in events), "stdout must hold JSON events only"
    for phase in ("teacher", "student"):
        mine = [e for e in events if e["phase"] == phase]
        assert [e["kind"] for e in mine if e["kind"] != "log"][0] == "start"
        assert mine[-1]["kind"] == "done" and Path(mine[-1]["path"]).is_file()
        steps = [e for e in mine if e["kind"] == "progress"]
        assert steps[0]["epoch"] == 1 and isinstance(steps[0]["loss"], float)
        assert any("mAP50_95" in e for e in steps), "validated epochs report mAP"
    student_losses = [e for e in events if e["phase"] == "student" and e["kind"] == "progress" and "losses" in e]
    assert {"ld_main", "ld_vlr"} <= set(student_losses[-1]["losses"])


def test_student_file_loads_into_the_core_model(finished_run):
    from ldfsam.model.build import build_model
    from ldfsam.model.config import PromptGeneratorConfig
    from ldfsam.model.presets import model_config
    from ldfsam.model.prompt_generator import load_prompt_generator_weights

    out, _, proc = finished_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = out / "student.safetensors"
    state, cfg, doc = load_prompt_generator_weights(student)
    assert (cfg.scale, cfg.num_classes, cfg.image_size) == ("n", 1, 64)
    assert doc["training"]["role"] == "student" and doc["training"]["scheme"] == "ld_main_vlr"
    assert doc["training"]["distill"]["ld"]["temperature"] == 10.0
    model = build_model(model_config("small", prompt_generator=PromptGeneratorConfig(
        scale="n", image_size=64, num_classes=1, init_weights=str(student))))
    loaded = model.prompt_generator.detector.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k].float(), state[k].float()) for k in state)
    p3, p4, p5 = model.prompt_features(torch.rand(1, 3, 64, 64))
    assert p3.shape[-1] == 8 and p5.shape[-1] == 2

    # The teacher is a different, larger-or-equal network saved in the same format, and never inside the
    # student's resume checkpoint.
    t_state, t_cfg, _ = load_prompt_generator_weights(out / "teacher.safetensors")
    assert t_cfg.scale == "n" and doc["training"]["teacher"]["path"] == str(out / "teacher.safetensors")
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(out / "student" / "weights" / "last.pt"), safe_only=True)
    saved = ckpt.get("ema") or ckpt.get("model")
    assert set(saved.state_dict()) == set(state)
    assert getattr(saved, "criterion", None) is None


@pytest.mark.slow  # 28 s idle: an interrupted Phase 1 run resumed; CI runs it (-m slow)
def test_interrupted_student_resumes(finished_run, data_yaml, tmp_path, capsys):
    out, _, proc = finished_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "resumable"
    netlog = tmp_path / "netlog.txt"
    args = [data_yaml, "-o", run, "--stage", "student", "--teacher-weights", out / "teacher.safetensors",
            "--epochs", "3", "--imgsz", "64", "--batch", "4", "--progress", "json"]
    cmd = [sys.executable, "-m", "ldfsam", "distill", *map(str, args)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(netlog),
                             cwd=REPO)
    try:
        for line in child.stdout:
            event = parse_event(line)
            if event and event["kind"] == "progress" and event.get("epoch") == 1 and "mAP50_95" in event:
                child.send_signal(signal.SIGTERM)  # epoch 1 is checkpointed before its mAP is reported
                break
        child.stdout.read()
        assert child.wait(timeout=120) == 130
    finally:
        if child.poll() is None:
            child.kill()
    assert not (run / "student.safetensors").exists()
    assert (run / "student" / "weights" / "last.pt").is_file()

    from ldfsam.cli import main

    # Without --resume the interrupted run is never silently restarted over.
    assert main(["distill", str(data_yaml), "-o", str(run), "--stage", "student", "--teacher-weights",
                 str(out / "teacher.safetensors"), "--progress", "none"]) == 2
    assert "--resume" in capsys.readouterr().err

    resumed = _distill([data_yaml, "-o", run, "--stage", "student", "--resume",
                        "--teacher-weights", out / "teacher.safetensors"], netlog)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = [parse_event(x) for x in resumed.stdout.splitlines()]
    start = next(e for e in events if e["kind"] == "start")
    assert start["start_epoch"] >= 2 and start["epochs"] == 3
    assert (run / "student.safetensors").is_file()
    assert json.loads((run / "student" / "state.json").read_text())["epoch"] == 3
    assert not netlog.exists() or netlog.read_text() == ""


def test_bad_inputs_are_named(tmp_path, data_yaml, capsys):
    from ldfsam.cli import main

    def error_of(*argv) -> str:
        assert main(["distill", *map(str, argv), "--progress", "none"]) == 2
        return capsys.readouterr().err

    missing = tmp_path / "nowhere" / "data.yaml"
    assert str(missing) in error_of(missing, "-o", tmp_path / "r1")
    assert "teacher" in error_of(data_yaml, "-o", tmp_path / "r2", "--stage", "student")
    assert not (tmp_path / "r2").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images/train\nnames: [a]\n")
    assert "lacks val" in error_of(bad, "-o", tmp_path / "r3")
    assert "multiple of 32" in error_of(data_yaml, "-o", tmp_path / "r4", "--imgsz", "100")
    assert not (tmp_path / "r4").exists()
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "images" / "val").mkdir(parents=True)
    (empty / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [tooth]\n")
    assert "train split has no images" in error_of(empty, "-o", tmp_path / "r5")
    # In JSON mode the reason is also an event on stdout, for readers of the stream.
    assert main(["distill", str(missing), "-o", str(tmp_path / "r6"), "--progress", "json"]) == 2
    events = [parse_event(x) for x in capsys.readouterr().out.splitlines()]
    assert events[-1]["kind"] == "error" and str(missing) in events[-1]["message"]


def test_data_yaml_paths_are_resolved(tmp_path, data_yaml, monkeypatch):
    from ldfsam.distill.data import read_detection_data
    from ldfsam.errors import InputError

    root = data_yaml.parent
    # Relative to the yaml's folder (the usual layout) ...
    (root / "rel.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [tooth]\n")
    got = read_detection_data(root / "rel.yaml")
    assert got.document["train"] == str(root / "images" / "train") and got.names == {0: "tooth"}
    # ... or to the working directory, as a tool run there may write it.
    monkeypatch.chdir(root.parent)
    (root / "cwd.yaml").write_text(f"path: {root.name}\ntrain: images/train\nval: images/val\nnames: [tooth]\n")
    resolved = read_detection_data(root / "cwd.yaml").write(tmp_path / "data.yaml")
    import yaml

    doc = yaml.safe_load(resolved.read_text())
    assert Path(doc["path"]).is_absolute() and Path(doc["val"]) == root / "images" / "val" and doc["nc"] == 1
    (root / "gap.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a, 2: b}\n")
    with pytest.raises(InputError, match="0..N-1"):
        read_detection_data(root / "gap.yaml")
    (root / "nodir.yaml").write_text("path: .\ntrain: images/nope\nval: images/val\nnames: [a]\n")
    with pytest.raises(InputError, match="images/nope"):
        read_detection_data(root / "nodir.yaml")


def test_init_weights_from_local_files(finished_run, data_yaml, tmp_path):
    from ldfsam.distill.config import TrainRecipe
    from ldfsam.distill.run import _overrides
    from ldfsam.distill.trainer import Phase1Trainer
    from ldfsam.distill.weights import load_init_source
    from ldfsam.errors import CheckpointError, InputError
    from ldfsam.model.prompt_generator import load_prompt_generator_weights
    from ldfsam.progress import Progress

    out, _, proc = finished_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, _, _ = load_prompt_generator_weights(out / "teacher.safetensors")
    # An ultralytics checkpoint (here the run's own last.pt) is read with weights_only=True via ultralytics'
    # allow-list; our .safetensors directly. Both give a model DetectionModel.load can transfer from.
    from_pt = load_init_source(out / "teacher" / "weights" / "last.pt")
    from_st = load_init_source(out / "teacher.safetensors")
    assert set(from_pt.state_dict()) == set(state)
    assert all(torch.equal(from_st.state_dict()[k], state[k]) for k in state)

    trainer = Phase1Trainer(_overrides(TrainRecipe(epochs=1, batch=2, imgsz=64), data_yaml, tmp_path, "init",
                                       "yolov8n.yaml"), "teacher", Progress("none"), init_source=from_st)
    model = trainer.get_model(cfg="yolov8n.yaml")
    assert all(torch.equal(model.state_dict()[k].float(), state[k].float()) for k in state)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_init_source(junk)
    with pytest.raises(InputError, match="no such"):
        load_init_source(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="safetensors"):
        load_init_source(data_yaml)


@pytest.mark.slow
def test_prepared_dataset_folder_as_input(tmp_path):
    """Phantom volumes -> `ldfsam prepare` -> `ldfsam distill PREPARED` (the data engineer's export)."""
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom

    vols = tmp_path / "vols"
    vols.mkdir()
    for i in range(4):
        image, labels = make_phantom(shape=(10, 64, 64), seed=i, teeth_fraction=0.8)
        sitk.WriteImage(image, str(vols / f"case{i}.nii.gz"))
        sitk.WriteImage(labels, str(vols / f"case{i}_label.nii.gz"))
    netlog = tmp_path / "netlog.txt"
    prep = subprocess.run([sys.executable, "-m", "ldfsam", "prepare", str(vols), str(tmp_path / "prepared"),
                           "--spacing", "none", "--test-count", "1", "--progress", "none"],
                          capture_output=True, text=True, env=_env(netlog), timeout=300, cwd=REPO)
    assert prep.returncode == 0, prep.stderr[-3000:]
    proc = _distill([tmp_path / "prepared", "-o", tmp_path / "run", "--epochs", "1", *TINY], netlog)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "student.safetensors").is_file()
    assert not netlog.exists() or netlog.read_text() == ""


def test_trainer_keeps_the_processes_thread_count(data_yaml, tmp_path):
    """Ultralytics sets CPU training to cpu_count - 1 threads (one on 2 cores); Phase 1 keeps the count it was given."""
    from ultralytics.utils import NUM_THREADS

    from ldfsam.distill.config import TrainRecipe
    from ldfsam.distill.run import _overrides
    from ldfsam.distill.trainer import Phase1Trainer
    from ldfsam.distill.weights import yolo_yaml
    from ldfsam.progress import Progress

    before = torch.get_num_threads()
    want = NUM_THREADS + 1  # never what ultralytics would choose
    torch.set_num_threads(want)
    try:
        recipe = TrainRecipe(epochs=1, batch=4, imgsz=64, device="cpu")
        Phase1Trainer(_overrides(recipe, data_yaml, tmp_path, "student", yolo_yaml("n")), "student", Progress("none"))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
