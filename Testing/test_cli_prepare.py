"""``ldfsam prepare`` in a real subprocess: outputs, JSON progress, errors, cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldfsam.data.phantom import write_phantom_dataset
from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _ldfsam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldfsam", "prepare", *args], capture_output=True, text=True,
                          env=_env(), timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cbct")
    write_phantom_dataset(folder, cases=4, shape=(12, 40, 40), teeth_fraction=0.5)
    return folder


def test_prepare_json_progress_and_outputs(dataset, tmp_path):
    out = tmp_path / "prepared"
    r = _ldfsam(str(dataset), str(out), "--spacing", "none", "--budget", "50", "100", "--test-count", "1",
                "--progress", "json")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    events = [parse_event(line) for line in lines]
    assert all(e is not None for e in events), r.stdout  # stdout holds events only
    assert events[0]["kind"] == "start" and events[0]["phase"] == "prepare"
    steps = [e["step"] for e in events if e["kind"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == events[0]["total"]
    done = events[-1]
    assert done["kind"] == "done" and done["cases"] == 4 and done["test"] == 1 and done["val"] == 1
    assert done["slices"] == 48 and done["slices_with_foreground"] == 24 and done["boxes"] > 24
    manifest = json.loads((out / "prepared.json").read_text())
    assert set(manifest["yolo"]) == {"50", "100"}
    splits = json.loads((out / "splits.json").read_text())
    assert splits["seed"] == 2025 and len(splits["train"]) == 2
    yaml_text = (out / manifest["yolo"]["100"] / "data.yaml").read_text()
    assert str(out) in yaml_text
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["target_spacing"] is None and preprocess["class_names"] == ["tooth"]


def test_prepare_bar_mode_prints_a_summary(dataset, tmp_path):
    r = _ldfsam(str(dataset), str(tmp_path / "p"), "--spacing", "none", "--no-yolo", "--label-map", "11-48:1",
                "--progress", "bar")
    assert r.returncode == 0, r.stderr
    assert "cases: 4" in r.stdout and "slices with foreground: 24" in r.stdout
    assert "prepare" in r.stderr  # the bar


def test_prepare_errors_name_the_file(dataset, tmp_path):
    r = _ldfsam(str(tmp_path / "nowhere"), str(tmp_path / "o"))
    assert r.returncode == 2 and "nowhere: is not a folder" in r.stderr
    r = _ldfsam(str(dataset), str(tmp_path / "o"), "--label-map", "3=1")
    assert r.returncode == 2 and "VALUE:CLASS" in r.stderr
    r = _ldfsam(str(dataset), str(tmp_path / "o"), "--spacing", "none", "--label-map", "11-28:1", "--strict-labels")
    assert r.returncode == 2 and "phantom_000_label.nii.gz: unexpected label values 31" in r.stderr
    assert not list((tmp_path / "o" / "cache").glob(".*"))  # no half-built entry left
    r = _ldfsam(str(dataset), str(tmp_path / "o"), "--budget", "0")
    assert r.returncode == 2 and "budget" in r.stderr


def test_prepare_cancel_leaves_nothing_half_built(tmp_path):
    folder = tmp_path / "big"
    write_phantom_dataset(folder, cases=6, shape=(24, 96, 96))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ldfsam", "prepare", str(folder), str(out), "--spacing", "none",
                             "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=REPO)
    # Wait for the first finished case, then stop the run (SIGTERM, as a GUI's Cancel does).
    for line in proc.stdout:
        event = parse_event(line)
        if event and event["kind"] == "progress":
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert not (out / "prepared.json").exists()
    leftovers = [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".part" in p.name]
    assert leftovers == []
    for entry in (out / "cache").iterdir():  # every entry that exists is complete
        assert sorted(p.name for p in entry.iterdir()) == ["boxes.npy", "classes.npy", "image.npy", "meta.json"]
