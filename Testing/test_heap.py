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
import json, resource, sys, torch
from ldfsam.heap import reuse_large_blocks
from ldfsam.model.tiny_vit import TinyViT
from ldfsam.model.tiny_vit_inference import prepare_for_inference
tuned = reuse_large_blocks()
torch.manual_seed(0)
# LiteMedSAM's encoder. Its plain path (NCHW, as under bf16 autocast or in training) holds B×256×256×256 blocks in
# its first stage; the fused float32 CPU path (channels_last) cuts everything into pieces below PIECE_BYTES.
encoder = prepare_for_inference(TinyViT(), channels_last=sys.argv[1] == "fused")
x = torch.rand(1, 3, 256, 256)
with torch.inference_mode():
    encoder(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        encoder(x)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(path: str = "plain", **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    system = _probe(LDFSAM_MALLOC="system")
    tuned = _probe()
    assert not system["tuned"] and tuned["tuned"]
    # Two forward passes fault in hundreds of thousands of fresh 4 kB pages; reusing the heap needs a small fraction.
    assert system["faults"] > 100_000, system
    assert tuned["faults"] < system["faults"] / 5, (tuned, system)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_fused_encoder_needs_no_heap_setting():
    """The float32 CPU path keeps every activation below glibc's mmap limit, so freed blocks are reused without the
    setting (and the process does not keep a large peak heap)."""
    from ldfsam.model.tiny_vit import _fused_ops

    if not _fused_ops():
        pytest.skip("no oneDNN fused kernels in this torch: the plain path runs")
    fused, plain = _probe("fused", LDFSAM_MALLOC="system"), _probe("plain", LDFSAM_MALLOC="system")
    assert not fused["tuned"] and fused["faults"] < plain["faults"] / 2, (fused, plain)


def test_long_lived_objects_pause_the_collector_and_are_frozen():
    """Objects made inside ``long_lived_objects`` (torch's and ultralytics' imports) are left out of every later
    collection; the collector's own state (on or off) is restored."""
    import gc

    from ldfsam.heap import long_lived_objects

    assert gc.isenabled()
    try:
        before = gc.get_freeze_count()
        with long_lived_objects():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(made)
        gc.disable()
        with long_lived_objects():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_command_line_freezes_before_exit_and_the_python_call_does_not():
    """``ldfsam`` (argv from the process) freezes everything as its last step, so the interpreter's exit skips its
    final collection; ``main([...])`` from Python (tests, scripts) leaves the collector alone."""
    probe = ("import gc, sys\nfrom ldfsam.cli import main\nsys.argv = ['ldfsam']\ncode = {}()\n"
             "print(code, gc.get_freeze_count())")
    for call, frozen in (("main", True), ("(lambda: main([]))", False)):
        out = subprocess.run([sys.executable, "-c", probe.format(call)], capture_output=True, text=True,
                             cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-2000:]
        code, count = out.stdout.strip().splitlines()[-1].split()
        assert code == "2"  # no command: the help, exit code 2
        assert (int(count) > 0) == frozen
