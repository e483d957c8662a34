"""``ldfsam segment`` as a real subprocess: JSON progress, output formats, --force, errors, cancellation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from _infer_helpers import save_tiny_model, write_image

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom((24, 64, 64), spacing=0.5, seed=3)
    folder = tmp_path_factory.mktemp("phantom")
    sitk.WriteImage(image, str(folder / "phantom.nii.gz"))
    return folder / "phantom.nii.gz"


def _segment(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ldfsam", "segment", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def test_json_progress_and_seg_nrrd(tmp_path, tiny_model, phantom):
    out = tmp_path / "teeth.seg.nrrd"
    r = _segment(phantom, "-o", out, "--model", tiny_model, "--progress", "json", "--batch", "4",
                 "--slice-spacing", "native")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    events = [parse_event(line) for line in lines]
    assert all(e is not None for e in events), r.stdout  # stdout holds events only
    # (a "log" event may come first: the one-time precision measurement of a fresh LDFSAM_HOME says so)
    assert [e["kind"] for e in events if e["kind"] != "log"][0] == "start" and events[-1]["kind"] == "done"
    steps = [e for e in events if e["kind"] == "progress"]
    assert [e["step"] for e in steps] == [4, 8, 12, 16, 20, 24] and steps[-1]["total"] == 24
    assert events[-1]["output"] == str(out) and events[-1]["slices"] == 24
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Tooth"]
    assert seg["segments"][0]["terminology"]["type"][1] == "38199008"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teeth.seg.nrrd"]


def test_progress_of_the_default_coarse_to_fine_run(tmp_path, tiny_model, phantom):
    """With --slice-spacing auto, ``step`` counts settled candidates: it rises to ``total``, and
    ``model_slices`` (those the model ran on) rises with it, up to the count the done event reports."""
    r = _segment(phantom, "-o", tmp_path / "t.nii.gz", "--model", tiny_model, "--progress", "json", "--batch", "4")
    assert r.returncode == 0, r.stderr
    events = [parse_event(line) for line in r.stdout.splitlines() if line.strip()]
    steps = [e for e in events if e["kind"] == "progress"]
    assert len(steps) >= 2 and steps[-1]["step"] == steps[-1]["total"] == events[0]["total"]
    assert all(a["step"] < b["step"] and a["model_slices"] < b["model_slices"] for a, b in zip(steps, steps[1:]))
    assert steps[-1]["model_slices"] == events[-1]["model_slices"] <= events[-1]["slices"]


def test_refuses_to_overwrite_without_force(tmp_path, tiny_model, phantom):
    out = tmp_path / "teeth.nii.gz"
    out.write_bytes(b"keep me")
    r = _segment(phantom, "-o", out, "--model", tiny_model, "--progress", "none")
    assert r.returncode == 2
    assert f"ldfsam segment: error: {out}: exists already; pass --force" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = _segment(phantom, "-o", out, "--model", tiny_model, "--progress", "none", "--force",
                 "--probabilities", tmp_path / "p.nii.gz")
    assert r.returncode == 0, r.stderr
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == sitk.ReadImage(str(phantom)).GetSize()
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p.nii.gz")))
    assert prob.dtype == np.float32 and prob.min() >= 0.0 and prob.max() <= 1.0
    assert "slices the model ran on" in r.stdout


def test_slice_spacing(tmp_path, tiny_model, phantom):
    """--slice-spacing 1.0 on 0.5 mm slices: the model on 13 of the 24 slices (first and last included), the
    output still on every slice of the input grid; a bad value fails before any work."""
    out = tmp_path / "teeth.nii.gz"
    r = _segment(phantom, "-o", out, "--model", tiny_model, "--progress", "json", "--slice-spacing", "1.0")
    assert r.returncode == 0, r.stderr
    events = [parse_event(line) for line in r.stdout.splitlines() if line.strip()]
    assert events[0]["total"] == 13 and "the model on 13 (every 0.96 mm)" in events[0]["message"]
    assert events[-1]["model_slices"] == 13 and events[-1]["slices"] == 24
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(phantom)).GetSize()
    r = _segment(phantom, "-o", tmp_path / "x.nii.gz", "--model", tiny_model, "--slice-spacing", "fast")
    assert r.returncode == 2
    assert "--slice-spacing fast: give 'auto', 'native', a number of model pixels" in r.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_errors_name_the_file(tmp_path, tiny_model, phantom):
    missing = tmp_path / "missing.nii.gz"
    r = _segment(missing, "-o", tmp_path / "o.nii.gz", "--model", tiny_model, "--progress", "json")
    assert r.returncode == 2
    assert f"ldfsam segment: error: {missing}: no such file" in r.stderr
    events = [parse_event(line) for line in r.stdout.splitlines()]
    assert events and events[-1]["kind"] == "error" and str(missing) in events[-1]["message"]
    nomodel = tmp_path / "nomodel.safetensors"
    r = _segment(phantom, "-o", tmp_path / "o.nii.gz", "--model", nomodel)
    assert r.returncode == 2
    assert r.stderr.strip() == f"ldfsam segment: error: {nomodel}: no such model file"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_mid_run_leaves_nothing(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    vol = write_image(tmp_path / "long.nrrd", rng.normal(0, 100, (400, 48, 48)).astype(np.int16),
                      spacing=(0.5, 0.5, 0.5))
    out = tmp_path / "out" / "teeth.seg.nrrd"
    proc = subprocess.Popen([sys.executable, "-m", "ldfsam", "segment", str(vol), "-o", str(out), "--model",
                             str(tiny_model), "--progress", "json", "--batch", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for line in proc.stdout:
            event = parse_event(line)
            if event and event["kind"] == "progress":
                break
        else:
            pytest.fail(f"no progress event: {proc.stderr.read()}")
        total = event["total"]
        assert event["step"] < total
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        after = [e for e in map(parse_event, proc.stdout) if e]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()
    # Stopped at once, not at the end: at most the batch in flight reported after the signal, never "done".
    assert [e["kind"] for e in after if e["kind"] != "progress"] in ([], ["error"]), after
    steps = [e for e in after if e["kind"] == "progress"]
    assert len(steps) <= 1 and all(e["step"] < total for e in steps), after
    assert "cancelled" in proc.stderr.read()
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name != "long.nrrd"]
    assert leftovers == []
    assert os.path.exists(vol)


def test_batch_default_is_the_measured_4_in_the_command_the_options_and_segment_volume():
    """4 slices per batch, not 8: a third of a GiB lighter on the benchmark volume and no slower
    (docs/segmentation.md, "Batch 4 instead of 8"). The three entry points must not drift apart."""
    import inspect

    from ldfsam.cli import build_parser
    from ldfsam.infer import SegmentOptions, segment_volume

    args = build_parser().parse_args(["segment", "in.nii.gz", "-o", "out.nii.gz"])
    assert args.batch == SegmentOptions().batch == inspect.signature(segment_volume).parameters["batch"].default == 4
