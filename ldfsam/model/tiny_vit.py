"""TinyViT, LiteMedSAM's image encoder (MedSAM distilled into a 5.7 M-parameter convolution + window-attention net).

Parameter names follow LiteMedSAM's checkpoint, so its ``image_encoder.*`` tensors load with ``strict=True``
(``lite_weights.py`` reads the file). Layout for the LiteMedSAM sizes (S = image_size = 256):

    image B×3×S×S -> patch_embed (two 1×1 conv+BN, stride 1) B×64×S×S
    -> stage 0: 2 MBConv blocks at S×S, merge (stride 2) -> B×128×S/2×S/2
    -> stage 1: 2 attention blocks (7×7 windows), merge (stride 2) -> B×160×S/4×S/4
    -> stage 2: 6 attention blocks (14×14 windows), merge (stride 1) -> B×320×S/4×S/4
    -> stage 3: 2 attention blocks (7×7 windows) -> neck -> embedding B×256×S/4×S/4 (64×64 at 256).

LiteMedSAM differs from the published TinyViT in its stride-1 patch embedding (stage 0 runs at the full input
resolution, which is where most of its ~75 GFLOP per 256×256 image go) and its stride-1 last merge.

Input: LiteMedSAM feeds each image min-max scaled to [0, 1] per image, three channels, resized to S×S, with NO
ImageNet mean/std normalisation (its inference and training code only divide 8-bit values by 255). Give this
encoder that, not SAM's normalised pixels.

Other input sizes: nothing in the weights depends on S. The attention-bias tables belong to a window (one bias per
head and (|dy|, |dx|) offset inside a window), not to the image, and feature maps whose side is not a multiple of
the window are zero-padded on the bottom/right before windowing, as TinyViT does. So the same weights run at
S = 192 or 128, giving an S/4 × S/4 embedding (48×48, 32×32); the outputs are those of a network that never saw
such sizes in training, so their quality must be measured (``benchmarks/bench_encoder.py``). S must be a multiple
of 4.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class ConvBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (TinyViT's ``Conv2d_BN``; names ``c`` and ``bn``)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)


class PatchEmbed(nn.Module):
    """Two 1×1 conv+BN with GELU between: B×3×S×S -> B×D×S×S (no downsampling in LiteMedSAM)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELU. B×C×H×W -> B×C×H×W."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = ConvBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1×1 conv, 3×3 depthwise conv of the given stride, 1×1 conv (GELU after the first two).
    B×C×H×W -> B×C'×H/stride×W/stride."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Pre-norm multi-head attention inside one window of w×w tokens, with a learnt bias per head and offset.

    Tokens N×w²×C -> N×w²×C. The qkv projection is laid out per head as [q (d), k (d), v (d)], d = C / heads.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # One bias per head and per (|dy|, |dx|) offset between two tokens of a window; offset index |dy|·w + |dx|.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # On the CPU even inside a meta-device build (model files rebuild the network shapes-only): this index is
        # not stored in files, so it must be real.
        grid = torch.arange(window_size, device="cpu")
        ys, xs = torch.meshgrid(grid, grid, indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :]).abs() * window_size + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # heads×w²×w²
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, length, -1))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP with GELU: ...×C -> ...×C."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), 3×3 depthwise conv+BN, MLP (residual). B×H×W×C -> B×H×W×C."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        windows = x.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        out = self.attn(windows).view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return out[:, :h, :w] if pad_b or pad_r else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then a merge. B×C×H×W -> B×C'×H'×W'."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then a merge unless last. B×C×H×W -> B×C'×H'×W'."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int, stride: int, last: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = None if last else PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # tokens as B×H×W×C: a view, no copy
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM's encoder: image B×3×S×S in [0, 1] (per-image min-max, no mean/std) -> B×out_chans×S/4×S/4.

    The defaults are LiteMedSAM's sizes. ``merge_strides`` are the strides of the three merges between stages
    (LiteMedSAM: 2, 2, 1, so stages 2 and 3 share the S/4 grid).
    """

    def __init__(self, image_size: int = 256, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, merge_strides: Sequence[int] = (2, 2, 1),
                 out_chans: int = 256) -> None:
        super().__init__()
        stride = 1
        for s in merge_strides:
            stride *= s
        if image_size <= 0 or image_size % stride:
            raise ValueError(f"image_size: {image_size} is not a positive multiple of {stride}")
        self.image_size = image_size
        self.embedding_size = image_size // stride
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        n = len(depths)
        layers: list = [ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, embed_dims[1], merge_strides[0])]
        for i in range(1, n):
            last = i == n - 1
            layers.append(AttentionStage(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                         local_conv_size, embed_dims[min(i + 1, n - 1)],
                                         1 if last else merge_strides[i], last))
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image B×3×S×S -> embedding B×out_chans×S/4×S/4."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
