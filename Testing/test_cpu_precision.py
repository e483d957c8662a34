"""--precision auto on the CPU: measured once per machine on small real workloads, cached under LDFSAM_HOME."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ldfsam import cpu_precision as cp

# Real measurements, small enough to take a fraction of a second.
TINY = cp.Probe(matmul_size=128, embed_dim=64, num_heads=2, image_size=64, repeats=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_measurement_is_real_and_bf16_masks_agree():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    m = cp.measure(TINY)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left alone
    assert m.cpu == cp.cpu_name() and m.torch == torch.__version__ and m.threads == torch.get_num_threads()
    assert m.fp32_matmul_gflops > 0 and m.bf16_matmul_gflops > 0
    assert 0 < m.fp32_encoder_s < 60 and 0 < m.bf16_encoder_s < 60
    # bf16 rounding flips only pixels at the threshold: far above the bar (broken kernels agree on about half).
    assert cp.MIN_MASK_AGREEMENT <= m.mask_agreement <= 1.0


def test_choice_is_the_faster_precision_whose_masks_agree():
    m = cp.measure(TINY)
    # The real figures, arranged so that bf16 is the faster (or the slower) precision on both workloads.
    mm_lo, mm_hi = sorted((m.fp32_matmul_gflops, m.bf16_matmul_gflops))
    enc_lo, enc_hi = sorted((m.fp32_encoder_s, m.bf16_encoder_s))
    mm_hi, enc_hi = mm_hi * 1.01 + 1e-6, enc_hi * 1.01 + 1e-6
    bf16_fast = dataclasses.replace(m, bf16_matmul_gflops=mm_hi, fp32_matmul_gflops=mm_lo, bf16_encoder_s=enc_lo,
                                    fp32_encoder_s=enc_hi)
    bf16_slow = dataclasses.replace(m, bf16_matmul_gflops=mm_lo, fp32_matmul_gflops=mm_hi, bf16_encoder_s=enc_hi,
                                    fp32_encoder_s=enc_lo)
    assert bf16_fast.choice == "bf16" and bf16_fast.bf16_speedup > 1
    assert bf16_slow.choice == "fp32"  # the AVX512-BF16 Xeon whose bf16 matmul runs at half the fp32 rate
    # Faster but wrong is never chosen.
    assert dataclasses.replace(bf16_fast, mask_agreement=cp.MIN_MASK_AGREEMENT - 0.01).choice == "fp32"
    # One timing disturbed by other work does not decide alone: twice as fast on the matmul outweighs an encoder
    # pass 1.5 times slower, and the other way round.
    slow_pass = dataclasses.replace(m, bf16_matmul_gflops=2 * m.fp32_matmul_gflops,
                                    bf16_encoder_s=1.5 * m.fp32_encoder_s)
    assert slow_pass.bf16_speedup == pytest.approx((2 / 1.5) ** 0.5) and slow_pass.choice == "bf16"
    slow_matmul = dataclasses.replace(m, bf16_matmul_gflops=m.fp32_matmul_gflops / 2,
                                      bf16_encoder_s=m.fp32_encoder_s / 1.5)
    assert slow_matmul.choice == "fp32"


def test_measured_once_then_read_from_the_cache(home):
    path = home / cp.CACHE_NAME
    assert not path.exists()
    first = cp.measured_precision(TINY)
    entries = json.loads(path.read_text())
    key = cp.cache_key()
    assert cp.cpu_name() in key and cp.cpu_identity() in key and torch.__version__ in key
    assert entries == {key: dataclasses.asdict(first)}
    stamp = path.stat().st_mtime_ns
    # A hit returns the stored figures (a new measurement would time differently) and writes nothing.
    assert cp.measured_precision(TINY) == first
    assert cp.cached_measurement() == first
    assert path.stat().st_mtime_ns == stamp
    again = cp.measured_precision(TINY, refresh=True)
    assert again != first
    assert json.loads(path.read_text()) == {key: dataclasses.asdict(again)}
    assert not [p for p in home.iterdir() if p.name != cp.CACHE_NAME]  # no temporary files left behind


def test_other_machines_entries_are_kept_and_a_damaged_cache_is_rewritten(home):
    home.mkdir(parents=True)
    path = home / cp.CACHE_NAME
    other = {"Some Xeon | torch 2.0.0": {"cpu": "Some Xeon", "torch": "2.0.0", "threads": 8,
                                         "fp32_matmul_gflops": 330.0, "bf16_matmul_gflops": 167.0,
                                         "fp32_encoder_s": 0.1, "bf16_encoder_s": 0.2, "mask_agreement": 1.0,
                                         "load_avg": 0.5}}
    path.write_text(json.dumps(other))
    mine = cp.measured_precision(TINY)
    assert json.loads(path.read_text()) == {**other, cp.cache_key(): dataclasses.asdict(mine)}
    path.write_text('{"truncated')
    assert cp.cached_measurement() is None
    mine = cp.measured_precision(TINY)
    assert json.loads(path.read_text()) == {cp.cache_key(): dataclasses.asdict(mine)}


def test_unwritable_home_still_answers(tmp_path, monkeypatch):
    blocker = tmp_path / "home"
    blocker.write_text("a file where the home folder should be")
    monkeypatch.setenv("LDFSAM_HOME", str(blocker))
    assert cp.measured_precision(TINY).choice in ("bf16", "fp32")
    assert blocker.read_text() == "a file where the home folder should be"


def test_auto_uses_the_cached_choice(home):
    from ldfsam.finetune.precision import resolve_precision as training_precision
    from ldfsam.infer.predictor import resolve_precision as inference_precision

    cpu = torch.device("cpu")
    if not cp.cpu_supports_bf16():
        # Emulated bf16 is never measured, never chosen.
        assert cp.auto_cpu_precision() == "fp32" and not (home / cp.CACHE_NAME).exists()
        return
    measured = cp.measured_precision(TINY)
    for choice in ("bf16", "fp32"):
        # The stored decision is what inference and training use, without measuring again.
        faster, slower = (0.001, 0.002) if choice == "bf16" else (0.002, 0.001)
        entry = dataclasses.replace(measured, bf16_encoder_s=faster, fp32_encoder_s=slower,
                                    bf16_matmul_gflops=1 / faster, fp32_matmul_gflops=1 / slower)
        (home / cp.CACHE_NAME).write_text(json.dumps({cp.cache_key(): dataclasses.asdict(entry)}))
        assert cp.auto_cpu_precision() == choice
        assert inference_precision("auto", cpu) == (torch.bfloat16 if choice == "bf16" else torch.float32)
        assert training_precision("auto", cpu) == choice
        assert cp.cached_measurement() == entry  # read, not measured again and rewritten


@pytest.mark.skipif(not cp.cpu_supports_bf16(), reason="auto measures only where the CPU has native bf16")
def test_segment_measures_once_and_says_so(home, tmp_path):
    import io

    import numpy as np
    from _infer_helpers import save_tiny_model, write_image

    from ldfsam.infer import segment_volume
    from ldfsam.progress import Progress

    model = save_tiny_model(tmp_path / "m.safetensors")
    grey = np.random.default_rng(0).normal(0, 100, (24, 64, 64)).astype(np.int16)
    volume = write_image(tmp_path / "v.nii.gz", grey, spacing=(0.5, 0.5, 0.5))
    said = []
    for _ in range(2):
        stream = io.StringIO()
        segment_volume(volume, None, model=model, progress=Progress("json", stream))
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        said.append([e["message"] for e in events if e["kind"] == "log" and "faster on this CPU" in e["message"]])
        start = next(e for e in events if e["kind"] == "start")
        # The run used the measured choice, now in the cache.
        assert start["precision"] == {"bf16": "bfloat16", "fp32": "float32"}[cp.cached_measurement().choice]
    assert len(said[0]) == 1 and str(home) in said[0][0]  # the first run measured, and said where it keeps it
    assert said[1] == []  # the second read the cache


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
model\t\t: 99
"""


