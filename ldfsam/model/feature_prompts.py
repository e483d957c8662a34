"""The YOLO-based Dense–Sparse Feature Prompt encoder (paper section 3.2): Φmix, the DFP head and the SFP head.

P3/P4/P5 (strides 8/16/32 of the YOLO input) -> Φmix -> F_fused (stride 8, ``mix_channels``)
  -> Dense Feature Prompt  P_dense  B×D×G×G   (added to the SAM embedding: Z_cond = Z_img + α·P_dense, α init 0;
                                               with ``dense_norm="group"`` P_dense has unit RMS, so α is its
                                               strength against the embedding's: docs/training.md)
  -> Sparse Feature Prompt T_sparse B×K×D     (K extra prompt tokens for the mask decoder)
with D = the SAM prompt dimension (256) and G×G the SAM embedding grid (16×16 for a 256 input to the ViT, 64×64 to
LiteMedSAM's TinyViT).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class FeatureMix(nn.Module):
    """Φmix: concat(P3, up(P4), up(P5)) -> 1×1 conv (channel reduction) -> GELU -> 3×3 conv (spatial smoothing)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(sum(in_channels), out_channels, kernel_size=1)
        self.act = nn.GELU()
        self.smooth = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        p3 = features[0]
        size = p3.shape[-2:]
        # Bilinear up-sampling of the coarser levels to P3's grid (paper eq. 1).
        ups = [p3] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]]
        return self.smooth(self.act(self.reduce(torch.cat(ups, dim=1))))


class DenseFeaturePrompt(nn.Module):
    """Φdense: one 3×3 conv (mix -> D channels), then resampling to the SAM grid.

    The paper's conv has stride 2 (YOLO's stride 8 -> SAM's stride 16). That holds where P3 is at least twice the
    SAM grid (YOLO 640 or 256 against the ViT's 16×16 grid of a 256 input); where it is not (the lite preset:
    YOLO 512 gives a 64×64 P3, TinyViT's grid of a 256 input is 64×64, stride 4) the conv keeps stride 1. The map
    is then brought to the SAM grid: by adaptive average pooling when it is larger (an area average, so every
    YOLO cell contributes), by bilinear interpolation when it is smaller, and not at all when sizes match.

    ``norm="group"`` ends the head with a GroupNorm of one group (each map normalised over channels and positions
    together, so where the map is strong against where it is weak survives; per-channel affine): P_dense then has
    unit RMS whatever the YOLO features' scale, and α alone sets its strength. ``"none"``: the conv's raw output
    (models written before the option existed).
    """

    def __init__(self, in_channels: int, out_channels: int, grid: Tuple[int, int], stride: int = 2,
                 norm: str = "none") -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.down = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        if norm not in ("none", "group"):
            raise ValueError(f"dense_norm must be 'none' or 'group', not {norm!r}")
        self.norm = nn.GroupNorm(1, out_channels) if norm == "group" else None

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = self.down(fused)
        h, w = x.shape[-2:]
        if (h, w) != self.grid:
            if h >= self.grid[0] and w >= self.grid[1]:
                x = F.adaptive_avg_pool2d(x, self.grid)
            else:
                x = F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False)
        return x if self.norm is None else self.norm(x)


def dense_stride(yolo_size: int, grid: int) -> int:
    """2 (the paper's stride-8 -> stride-16 step) when YOLO's P3 is at least twice the SAM grid, else 1."""
    return 2 if yolo_size // 8 >= 2 * grid else 1


class SparseFeaturePrompt(nn.Module):
    """GAP(F_fused) -> MLP -> K tokens of D (paper eq. 3)."""

    def __init__(self, in_channels: int, hidden: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * token_dim))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.mlp(fused.mean(dim=(2, 3))).view(-1, self.num_tokens, self.token_dim)


class FeaturePromptEncoder(nn.Module):
    """Φmix plus whichever heads the prompt mode uses (``dense`` and/or ``sparse``), and the learnable α."""

    def __init__(self, in_channels: Sequence[int], mix_channels: int, token_dim: int, grid: Tuple[int, int],
                 dense: bool, sparse: bool, num_sparse_tokens: int = 4, sparse_hidden: int = 512,
                 alpha_init: float = 0.0, yolo_size: int = 640, dense_norm: str = "none") -> None:
        super().__init__()
        self.mix = FeatureMix(in_channels, mix_channels)
        stride = dense_stride(yolo_size, grid[0])
        self.dense = DenseFeaturePrompt(mix_channels, token_dim, grid, stride, dense_norm) if dense else None
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init))) if dense else None
        self.sparse = SparseFeaturePrompt(mix_channels, sparse_hidden, num_sparse_tokens, token_dim) if sparse else None
        self.token_dim = token_dim

    def forward(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(P3, P4, P5) -> (α·P_dense B×D×G×G or None, T_sparse B×K×D, with K = 0 without the sparse head)."""
        fused = self.mix(features)
        dense = self.alpha * self.dense(fused) if self.dense is not None else None
        if self.sparse is not None:
            tokens = self.sparse(fused)
        else:
            tokens = fused.new_zeros((fused.shape[0], 0, self.token_dim))
        return dense, tokens
