"""``ldfsam segment INPUT... -o FOLDER`` as real subprocesses (the bundled demo model): per-volume events,
the manifest, resuming after a cancel, bad input, and two CPU ranks under a real torchrun, one of them killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.infer.manifest import read_manifest
from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]
# One thread per process (the machine's cores are few and shared); the suite's PYTHONPATH keeps its network guard.
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from ldfsam.data.phantom import make_phantom

    folder = tmp_path_factory.mktemp("scans")
    for i in range(5):
        sitk.WriteImage(make_phantom((12, 40, 40), spacing=0.5, seed=10 + i)[0], str(folder / f"s{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def reference(scans, tmp_path_factory):
    """One process over the whole folder: the results every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    r = _segment(scans, "-o", out, "--format", "nii.gz", "--progress", "json")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, [e for e in map(parse_event, r.stdout.splitlines()) if e]


def _segment(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ldfsam", "segment", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=timeout)


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _same_results(out: Path, ref: Path) -> None:
    names = sorted(p.name for p in ref.glob("*.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names and len(names) == 5
    for name in names:
        assert np.array_equal(_labels(out / name), _labels(ref / name)), name


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_a_folder_of_volumes_per_volume_events_and_manifest(scans, reference):
    out, events = reference
    cohort = [e for e in events if e["phase"] == "cohort"]
    assert cohort[0]["kind"] == "start" and cohort[0]["total"] == 5 and cohort[-1]["kind"] == "done"
    finished = [e for e in cohort if e["kind"] == "progress"]
    assert [e["step"] for e in finished] == [1, 2, 3, 4, 5]
    assert sorted(Path(e["input"]).name for e in finished) == [f"s{i}.nii.gz" for i in range(5)]
    assert all(e["status"] == "done" and Path(e["output"]).is_file() for e in finished)
    assert cohort[-1]["model_loads"] == 1 and cohort[-1]["done"] == 5 and cohort[-1]["failed"] == 0
    # The slices of every volume are reported as before, phase "segment", one start and done per volume.
    assert sum(e["phase"] == "segment" and e["kind"] == "start" for e in events) == 5
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(x["input"]).name for x in lines) == [f"s{i}.nii.gz" for i in range(5)]
    assert all(x["status"] == "done" and x["error"] is None and x["seconds"] > 0 for x in lines)


@pytest.mark.slow  # 32 s idle: two runs over a list; CI runs it (-m slow)
def test_a_list_a_bad_volume_exit_status_and_rerun(scans, reference, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"{scans / 's0.nii.gz'}\nbad.nii.gz\n")
    out = tmp_path / "out"
    r = _segment(f"@{listing}", scans / "s1.nii.gz", "-o", out, "--format", "nii.gz", "--progress", "none")
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"failed: {bad}:" in r.stdout and "2 volume(s) segmented, 1 failed" in r.stdout
    assert np.array_equal(_labels(out / "s0.nii.gz"), _labels(reference[0] / "s0.nii.gz"))
    r = _segment(f"@{listing}", scans / "s1.nii.gz", "-o", out, "--format", "nii.gz", "--progress", "none")
    assert r.returncode == 1 and "0 volume(s) segmented, 1 failed (see" in r.stdout and "2 done before" in r.stdout
    # A single input and an output file: today's command, unchanged.
    one = tmp_path / "one.seg.nrrd"
    r = _segment(scans / "s2.nii.gz", "-o", one, "--progress", "none")
    assert r.returncode == 0 and one.is_file() and not (tmp_path / "manifest.jsonl").exists()


def test_bad_input_is_one_line_naming_the_path(scans, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text("gone.nii.gz\n")
    cases = [
        ([empty, "-o", tmp_path / "o"], f"{empty}: holds no volumes"),
        ([f"@{listing}", "-o", tmp_path / "o"], f"{listing}: line 1: {tmp_path / 'gone.nii.gz'}: no such file"),
        ([scans, scans / "s1.nii.gz", "-o", tmp_path / "o"], f"{scans / 's1.nii.gz'}: is given more than once"),
        ([scans, "-o", a_file], f"{a_file}: is a file; give a folder"),
        ([scans / "s0.nii.gz", scans / "s1.nii.gz", "-o", tmp_path / "t.nii.gz"], "names a file, but several"),
        ([scans, "-o", tmp_path / "o", "--probabilities", tmp_path / "p.nii.gz"], "--probabilities: is written"),
        ([scans / "s0.nii.gz", "-o", tmp_path / "t.nii.gz", "--format", "seg.nrrd"], "--format seg.nrrd: applies"),
    ]
    for args, said in cases:
        r = _segment(*args, "--progress", "json")
        assert r.returncode == 2, (args, r.stderr[-2000:])
        error = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["kind"] == "error"]
        assert len(error) == 1 and said in error[0]["message"], (said, error)
        assert said in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists() and a_file.read_text() == "x"


def _events_until(proc, done):
    for line in proc.stdout:
        event = parse_event(line)
        if event and done(event):
            return event
    pytest.fail(f"the process ended first: {proc.stderr.read()[-3000:]}")


@pytest.mark.slow  # two runs over the folder; CI runs it (-m slow)
def test_cancelled_then_rerun_completes_the_rest(scans, reference, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ldfsam", "segment", str(scans), "-o", str(out), "--format", "nii.gz",
            "--progress", "json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    try:
        _events_until(proc, lambda e: e["phase"] == "cohort" and e["kind"] == "progress")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    done = [r for r in read_manifest(out).values() if r.status == "done"]
    assert 1 <= len(done) < 5 and all(Path(r.output).is_file() for r in done)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    r = _segment(scans, "-o", out, "--format", "nii.gz", "--progress", "json")
    assert r.returncode == 0, r.stderr[-3000:]
    last = [e for e in map(parse_event, r.stdout.splitlines()) if e][-1]
    assert last["skipped"] == len(done) and last["done"] == 5 - len(done)
    _same_results(out, reference[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(scans: Path, out: Path) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "ldfsam", "segment", str(scans), "-o", str(out), "--format",
            "nii.gz", "--progress", "json", "--device", "cpu"]


@pytest.mark.slow  # a minute or more with the bundled lite model on 2 cores; CI runs it (-m slow)
def test_two_ranks_segment_every_volume_once_as_one_process_does(scans, reference, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_torchrun(scans, out), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["phase"] == "cohort"]
    starts = sorted((e["rank"], e["total"]) for e in events if e["kind"] == "start")
    assert starts == [(0, 3), (1, 2)]
    per_rank = {0: [], 1: []}
    for name in ("manifest.rank0.jsonl", "manifest.rank1.jsonl"):
        for line in (out / name).read_text().splitlines():
            record = json.loads(line)
            per_rank[record["rank"]].append(Path(record["input"]).name)
    assert sorted(per_rank[0] + per_rank[1]) == [f"s{i}.nii.gz" for i in range(5)]  # each exactly once
    assert not set(per_rank[0]) & set(per_rank[1]) and not (out / "manifest.jsonl").exists()
    _same_results(out, reference[0])


def _children(parent: int) -> list:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append((int(stat.parent.name), environ))
    return found


@pytest.mark.slow  # two torchrun runs
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the rank's process in /proc")
def test_a_killed_rank_loses_nothing_and_a_rerun_completes_the_rest(scans, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_torchrun(scans, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    try:
        _events_until(proc, lambda e: e["phase"] == "cohort" and e["kind"] == "progress" and e.get("rank") == 1)
        rank1 = [pid for pid, env in _children(proc.pid) if b"RANK=1" in env]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)  # a crash: no clean-up of its own
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_manifest(out)
    assert any(r.rank == 1 and r.status == "done" for r in before.values())
    assert all(Path(r.output).is_file() for r in before.values() if r.status == "done")
    time.sleep(0.1)
    r = subprocess.run(_torchrun(scans, out), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    after = read_manifest(out)
    assert sorted(Path(k).name for k in after) == [f"s{i}.nii.gz" for i in range(5)]
    assert all(r.status == "done" for r in after.values())
    events = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["phase"] == "cohort"]
    redone = sum(e["done"] for e in events if e["kind"] == "done")
    assert redone == 5 - sum(r.status == "done" for r in before.values())  # nothing done twice
    _same_results(out, reference[0])


@pytest.mark.slow  # two torchrun runs
def test_a_dead_worker_costs_one_volume_and_the_other_ranks_finish(scans, reference, tmp_path):
    """Under torchrun each rank supervises a worker: when rank 1's worker is killed mid-volume, that volume is
    recorded as failed, rank 1 goes on with the rest of its share, rank 0 is not stopped, and the run's exit
    status says that something failed; a rerun does only the failed volume."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_torchrun(scans, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    try:
        event = _events_until(proc, lambda e: e["phase"] == "cohort" and e["kind"] == "log" and e.get("rank") == 1
                              and e["message"].startswith("segmenting"))
        held = json.loads((out / ".rank1.inflight.json").read_text())
        victim = str(Path(event["input"]).resolve())
        assert held["volumes"][victim]["stage"] == "predicting"
        os.kill(held["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    records = read_manifest(out)
    assert sorted(Path(k).name for k in records) == [f"s{i}.nii.gz" for i in range(5)]
    failed = [r for r in records.values() if r.status == "failed"]
    assert [r.input for r in failed] == [victim] and "killed by SIGKILL" in failed[0].error
    assert all(r.status == "done" and Path(r.output).is_file() for r in records.values() if r.rank == 0)
    assert sum(r.status == "done" for r in records.values()) == 4 and not list(out.glob(".rank*.inflight.json"))
    r = subprocess.run(_torchrun(scans, out), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["phase"] == "cohort"]
    assert sum(e["done"] for e in events if e["kind"] == "done") == 1
    _same_results(out, reference[0])


def test_ranks_refuse_an_output_folder_inside_an_input_folder(scans, tmp_path):
    """Each rank lists the inputs when it starts: outputs inside an input folder would change a late rank's list."""
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    inside = scans / "results"
    r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(scans), "-o", str(inside), "--progress",
                        "json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    error = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["kind"] == "error"]
    assert len(error) == 1 and f"{inside}: lies inside the input folder {scans}" in error[0]["message"]
    assert not inside.exists()