def test_one_cpu_name_for_two_generations_gives_two_cache_keys():
    # A virtual machine named "AMD EPYC" was a Zen 3 (no native bf16) one day and a Zen 4 (bf16 twice as fast)
    # the next: a choice measured on one must not be read back on the other.
    zen4 = ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n", 1)
    assert cp.cpu_identity(ZEN3) == "AMD EPYC (cpu family 25, model 1, stepping 1)"
    assert cp.cpu_identity(zen4) == "AMD EPYC (cpu family 25, model 17, stepping 1)"
    assert cp.cpu_identity("model name\t: Apple M2\n") == "Apple M2"


def test_a_choice_is_not_read_back_under_another_instruction_set(home, monkeypatch):
    import os
    import subprocess
    import sys

    # A bf16 choice measured with every instruction allowed, as this machine's real measurement...
    measured = dataclasses.replace(cp.measure(TINY), bf16_encoder_s=0.001, fp32_encoder_s=0.002,
                                   bf16_matmul_gflops=2000.0, fp32_matmul_gflops=1000.0)
    for name in cp.ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    home.mkdir(parents=True)
    (home / cp.CACHE_NAME).write_text(json.dumps({cp.cache_key(): dataclasses.asdict(measured)}))
    assert torch.backends.cpu.get_cpu_capability() in cp.cache_key()
    probe = ("from ldfsam import cpu_precision as cp; m = cp.cached_measurement(); "
             "print(cp.cache_key()); print('none' if m is None else m.choice)")
    # ...is read back by a process on the same CPU with the same instructions...
    same = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "LDFSAM_HOME": str(home)}).stdout.splitlines()
    assert same == [cp.cache_key(), "bf16"]
    # ...but not by one whose oneDNN may not use the bf16 instructions (bf16 matmuls there run below fp32's rate)
    # nor one whose torch kernels are held to AVX2: each measures for itself.
    for limit in ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {"ATEN_CPU_CAPABILITY": "avx2"}):
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                               env={**os.environ, "LDFSAM_HOME": str(home), **limit}).stdout.splitlines()
        assert other[0] != cp.cache_key() and other[1] == "none", (limit, other)
        assert "=".join(*limit.items()) in other[0]
