"""Every command that fails under ``--progress json`` ends its event stream with an error event naming the
cause, as a real subprocess shows it: exit status 2, one line on stderr, no traceback, events alone on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]


def _run(*args, home: Path):
    import os

    env = {**os.environ, "LDFSAM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "ldfsam", *map(str, args), "--progress", "json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def _failure(r, command: str, cause: str):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f"ldfsam {command}: error: " in r.stderr and cause in r.stderr, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    events = [parse_event(line) for line in lines]
    assert lines and all(events), r.stdout  # nothing but events on stdout
    assert events[-1]["kind"] == "error" and cause in events[-1]["message"], events[-1]
    return events


@pytest.mark.parametrize("command, args, phase", [
    ("segment", ["{missing}.nii.gz", "-o", "{tmp}/o.nii.gz"], "segment"),
    ("demo", ["--model", "{missing}.safetensors"], "demo"),
    ("evaluate", ["--pred", "{missing}", "--ref", "{tmp}", "--out", "{tmp}/ev"], "evaluate"),
    ("prepare", ["{missing}", "{tmp}/prepared"], "prepare"),
    ("distill", ["{missing}", "-o", "{tmp}/run"], "teacher"),
    ("models", ["download", "{missing}"], "download"),
])
def test_failing_command_ends_with_an_error_event(tmp_path, command, args, phase):
    missing = tmp_path / "no-such-thing"
    argv = [a.format(missing=missing, tmp=tmp_path) for a in args]
    events = _failure(_run(command, *argv, home=tmp_path / "home"), command, str(missing))
    assert events[-1]["phase"] == phase


def test_evaluate_option_errors_are_events_too(tmp_path):
    """Checked before any work, and still reported in the stream."""
    r = _run("evaluate", "--pred", tmp_path, "--ref", tmp_path, "--out", tmp_path / "ev", "--bootstrap", "0",
             home=tmp_path / "home")
    _failure(r, "evaluate", "--bootstrap must be at least 1")


def test_finetune_warns_of_both_random_parts_then_reports_its_failure(tmp_path):
    """Phase 2 without SAM weights warns as loudly as without a prompt generator: the same kind of event."""
    missing = tmp_path / "no-dataset"
    r = _run("finetune", "--data", missing, "--out", tmp_path / "run", "--preset", "small", home=tmp_path / "home")
    events = _failure(r, "finetune", str(missing))
    warnings = [e for e in events if e["kind"] == "log" and e.get("level") == "warning"]
    said = " | ".join(e["message"] for e in warnings)
    assert len(warnings) == 2, said
    assert "no --prompt-generator" in said and "no --sam-checkpoint" in said
    assert {e["phase"] for e in warnings} == {"finetune"}


@pytest.mark.slow  # over 9 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_library_names_arguments_the_command_line_names_flags(tmp_path):
    """One error, two audiences: segment_volume says threshold=1.5, ldfsam segment says --threshold 1.5."""
    import numpy as np
    from _infer_helpers import write_image

    from ldfsam.errors import ConfigError
    from ldfsam.infer import segment_volume

    scan = write_image(tmp_path / "scan.nii.gz", np.random.default_rng(0).normal(0, 100, (12, 32, 32))
                       .astype(np.int16), spacing=(0.5, 0.5, 0.5))
    for kwargs, python, flag in [({"threshold": 1.5}, "threshold=1.5", "--threshold 1.5"),
                                 ({"batch": 0}, "batch=0", "--batch 0"),
                                 ({"min_island_mm3": -1.0}, "min_island_mm3=-1.0", "--min-island-mm3 -1.0"),
                                 ({"slice_spacing": "fast"}, "slice_spacing='fast'", "--slice-spacing fast")]:
        with pytest.raises(ConfigError) as e:
            segment_volume(scan, tmp_path / "o.nii.gz", **kwargs)
        assert str(e.value).startswith(f"{python}:"), str(e.value)
        assert "--" not in str(e.value)
        if "threshold" in kwargs or "slice_spacing" in kwargs:  # two of them through the command line
            cli = [f"--{k.replace('_', '-')}" for k in kwargs] + [str(v) for v in kwargs.values()]
            r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(scan), "-o",
                                str(tmp_path / "o.nii.gz"), *cli], capture_output=True, text=True, cwd=REPO,
                               timeout=300)
            assert r.returncode == 2 and f"ldfsam segment: error: {flag}:" in r.stderr, r.stderr
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"kept")
    with pytest.raises(Exception, match="exists already; pass force=True to overwrite it"):
        segment_volume(scan, out)
    r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(scan), "-o", str(out)], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "exists already; pass --force to overwrite it" in r.stderr
    assert out.read_bytes() == b"kept"


def test_an_output_folder_that_cannot_be_written_is_said_before_the_work(tmp_path, capsys):
    """evaluate and finetune check their output folder first (not after the evaluation or the data loading)."""
    from ldfsam.cli import main

    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    for argv, path in [(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out",
                         "/proc/ldfsam-eval"], "/proc/ldfsam-eval/summary.json"),
                       (["finetune", "--data", str(tmp_path / "pred"), "--out", "/proc/ldfsam-run", "--preset",
                         "small"], "/proc/ldfsam-run/config.json")]:
        assert main([*argv, "--progress", "none"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"ldfsam {argv[0]}: error: {path}: cannot be written there (No such file or directory)"
