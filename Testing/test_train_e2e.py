"""``ldfsam train`` end to end on a tiny CBCT phantom set, in real subprocesses: one uninterrupted run, and one
killed in each stage (SIGTERM or SIGKILL) and resumed, which must end with the same files bit for bit."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]
# Tiny everything: 48 px phantoms, YOLOv8n teacher and student at 64 px, the small SAM at 64 px.
TINY = ["--preset", "small", "--phase1-epochs", "1", "--phase2-epochs", "2", "--batch", "4", "--imgsz", "64",
        "--sam-size", "64", "--teacher-scale", "n", "--workers", "0", "--device", "cpu"]
SECTIONS = ("configuration", "time", "machine", "phase1", "phase2", "alpha", "evaluation", "cases")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _cmd(*args) -> list:
    return [sys.executable, "-m", "ldfsam", "train", *map(str, args), "--progress", "json"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from ldfsam.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("train")
    write_phantom_dataset(root / "data", cases=5, shape=(12, 48, 48), spacing=0.5, teeth_fraction=0.6)
    # Keep the phantoms' spacing; a small bootstrap.
    (root / "cfg.json").write_text(json.dumps({"prepare": {"spacing": None}, "evaluate": {"bootstrap": 200}}))
    return root


@pytest.fixture(scope="module")
def reference(dataset) -> tuple:
    run = dataset / "reference"
    proc = subprocess.run(_cmd(dataset / "data", "-o", run, "--config", dataset / "cfg.json", *TINY),
                          capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, [parse_event(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_one_command_runs_every_stage_and_names_it(reference):
    run, events = reference
    assert events and all(e is not None for e in events), "stdout holds events only"
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert list(stages) == ["prepare", "phase1", "phase2", "evaluate"]
    assert all(s["machine"]["cores"] and s["machine"]["torch"] for s in stages.values())
    # Every event inside a stage names it; each command's own phases run inside their stage.
    inner = [e for e in events if e["phase"] != "train"]
    assert inner and all("stage" in e for e in inner)
    where = {(e["phase"], e["stage"]) for e in inner}
    assert {("prepare", "prepare"), ("teacher", "phase1"), ("student", "phase1"), ("finetune", "phase2"),
            ("evaluate", "evaluate")} <= where
    assert events[-1]["kind"] == "done" and events[-1]["phase"] == "train"
    # The stage folders are the four commands' run folders.
    for name in ("prepared/prepared.json", "phase1/student.safetensors", "phase2/model.safetensors",
                 "evaluation/per_case.csv", "evaluation/summary.json", "report.html", "train.json"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "train.json").read_text())["config"]
    assert cfg["distill"]["student"]["imgsz"] == 64 and cfg["finetune"]["epochs"] == 2
    assert cfg["prepare"]["spacing"] is None and cfg["evaluate"]["bootstrap"] == 200


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_phase1_reports_validation_scores_per_epoch(reference):
    run, events = reference
    for role in ("teacher", "student"):
        epochs = [e for e in events if e["phase"] == role and e["kind"] == "progress" and "mAP50_95" in e]
        assert epochs and all(0.0 <= e[k] <= 1.0 for e in epochs for k in ("precision", "recall", "mAP50"))
        done = next(e for e in events if e["phase"] == role and e["kind"] == "done")
        assert "mAP50-95" in done["message"] and done["best_epoch"] == 1
        state = json.loads((run / "phase1" / role / "state.json").read_text())
        assert [h["epoch"] for h in state["history"]] == [1]
        header = (run / "phase1" / role / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"epoch", "loss", "precision", "recall", "mAP50", "mAP50_95"} <= set(header)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_report_has_every_section_and_its_images_decode(reference):
    from PIL import Image

    run, _ = reference
    page = (run / "report.html").read_text()
    assert re.findall(r'<section id="(\w+)"', page) == list(SECTIONS)
    assert "not run yet" not in page and "cannot be shown" not in page
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    alts = [alt for alt, _ in images]
    assert alts[:2] == ["Phase 1 curves", "Phase 2 curves"]
    assert any(alt.startswith("phantom_") and "Dice" in alt for alt in alts[2:])
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    section = lambda key: page.split(f'<section id="{key}">')[1].split("</section>")[0]  # noqa: E731
    assert "feature_prompts.alpha" in section("alpha")
    assert "95 % CI low" in section("evaluation") and "dice" in section("evaluation")
    assert "torch" in section("machine") and str(os.cpu_count()) in section("machine")
    # `ldfsam report` rebuilds the same sections from the folder alone.
    before = (run / "report.html").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "report", str(run)], capture_output=True, text=True,
                          env=_env(), timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "report.html").stat().st_mtime_ns != before
    assert re.findall(r'<section id="(\w+)"', (run / "report.html").read_text()) == list(SECTIONS)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_evaluate_takes_the_run_folder_and_its_splits_files(reference, dataset, tmp_path, capsys):
    from ldfsam.cli import main

    run, _ = reference
    # The training run folder (its own splits.json), and Phase 2's copy of the splits it used.
    for splits in (run, run / "phase2" / "splits.json"):
        out = tmp_path / re.sub(r"\W", "_", str(splits.relative_to(run.parent)))
        assert main(["evaluate", "--model", str(run / "phase2" / "model.safetensors"), "--data",
                     str(dataset / "data"), "--splits", str(splits), "--out", str(out), "--bootstrap", "200",
                     "--progress", "none"]) == 0, capsys.readouterr().err
        assert (out / "per_case.csv").read_text() == (run / "evaluation" / "per_case.csv").read_text()


def _run_until(args, stop, sig) -> int:
    """Start ``ldfsam train``; send ``sig`` at the first event for which ``stop(event)`` holds; its exit code."""
    child = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=_env(), cwd=REPO)
    try:
        for line in child.stdout:
            event = parse_event(line)
            if event and stop(event):
                child.send_signal(sig)
                break
        child.stdout.read()
        return child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow  # one kill and resume per stage; CI runs it (-m slow)
def test_killed_in_every_stage_and_resumed_gives_the_same_result(reference, dataset, capsys):
    import torch

    ref_run, _ = reference
    run = dataset / "interrupted"
    new = [dataset / "data", "-o", run, "--config", dataset / "cfg.json", *TINY]
    resume = ["-o", run, "--resume"]
    kills = [
        # prepare: after the first case is cached (SIGTERM: cancelled, exit 130)
        (new, lambda e: e["phase"] == "prepare" and e["kind"] == "progress", signal.SIGTERM, "prepare"),
        # Phase 1: the teacher is trained, the student is half way through its epoch
        (resume, lambda e: e["phase"] == "student" and e["kind"] == "progress", signal.SIGKILL, "phase1"),
        # Phase 2: in epoch 2, after epoch 1's state was saved
        (resume, lambda e: e["phase"] == "finetune" and e.get("epoch") == 2 and e["kind"] == "progress",
         signal.SIGKILL, "phase2"),
        # evaluation: as soon as it starts
        (resume, lambda e: e.get("stage") == "evaluate", signal.SIGKILL, "evaluate"),
    ]
    for args, stop, sig, stage in kills:
        code = _run_until(args, stop, sig)
        assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL), (stage, code)
        done = json.loads((run / "stages.json").read_text())["stages"] if (run / "stages.json").exists() else {}
        assert stage not in done, f"{stage} finished although it was interrupted"
    # A new run is never started over an interrupted one.
    from ldfsam.cli import main

    assert main(["train", *map(str, new), "--progress", "none"]) == 2
    assert "--resume" in capsys.readouterr().err
    final = subprocess.run(_cmd(*resume), capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert final.returncode == 0, final.stderr[-3000:]
    skipped = [e["message"] for e in map(parse_event, final.stdout.splitlines()) if e and e["kind"] == "log"
               and "skipped" in e.get("message", "")]
    assert len(skipped) == 3, skipped

    assert json.loads((run / "splits.json").read_text()) == json.loads((ref_run / "splits.json").read_text())
    for name in ("phase1/teacher.safetensors", "phase1/student.safetensors", "phase2/model.safetensors"):
        mine, theirs = _tensors(run / name), _tensors(ref_run / name)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    assert (run / "evaluation" / "per_case.csv").read_text() == (ref_run / "evaluation" / "per_case.csv").read_text()
    losses = lambda r: [line.split(",")[:3] for line in (r / "phase2" / "log.csv").read_text().splitlines()]  # noqa
    assert losses(run) == losses(ref_run)
    assert re.findall(r'<section id="(\w+)"', (run / "report.html").read_text()) == list(SECTIONS)


def test_bad_inputs_are_named_and_nothing_is_written(tmp_path, capsys):
    from ldfsam.cli import main

    def error_of(*argv) -> str:
        assert main(["train", *map(str, argv), "--progress", "none"]) == 2
        return capsys.readouterr().err

    missing = tmp_path / "nowhere"
    assert f"{missing}: no such dataset folder" in error_of(missing, "-o", tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    assert "--resume" in error_of("-o", tmp_path / "r2")
    assert f"{tmp_path / 'r3'}: is not a training run folder" in error_of("-o", tmp_path / "r3", "--resume")
    (tmp_path / "data").mkdir()
    assert "--budget 0.0 must be in (0, 100]" in error_of(tmp_path / "data", "-o", tmp_path / "r4", "--budget", "0")
    assert "multiple of 32" in error_of(tmp_path / "data", "-o", tmp_path / "r5", "--imgsz", "100")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert "is not empty" in error_of(tmp_path / "data", "-o", tmp_path / "used")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "used").iterdir())) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"distill": {"teacher": {"epochs": 0}}}))
    assert "teacher.epochs" in error_of(tmp_path / "data", "-o", tmp_path / "r6", "--config", bad)
    for name in ("r4", "r5", "r6"):
        assert not (tmp_path / name).exists()
