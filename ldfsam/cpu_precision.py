"""Which precision runs the SAM encoder faster on this CPU: measured once per machine, not guessed from a flag.

A CPU that reports AVX512-BF16 does not always run bf16 faster: on some Xeons torch's bf16 matmul reaches half the
fp32 rate. So ``--precision auto`` on a CPU with native bf16 measures both precisions once (a short matmul and a
short pass through the encoder with a single block, under the same autocast and bf16 encoder weights
as :class:`ldfsam.infer.predictor.SlicePredictor`) and keeps bf16 only when it is faster over both and its masks
agree with fp32's. The answer is cached in ``$LDFSAM_HOME/cpu_precision.json``, keyed by the CPU (its name,
family, model and stepping), the instruction set torch and oneDNN are allowed to use on it, and the torch version
(delete the file to measure again). A CPU without native bf16 is never measured: there bf16 is emulated and always
much slower.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

import torch

from .atomic import write_text_atomic
from .errors import OutputError
from .home import ldfsam_home

CACHE_NAME = "cpu_precision.json"
# Environment variables that restrict (or widen) the instructions torch's kernels, oneDNN and MKL use. The same CPU
# limited to AVX512 without its bf16 instructions (ONEDNN_MAX_CPU_ISA=AVX512_CORE) runs bf16 matmuls at a fifth
# of the unrestricted rate and below fp32's, so a choice measured without the limit must not be read back with it.
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
           "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE", "MKL_CBWR")
# Share of mask pixels on which bf16 must agree with fp32. The probe's masks come from random weights, so every
# pixel is as close to the threshold as a real mask's boundary pixels: bf16's rounding (about 0.5% of the
# embedding) flips about 1% of them, while broken bf16 kernels disagree on about half.
MIN_MASK_AGREEMENT = 0.97


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels here (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_identity(cpuinfo: Optional[str] = None) -> str:
    """The CPU's name with its family, model and stepping where ``/proc/cpuinfo`` gives them (``cpuinfo``: that
    file's text). Virtual machines often report one name for several generations ("AMD EPYC" for a Zen 3 without
    native bf16 and a Zen 4 with it), and a choice measured on one must not be reused on the other."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return cpu_name()
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes the CPU
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    name = fields.get("model name") or cpu_name()
    parts = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(parts)})" if parts else name


@dataclass(frozen=True)
class Probe:
    """The sizes of a measurement. The defaults (one block of width 512 at 256 input, without the adapter, whose
    small convolutions at batch 1 time weight handling rather than arithmetic; a 1024³ matmul; best of two) take
    under a second on two idle cores; tests use smaller ones."""

    matmul_size: int = 1024
    embed_dim: int = 512
    num_heads: int = 8
    image_size: int = 256
    adapter: bool = False
    repeats: int = 2


@dataclass(frozen=True)
class Measurement:
    """One measurement of both precisions on this CPU (rates in GFLOP/s, encoder passes in seconds, best of the
    repeats) and the share of mask pixels on which bf16 agrees with fp32."""

    cpu: str
    torch: str
    threads: int
    fp32_matmul_gflops: float
    bf16_matmul_gflops: float
    fp32_encoder_s: float
    bf16_encoder_s: float
    mask_agreement: float
    load_avg: Optional[float] = None  # the 1-minute load average when measured: timings on a busy machine are rough

    @property
    def bf16_speedup(self) -> float:
        """How much faster bf16 ran: the geometric mean of its matmul and encoder speed-ups. Taking both means one
        timing disturbed by other work on a shared machine does not decide alone."""
        matmul = self.bf16_matmul_gflops / self.fp32_matmul_gflops
        encoder = self.fp32_encoder_s / self.bf16_encoder_s
        return math.sqrt(matmul * encoder)

    @property
    def choice(self) -> str:
        """"bf16" when it ran faster and its masks agree with fp32's, else "fp32"."""
        if self.mask_agreement >= MIN_MASK_AGREEMENT and self.bf16_speedup > 1.0:
            return "bf16"
        return "fp32"


