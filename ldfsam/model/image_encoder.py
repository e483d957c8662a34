"""SAM's ViT image encoder at a configurable input size, with a SAM-Med2D-style adapter in every block.

Layout and parameter names follow segment-anything's ``ImageEncoderViT`` so official checkpoints load by name
(see ``sam_weights.py``); the adapter parameters (``blocks.N.adapter.*``) are new.

Shapes (S = image_size, G = S / patch_size, D = embed_dim):
image B×3×S×S -> patch tokens B×G×G×D -> blocks -> neck -> embedding B×out_chans×G×G.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock


class Adapter(nn.Module):
    """SAM-Med2D's adapter (``Adapter_Layer``): a channel gate feeding a spatial down/up convolution, a skip from
    the un-gated input, then LayerNorm: ``norm(x + spatial(gate(x) · x))``.

    Channel gate: GAP -> Linear(D, r·D) -> ReLU -> Linear(r·D, D) -> sigmoid, which re-weights the channels.
    Spatial path: 3×3 conv stride 2 -> ReLU -> 4×4 transposed conv stride 2 -> ReLU.
    Parameter names match SAM-Med2D's (``channel.0/2``, ``spatial.0/2``, ``norm``; its blocks call the module
    ``Adapter``, see ``sam_weights.py``). Both convolutions are full D×D, which is why an adapter costs ~15 M
    parameters per ViT-B block (see docs). Input and output are B×H×W×D (token layout of the ViT blocks).
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
        # An odd grid comes back one larger from the stride-2 down/up pair: crop to the input size (SAM-Med2D's
        # grids are even, where the crop changes nothing).
        x = x + self.spatial(x * gate[:, :, None, None])[:, :, :h, :w]
        return self.norm(x.permute(0, 2, 3, 1))


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


def rel_pos_augment(q: torch.Tensor, k: torch.Tensor, scale: float, rel_pos_h: torch.Tensor,
                    rel_pos_w: torch.Tensor, size: Tuple[int, int],
                    q_size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold the decomposed relative positions into the query-key product: keys N×(H·W)×C on the grid ``size``,
    queries N×(h·w)×C on its top-left ``q_size`` corner (default: the whole grid).

    With q' = [scale·q, q·Rh[qh, :], q·Rw[qw, :]] and k' = [k, onehot(kh), onehot(kw)], q'·k' equals
    scale·q·k + rel_h[qh, kh] + rel_w[qw, kw], i.e. SAM's ``add_decomposed_rel_pos``, without its two
    broadcast additions over every (query, key) pair, which are the slowest part of windowed attention on a CPU.
    """
    h, w = size
    qh, qw = q_size or size
    n, _, dim = q.shape
    r_q = q.reshape(n, qh, qw, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h)[:qh]).reshape(n, qh * qw, h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w)[:qw]).reshape(n, qh * qw, w)
    q_aug = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
    index = torch.arange(h * w, device=k.device)
    onehot = torch.zeros(h * w, h + w, dtype=k.dtype, device=k.device)
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
        c = qkv.shape[-1] // 3
        return self._attend_corner(qkv[..., :c], qkv[..., c:], (h, w))

    def _attend_corner(self, q: torch.Tensor, kv: torch.Tensor, q_size: Tuple[int, int]) -> torch.Tensor:
        """Queries B×h×w×C, the top-left corner of the key/value grid B×H×W×2C -> attended values B×h×w×C."""
        b, kh, kw, c2 = kv.shape
        qh, qw = q_size
        heads, hd = self.num_heads, c2 // 2 // self.num_heads
        q = q.reshape(b, qh * qw, heads, hd).transpose(1, 2).reshape(b * heads, qh * qw, hd)
        k, v = kv.reshape(b, kh * kw, 2, heads, hd).permute(2, 0, 3, 1, 4).reshape(2, b * heads, kh * kw, hd)
        if self.use_rel_pos:
            q, k = rel_pos_augment(q, k, self.scale, self.rel_pos_h, self.rel_pos_w, (kh, kw), (qh, qw))
            attn = q @ k.transpose(-2, -1)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        return (attn @ v).view(b, heads, qh, qw, hd).permute(0, 2, 3, 1, 4).reshape(b, qh, qw, heads * hd)

    def forward_windows(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Windowed attention over B×H×W×C, equal to SAM's pad -> partition -> attend -> unpartition -> crop.

        SAM zero-pads the normalised tokens to a multiple of the window (16×16 -> 28×28 for windows of 14, three
        times the tokens) and attends over every padded window. Here only the real tokens are worked on: a zero
        token's k and v are exactly the qkv bias, so the projection runs on the real tokens and the padded keys
        and values are filled with the bias (they, with their relative positions, still take part in the
        attention); and since the padded queries' outputs are cropped away, each window attends for its real
        queries only (the top-left corner of the window: 196 + 28 + 28 + 4 of 4×196 for a 16×16 grid). The output
        projection is per token, so it too runs on the real tokens. Same result; a third of SAM's attention work.
        """
        b, h, w, c = x.shape
        ws = window_size
        qkv = self.qkv(x)
        out = qkv.new_empty(b, h, w, c)
        # Windows of the same real size (full ones; the cut ones along the bottom and right) attend together.
        groups: Dict[Tuple[int, int], list] = {}
        for r0 in range(0, h, ws):
            for c0 in range(0, w, ws):
                groups.setdefault((min(ws, h - r0), min(ws, w - c0)), []).append((r0, c0))
        for (rh, rw), corners in groups.items():
            parts = [qkv[:, r0:r0 + rh, c0:c0 + rw] for r0, c0 in corners]
            real = torch.cat(parts) if len(parts) > 1 else parts[0]  # (n·B)×rh×rw×3C
            kv = real[..., c:]
            if (rh, rw) != (ws, ws):
                full = self.qkv.bias[c:].to(qkv.dtype).expand(kv.shape[0], ws, ws, 2 * c).clone()
                full[:, :rh, :rw] = kv
                kv = full
            attended = self._attend_corner(real[..., :c], kv, (rh, rw))
            for i, (r0, c0) in enumerate(corners):
                out[:, r0:r0 + rh, c0:c0 + rw] = attended[i * b:(i + 1) * b]
        return self.proj(out)


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
