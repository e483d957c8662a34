"""TinyViT made an inference-only network: every BatchNorm folded into its convolution, channels_last, oneDNN's
fused float32 CPU kernels marked where torch has them (``tiny_vit.py`` runs them), and ``torch.compile`` with an
eager fallback."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from .tiny_vit import ConvBN, Mlp, TinyViT, WindowAttention, _fused_ops


def _fold_batchnorm(block: ConvBN) -> nn.Conv2d:
    """One convolution with bias equal to conv followed by BatchNorm in eval mode (running statistics)."""
    conv, bn = block.c, block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


def freeze_attention_biases(encoder: nn.Module) -> None:
    """Gather every window attention's bias table into the per-offset matrix once (again after new weights)."""
    for module in encoder.modules():
        if isinstance(module, WindowAttention):
            module.frozen_bias = module.attention_biases[:, module.attention_bias_idxs].detach().clone()


@torch.no_grad()
def prepare_for_inference(encoder: TinyViT, channels_last: bool = True, fused: Optional[bool] = None) -> TinyViT:
    """Make ``encoder`` (in place) an inference-only network with the same outputs up to float rounding:
    eval mode, every BatchNorm folded into its convolution, weights and activations channels_last.

    ``fused``: mark it for oneDNN's fused float32 CPU kernels (channels_last only); None: wherever torch has them.
    False keeps the plain modules (benchmarks compare the two).
    Its state dict no longer matches LiteMedSAM's names (no ``bn``), so load the weights before calling this.
    Calling it again on a prepared encoder does nothing.
    """
    if getattr(encoder, "prepared", False):
        return encoder
    encoder.eval()
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                setattr(parent, name, _fold_batchnorm(child))
    freeze_attention_biases(encoder)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
        if _fused_ops() if fused is None else fused:
            # float32 on the CPU: activations and residual adds inside oneDNN's convolution/linear passes
            for module in encoder.modules():
                if isinstance(module, nn.Conv2d) and module.bias is not None:
                    module.fused = True
                elif isinstance(module, Mlp):
                    module.fc1.fused = True
                elif isinstance(module, WindowAttention):
                    module.qkv.fused = True
    encoder.channels_last = channels_last
    encoder.prepared = True
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


class CompiledEncoder:
    """``torch.compile`` of an encoder (inductor, weights frozen) that falls back to the eager module, for good,
    when compiling or running the compiled code fails (no C++ compiler, an unsupported platform...).
    ``fallback_reason`` then says why. Each new input shape compiles once more (tens of seconds on a CPU)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.fallback_reason: Optional[str] = None
        self._compiled = None
        try:
            # freezing: the weights are constants, so inductor may pre-pack them for oneDNN and fold them.
            self._compiled = torch.compile(module, dynamic=False, options={"freezing": True})
        except Exception as e:  # torch.compile unavailable here
            self.fallback_reason = f"{type(e).__name__}: {e}"[:300]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as e:  # compilation happens on the first call of each shape
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                self._compiled = None
                warnings.warn(f"torch.compile failed, running the encoder eagerly ({self.fallback_reason})",
                              RuntimeWarning, stacklevel=2)
        return self.module(x)


def compile_encoder(encoder: nn.Module) -> CompiledEncoder:
    """The encoder behind ``torch.compile`` with a clean eager fallback (see :class:`CompiledEncoder`)."""
    return CompiledEncoder(encoder)
