"""Mixed precision: fp16/bf16 autocast on CUDA, bf16 autocast on CPUs with native bf16 instructions."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import ContextManager

import torch


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (where bf16 matmuls run natively)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(requested: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA with bf16 (else fp16), bf16 on a bf16 CPU (else fp32); explicit choices are checked."""
    from ..errors import ConfigError

    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return requested


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 on CUDA (bf16 needs none); None otherwise."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
