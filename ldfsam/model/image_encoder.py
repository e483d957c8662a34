"""SAM's ViT image encoder at a configurable input size, with a SAM-Med2D-style adapter in every block.

Layout and parameter names follow segment-anything's ``ImageEncoderViT`` so official checkpoints load by name
(see ``sam_weights.py``); the adapter parameters (``blocks.N.adapter.*``) are new.

Shapes (S = image_size, G = S / patch_size, D = embed_dim):
image B×3×S×S -> patch tokens B×G×G×D -> blocks -> neck -> embedding B×out_chans×G×G.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock


class Adapter(nn.Module):
    """SAM-Med2D-style adapter: a channel gate, then a spatial down/up convolution with a skip, then LayerNorm.

    Channel path: GAP -> Linear(D, r·D) -> ReLU -> Linear(r·D, D) -> sigmoid, which re-weights the channels.
    Spatial path: 3×3 conv stride 2 -> ReLU -> 4×4 transposed conv stride 2 -> ReLU, added to the gated input.
    Both convolutions are full D×D, which is why an adapter costs ~15 M parameters per ViT-B block (see docs).
    Input and output are B×H×W×D (token layout of the ViT blocks).
    """

    def __init__(self, dim: int, mlp_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        x = x.permute(0, 3, 1, 2)
        gate = self.channel(x.mean(dim=(2, 3)))
        x = x * gate[:, :, None, None]
        # An odd grid comes back one larger from the stride-2 down/up pair: crop to the input size.
        x = x + self.spatial(x)[:, :, :h, :w]
        return self.norm(x.permute(0, 2, 3, 1))


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """B×H×W×C -> (B·nW)×ws×ws×C, zero-padding H and W up to multiples of ws (16×16 -> 28×28 for ws=14)."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw: Tuple[int, int],
                       hw: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis: q_size×k_size×C."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        # Only reached for a table that was not resized at load time; linear interpolation as in SAM.
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist,
                                mode="linear").reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def add_decomposed_rel_pos(attn: torch.Tensor, q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           q_size: Tuple[int, int], k_size: Tuple[int, int]) -> torch.Tensor:
    """Add MViTv2-style decomposed relative position terms to attention logits (B·heads)×(qh·qw)×(kh·kw)."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = attn.view(b, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(b, q_h * q_w, k_h * k_w)


def rel_pos_augment(q: torch.Tensor, k: torch.Tensor, scale: float, rel_pos_h: torch.Tensor,
                    rel_pos_w: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold the decomposed relative positions into the query-key product (queries and keys N×(H·W)×C).

    With q' = [scale·q, q·Rh[qh, :], q·Rw[qw, :]] and k' = [k, onehot(kh), onehot(kw)], q'·k' equals
    scale·q·k + rel_h[qh, kh] + rel_w[qw, kw], i.e. :func:`add_decomposed_rel_pos`, without its two broadcast
    additions over every (query, key) pair, which are the slowest part of windowed attention on a CPU.
    """
    h, w = size
    n, hw, dim = q.shape
    r_q = q.reshape(n, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h)).reshape(n, hw, h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w)).reshape(n, hw, w)
    q_aug = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
    index = torch.arange(hw, device=k.device)
    onehot = torch.zeros(hw, h + w, dtype=k.dtype, device=k.device)
    onehot[index, index // w] = 1
    onehot[index, h + index % w] = 1
    k_aug = torch.cat([k, onehot.expand(n, -1, -1)], dim=-1)
    return q_aug, k_aug


class Attention(nn.Module):
    """Multi-head self-attention over a B×H×W×C token grid with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, input_size: Tuple[int, int], use_rel_pos: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        return self.proj(self._attend(self.qkv(x), b, h, w))

    def _attend(self, qkv: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """Projected q/k/v B×H×W×3C -> attended values B×H×W×C (before the output projection)."""
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        if self.use_rel_pos:
            q, k = rel_pos_augment(q, k, self.scale, self.rel_pos_h, self.rel_pos_w, (h, w))
            attn = q @ k.transpose(-2, -1)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        return (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)

    def forward_windows(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Windowed attention over B×H×W×C, equal to SAM's pad -> partition -> attend -> unpartition -> crop.

        SAM zero-pads the normalised tokens to a multiple of the window (16×16 -> 28×28 for windows of 14, three
        times the tokens). A zero token's q, k and v are exactly the qkv bias, so the q/k/v projection runs on
        the real tokens only and the padding is filled with the bias; the padded keys and values (with their
        relative-position terms) still take part in the attention, so the result is the same. The output
        projection is per token, so it too runs on the real tokens only. This saves ~40% of a ViT-B encoder.
        """
        b, h, w, c = x.shape
        qkv = self.qkv(x)
        pad_h = (window_size - h % window_size) % window_size
        pad_w = (window_size - w % window_size) % window_size
        if pad_h or pad_w:
            full = self.qkv.bias.to(qkv.dtype).expand(b, h + pad_h, w + pad_w, 3 * c).clone()
            full[:, :h, :w] = qkv
            qkv = full
        windows, pad_hw = window_partition(qkv, window_size)
        out = self._attend(windows, windows.shape[0], window_size, window_size)
        return self.proj(window_unpartition(out, window_size, pad_hw, (h, w)))


class Block(nn.Module):
    """ViT block: windowed or global attention, then MLP; the adapter runs beside the MLP on the same input."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: Tuple[int, int],
                 adapter: bool, adapter_mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        self.adapter: Optional[Adapter] = Adapter(dim, adapter_mlp_ratio) if adapter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        x = self.attn.forward_windows(x, self.window_size) if self.window_size > 0 else self.attn(x)
        x = shortcut + x
        y = self.norm2(x)
        x = x + self.mlp(y)
        if self.adapter is not None:
            x = x + self.adapter(y)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: B×3×S×S -> B×G×G×D."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT encoder built for ``image_size`` input (256 by default, SAM-Med2D's resolution)."""

    def __init__(self, image_size: int = 256, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256,
                 window_size: int = 14, global_attn_indexes: Sequence[int] = (2, 5, 8, 11), adapters: bool = True,
                 adapter_mlp_ratio: float = 0.25) -> None:
        super().__init__()
        self.image_size = image_size
        grid = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, (grid, grid),
                  adapters, adapter_mlp_ratio)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×S×S normalised image -> B×out_chans×G×G embedding."""
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
