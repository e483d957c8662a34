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

Preparing it for inference (BatchNorm folded, fused CPU kernels, ``torch.compile``): ``tiny_vit_inference.py``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


def _fused_ops() -> bool:
    """Whether oneDNN's convolution and linear kernels with a fused activation / residual add are here (torch's
    own CPU kernels for inductor; absent from builds without mkldnn)."""
    mkldnn = torch.ops.mkldnn
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_convolution_pointwise")
                and hasattr(mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def _fusable(x: torch.Tensor, layer: nn.Module) -> bool:
    """True when ``layer`` (a folded convolution or a linear layer of a prepared encoder) and its input ``x`` can
    take the fused float32 CPU kernels: no autocast, no autograd. Elsewhere (bf16, CUDA, training) the plain
    modules run."""
    return (getattr(layer, "fused", False) and x.dtype == torch.float32 and x.device.type == "cpu"
            and layer.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not _cpu_autocast())


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


# Largest activation the fused path makes at once. glibc serves blocks up to 32 MB from its heap and reuses them
# once freed, but maps every larger one afresh, zero-filled page by page: on a small CPU those page faults cost as
# much as TinyViT's arithmetic (ldfsam.heap). So the fused path runs one image at a time, its first stage in
# bands of rows and its first MLPs in chunks of tokens, each piece below this size.
PIECE_BYTES = 24 << 20


def _conv(conv: nn.Conv2d, x: torch.Tensor, act: str = "none") -> torch.Tensor:
    """``conv(x)`` followed by GELU (``act="gelu"``) in one oneDNN pass."""
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                                   conv.dilation, conv.groups, act, [], "none")


def _conv_add_gelu(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """GELU(conv(x) + residual): the add in the convolution's pass, the GELU in place."""
    y = torch.ops.mkldnn._convolution_pointwise.binary(x, residual, conv.weight, conv.bias, conv.padding,
                                                       conv.stride, conv.dilation, conv.groups, "add", None, None,
                                                       [], None)
    return torch.ops.aten.gelu_(y)


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
        first, _, second = self.seq
        if _fusable(x, first):
            return _conv(second, _conv(first, x, "gelu"))
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
        if _fusable(x, self.conv1):
            # Each activation of this stage is B×256×S×S (64 MB per image at 256): the GELUs and the residual
            # add as separate passes cost more than the convolutions themselves on a memory-bound CPU.
            return _conv_add_gelu(self.conv3, _conv(self.conv2, _conv(self.conv1, x, "gelu"), "gelu"), x)
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
        if _fusable(x, self.conv1):
            return _conv(self.conv3, _conv(self.conv2, _conv(self.conv1, x, "gelu"), "gelu"))
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
        # On the CPU even inside a meta-device build: this buffer is not in any state dict, so a model file
        # loaded with assign=True would leave a meta tensor here.
        ys, xs = torch.meshgrid(torch.arange(window_size, device="cpu"), torch.arange(window_size, device="cpu"),
                                indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :]).abs() * window_size + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", index, persistent=False)
        # heads×w²×w² bias, gathered once by prepare_for_inference (frozen weights only).
        self.register_buffer("frozen_bias", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        if self.frozen_bias is not None and _fusable(x, self.qkv):
            # The fused float32 kernel: scale, bias, softmax and the product with v without the w²×w² scores in
            # memory. Its bias must come expanded to every window (a stride-0 view): given heads×w²×w², torch
            # takes a slower path.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.frozen_bias.expand(n, -1, -1, -1))
            return self.proj(out.transpose(1, 2).reshape(n, length, -1))
        bias = self.frozen_bias if self.frozen_bias is not None else self.attention_biases[:, self.attention_bias_idxs]
        # Written out rather than scaled_dot_product_attention: with a float mask on the CPU that takes its
        # generic path, which spends more time checking the mask than attending (a quarter of the stage).
        attn = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-2, -1)) + bias.to(q.dtype)
        out = torch.matmul(attn.softmax(dim=-1), v)
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
        if _fusable(x, self.fc1):
            pieces = -(-x.numel() * self.fc1.out_features * 4 // (x.shape[-1] * PIECE_BYTES))
            if pieces > 1 and x.dim() > 2 and x.shape[1] > 1:  # B×H×W×C tokens, cut along H
                return torch.cat([self._fused(part) for part in x.chunk(pieces, dim=1)], dim=1)
            return self._fused(x)
        return self.fc2(self.act(self.fc1(self.norm(x))))

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.ops.mkldnn._linear_pointwise(self.norm(x), self.fc1.weight, self.fc1.bias, "gelu", [],
                                                    "none")
        return self.fc2(hidden)


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
        x = x.permute(0, 3, 1, 2)  # channels_last NCHW: a view
        x = (_conv(self.local_conv, x) if _fusable(x, self.local_conv) else self.local_conv(x)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then a merge. B×C×H×W -> B×C'×H'×W'."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fusable(x, self.downsample.conv1) and x.shape[0] == 1 and self.downsample.conv2.stride[0] == 2:
            return self._banded(x)
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)

    def _banded(self, x: torch.Tensor) -> torch.Tensor:
        """The stage in bands of rows (one image): each band with a halo of rows above and below, enough for its
        3×3 depthwise convolutions, so that its activations stay below PIECE_BYTES and the output equals the whole
        image's. Each depthwise convolution pads with zeros where a band stops inside the image, which spoils one
        more row on that side; the halo (even, for the stride-2 merge) holds all the spoilt rows."""
        _, _, h, w = x.shape
        hidden = max(self.blocks[0].conv1.out_channels if len(self.blocks) else 0, self.downsample.conv1.out_channels)
        halo = len(self.blocks) + 2 - len(self.blocks) % 2  # > blocks (the merge reads one row more), even
        rows = max(2, PIECE_BYTES // (hidden * w * 4) - 2 * halo) // 2 * 2
        if h % 2 or rows >= h:
            for block in self.blocks:
                x = block(x)
            return self.downsample(x)
        out = None
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            g0, g1 = max(r0 - halo, 0), min(r1 + halo, h)
            y = x[:, :, g0:g1]
            for block in self.blocks:
                y = block(y)
            y = self.downsample(y)
            if out is None:
                out = y.new_empty((1, y.shape[1], h // 2, y.shape[3])).contiguous(memory_format=torch.channels_last)
            k0 = (r0 - g0) // 2
            out[:, :, r0 // 2:r1 // 2] = y[:, :, k0:k0 + (r1 - r0) // 2]
        return out


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then a merge unless last. B×C×H×W -> B×C'×H'×W'."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int, stride: int, last: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = None if last else PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks_and_merge(x)[1]

    def blocks_and_merge(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the blocks' output B×C×H×W, the stage's output): the first feeds the half-resolution student's neck."""
        x = x.permute(0, 2, 3, 1)  # tokens as B×H×W×C: a view, no copy
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x, (x if self.downsample is None else self.downsample(x))


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
        self.channels_last = False  # set by prepare_for_inference
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[0] > 1 and _fusable(x, self.patch_embed.seq[0]):
            # One image at a time keeps every activation small (see PIECE_BYTES); the matmuls stay large.
            return torch.cat([self._forward(x[i:i + 1]) for i in range(x.shape[0])])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
