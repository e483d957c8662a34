"""Crash safety: a fine-tuning process killed with SIGKILL in the middle of an epoch resumes from its last saved
state and ends exactly like an uninterrupted run (same steps, bit-identical weights and optimiser state)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _finetune_helpers import toy_disc_dataset

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]



def _cmd(data: Path, run: Path, *extra: str):
    return [sys.executable, "-m", "ldfsam", "finetune", "--data", str(data), "--out", str(run), "--preset", "small",
            "--sam-size", "64", "--yolo-size", "64", "--epochs", "2", "--batch-size", "2", "--val-fraction", "0",
            "--checkpoint-every", "2", "--workers", "0", "--lr", "1e-3", "--progress", "json", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _state(run: Path):
    from ldfsam.checkpoint import load_state

    return load_state(run / "state.safetensors")


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    data = toy_disc_dataset(tmp_path / "toy", n=10, seed=1)
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_cmd(data, ref_run), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # 10 items, batch 2: 5 steps per epoch, 10 in all; states are saved at steps 2, 4, 5 (epoch end), 6, 8, 10.
    proc = subprocess.Popen(_cmd(data, run), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    killed_after = None
    try:
        for line in proc.stdout:
            event = parse_event(line)
            if event and event["kind"] == "progress" and event.get("step", 0) >= 7 and "total" in event:
                proc.send_signal(signal.SIGKILL)
                killed_after = event["step"]
                break
    finally:
        proc.wait(timeout=60)
    assert killed_after == 7 and proc.returncode == -signal.SIGKILL
    _, doc = _state(run)
    saved = doc["progress"]
    assert saved["epoch"] == 1 and 0 < saved["step_in_epoch"] < 5 and not saved["complete"]  # mid-epoch 2
    assert not (run / "model.safetensors").exists()  # no validation set: the model is written at the end

    resumed = subprocess.run([sys.executable, "-m", "ldfsam", "finetune", "--out", str(run), "--resume",
                              "--progress", "json"], cwd=REPO, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = [e for e in map(parse_event, resumed.stdout.splitlines()) if e]
    steps = [e["step"] for e in events if e["kind"] == "progress" and "total" in e]
    assert steps[0] == saved["global_step"] + 1 and steps[-1] == 10

    ref_tensors, ref_doc = _state(ref_run)
    tensors, doc = _state(run)
    assert doc["progress"]["global_step"] == ref_doc["progress"]["global_step"] == 10
    assert doc["progress"]["complete"]
    assert set(tensors) == set(ref_tensors)
    different = [k for k in tensors if not k.startswith("rng.") and not torch.equal(tensors[k], ref_tensors[k])]
    assert different == []  # model and optimiser bit-identical
    assert doc["progress"]["loss_sum"] == ref_doc["progress"]["loss_sum"]
    ref_rows = list(csv.DictReader(open(ref_run / "log.csv")))
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [(r["epoch"], r["global_step"], r["train_loss"]) for r in rows] == \
        [(r["epoch"], r["global_step"], r["train_loss"]) for r in ref_rows]
    assert (run / "model.safetensors").is_file()
    assert not list(run.glob(".*.part*"))
    config = json.loads((run / "config.json").read_text())
    assert config["finetune"]["checkpoint_every_steps"] == 2

    # Resuming a finished run does nothing and says so.
    from ldfsam.finetune.run import finetune
    from ldfsam.progress import Progress

    lines = []

    class Capture:
        def write(self, text):
            lines.extend(text.splitlines())

        def flush(self):
            pass

    result = finetune(None, None, run, resume=True, progress=Progress("json", stream=Capture()))
    assert result.global_step == 10 and any("complete already" in line for line in lines)
    assert torch.equal(_state(run)[0]["optim.0.exp_avg"], tensors["optim.0.exp_avg"])
