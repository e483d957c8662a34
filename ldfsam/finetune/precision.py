"""Mixed precision: fp16/bf16 autocast on CUDA, bf16 autocast on CPUs where it measured faster than fp32."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def resolve_precision(requested: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA with bf16 (else fp16); on the CPU the precision measured faster on this machine
    (``ldfsam.cpu_precision``: fp32 without native bf16). Explicit choices are checked."""
    from ..cpu_precision import auto_cpu_precision
    from ..errors import ConfigError

    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return auto_cpu_precision()
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
