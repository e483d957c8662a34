"""The saliency head (SPD's anatomical prior): per-pixel likelihood of the target class from the image embedding.

A light head on the frozen encoder's image embedding (B×D×G×G; 256×64×64 for the lite preset's TinyViT), trained in
Phase 2 from the reference masks beside the mask decoder (``ldfsam.finetune.spd``). Prompted segmentation uses it to
check the user's clicks and to carry prompts across slices (``ldfsam.infer.prompt_validation``,
``ldfsam.infer.context_prompts``). The map is strongly bimodal once trained (SPD's analysis, and ours on phantoms:
docs/segmentation.md), so one threshold (``SaliencyConfig.threshold``) serves every case.

   embedding B×D×G×G -> 1×1 conv (D -> hidden) -> GELU -> 3×3 conv (hidden -> hidden) -> GELU -> 1×1 conv -> B×1×G×G

The first convolution is 1×1: the embedding already mixes a wide neighbourhood, and a 3×3 over 256 channels would
cost 4× the compute (75 k multiply-adds per embedding pixel instead of 17 k) for the head's whole training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SaliencyHead(nn.Module):
    """``forward(embedding B×D×G×G) -> logits B×1×G×G``; :meth:`probabilities` resizes to an S×S model image."""

    def __init__(self, in_channels: int = 256, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.out = nn.Conv2d(hidden, 1, kernel_size=1)
        self.act = nn.GELU()
        # Background dominates every slice: start from a low prior so early training is not spent on it.
        nn.init.constant_(self.out.bias, -2.0)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(embedding.to(self.conv1.weight.dtype)))
        return self.out(self.act(self.conv2(x)))

    def logits_at(self, embedding: torch.Tensor, size: int) -> torch.Tensor:
        """Logits B×1×size×size (bilinear from the embedding grid), for losses against S×S reference masks."""
        return F.interpolate(self(embedding), size=(size, size), mode="bilinear", align_corners=False)
