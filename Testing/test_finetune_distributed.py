"""Distributed fine-tuning through a real torchrun with two CPU processes (gloo): the first step's gradients
equal those of one process on the same global batch, and only rank 0 writes files and events."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _finetune_helpers import toy_disc_dataset

from ldfsam.progress import parse_event

REPO = Path(__file__).resolve().parents[1]
BETA1 = 0.9  # AdamW's default: after one step exp_avg = (1 - beta1) * gradient



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data: Path, run: Path, batch: int):
    # fp32: bf16 rounding would depend on how the batch is split between processes.
    return ["-m", "ldfsam", "finetune", "--data", str(data), "--out", str(run), "--preset", "small",
            "--sam-size", "64", "--yolo-size", "64", "--batch-size", str(batch), "--val-fraction", "0",
            "--max-steps", "1", "--workers", "0", "--precision", "fp32", "--progress", "json"]


def _gradients(run: Path):
    from ldfsam.checkpoint import load_state

    tensors, doc = load_state(run / "state.safetensors")
    assert doc["progress"]["global_step"] == 1
    return {k: v / (1 - BETA1) for k, v in tensors.items() if k.endswith(".exp_avg")}


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_torchrun_two_processes_match_one_process(tmp_path):
    data = toy_disc_dataset(tmp_path / "toy", n=8, seed=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from ldfsam.cli import main

    assert main(_args(data, tmp_path / "one", 4)[2:-2] + ["--progress", "none"]) == 0  # one process, here
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                            *_args(data, tmp_path / "two", 2)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]

    one, two = _gradients(tmp_path / "one"), _gradients(tmp_path / "two")
    assert set(one) == set(two) and len(one) > 10
    flat_one = torch.cat([one[k].flatten() for k in sorted(one)])
    flat_two = torch.cat([two[k].flatten() for k in sorted(two)])
    assert flat_one.abs().max() > 0
    # Same global batch (the 4 items of the sampler's first global batch), averaged across the two ranks.
    assert torch.allclose(flat_two, flat_one, rtol=1e-3, atol=1e-6 * float(flat_one.abs().max()))
    cos = torch.nn.functional.cosine_similarity(flat_one, flat_two, dim=0)
    assert cos > 0.99999

    # One writer: a single start and done event, one model file, no files from rank 1.
    events = [e for e in map(parse_event, multi.stdout.splitlines()) if e]
    assert sum(e["kind"] == "start" for e in events) == 1 and sum(e["kind"] == "done" for e in events) == 1
    assert "2 process(es)" in next(e for e in events if e["kind"] == "start")["message"]
    assert (tmp_path / "two" / "model.safetensors").is_file()
    from ldfsam.checkpoint import read_checkpoint_meta

    assert read_checkpoint_meta(tmp_path / "two" / "model.safetensors")["training"]["world_size"] == 2
