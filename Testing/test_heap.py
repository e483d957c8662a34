"""``ldfsam.heap.reuse_large_blocks``: large tensors reuse freed heap instead of faulting in fresh mmaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, torch
from ldfsam.heap import reuse_large_blocks
from ldfsam.model.tiny_vit import TinyViT, prepare_for_inference
tuned = reuse_large_blocks()
torch.manual_seed(0)
encoder = prepare_for_inference(TinyViT())  # LiteMedSAM's encoder: its first stage holds B×256×256×256 blocks
x = torch.rand(1, 3, 256, 256)
with torch.inference_mode():
    encoder(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        encoder(x)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    system = _probe(LDFSAM_MALLOC="system")
    tuned = _probe()
    assert not system["tuned"] and tuned["tuned"]
    # Two forward passes fault in hundreds of thousands of fresh 4 kB pages; reusing the heap needs a small fraction.
    assert system["faults"] > 100_000, system
    assert tuned["faults"] < system["faults"] / 5, (tuned, system)