def _matmul_seconds(n: int, repeats: int, generator: torch.Generator) -> Dict[str, float]:
    """Best time of an n×n×n product in each precision, the two interleaved."""
    a, b = torch.randn(2, n, n, generator=generator)
    operands = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for step in range(repeats + 1):  # the first product of each builds oneDNN's kernel: not timed
        for name, (x, y) in operands.items():
            t = time.perf_counter()
            x @ y
            if step:
                best[name] = min(best[name], time.perf_counter() - t)
    return best


def measure(probe: Probe = Probe()) -> Measurement:
    """Time a matmul and an encoder pass in fp32 and in bf16 (interleaved, so a load that comes and goes on a
    shared machine hits both) and compare their masks: a fixed random read-out of the embedding, thresholded at 0,
    as SAM's mask head is a dot product with the embedding."""
    from .model.image_encoder import ImageEncoderViT

    generator = torch.Generator().manual_seed(0)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the encoder's initialisation; the caller's random stream is restored below
    try:
        fp32 = ImageEncoderViT(image_size=probe.image_size, embed_dim=probe.embed_dim, depth=1,
                               num_heads=probe.num_heads, window_size=14, global_attn_indexes=(),
                               adapters=probe.adapter).eval()
    finally:
        torch.random.set_rng_state(state)
    encoders = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    image = torch.rand(1, 3, probe.image_size, probe.image_size, generator=generator)
    readout = torch.randn(fp32.neck[0].out_channels, generator=generator)
    times: Dict[str, float] = {"fp32": float("inf"), "bf16": float("inf")}
    masks: Dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for step in range(probe.repeats + 1):  # the first pass of each builds oneDNN's kernels: not timed
            for name, encoder in encoders.items():
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    embedding = encoder(image)
                if step:
                    times[name] = min(times[name], time.perf_counter() - t)
                masks[name] = torch.einsum("bchw,c->bhw", embedding.float(), readout) > 0
    gflop = 2.0 * probe.matmul_size**3 / 1e9
    matmul = _matmul_seconds(probe.matmul_size, probe.repeats, generator)
    agreement = (masks["fp32"] == masks["bf16"]).float().mean().item()
    return Measurement(
        cpu=cpu_name(), torch=torch.__version__, threads=torch.get_num_threads(),
        fp32_matmul_gflops=gflop / matmul["fp32"], bf16_matmul_gflops=gflop / matmul["bf16"],
        fp32_encoder_s=times["fp32"], bf16_encoder_s=times["bf16"], mask_agreement=agreement,
        load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)


def cache_path() -> Path:
    return ldfsam_home() / CACHE_NAME


def instruction_set() -> str:
    """What torch's kernels may use here (its CPU capability: "AVX512", "AVX2", ...) and every ISA-limiting
    variable set in the environment, e.g. "AVX2 ONEDNN_MAX_CPU_ISA=AVX2"."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    limits = [f"{name}={os.environ[name]}" for name in ISA_ENV if os.environ.get(name)]
    return " ".join([capability, *limits])


def cache_key() -> str:
    return f"{cpu_identity()} | {instruction_set()} | torch {torch.__version__}"


def _read_cache(path: Path) -> Dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no cache yet, or a damaged one: measure again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def measured_precision(probe: Probe = Probe(), refresh: bool = False) -> Measurement:
    """This machine's measurement from the cache, or measured now and cached (``refresh`` measures anyway). A
    home folder that cannot be written only costs a measurement per process."""
    path, key = cache_path(), cache_key()
    entries = _read_cache(path)
    if not refresh and key in entries:
        try:
            return Measurement(**entries[key])
        except TypeError:  # an entry of another layout
            pass
    result = measure(probe)
    entries[key] = asdict(result)
    try:
        write_text_atomic(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except (OSError, OutputError):  # atomic writes report an unwritable place as OutputError
        pass
    return result


def auto_cpu_precision() -> str:
    """``--precision auto`` on the CPU: "fp32" without native bf16, else the measured choice (cached)."""
    if not cpu_supports_bf16():
        return "fp32"
    return measured_precision().choice


def cached_measurement() -> Optional[Measurement]:
    """The cached measurement of this machine, if there is one (for reports; never measures)."""
    entry = _read_cache(cache_path()).get(cache_key())
    try:
        return None if entry is None else Measurement(**entry)
    except TypeError:
        return None
