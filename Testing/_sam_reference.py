"""SAM's own definitions of windowing and relative positions (segment-anything ``image_encoder.py``): the
references the encoder's faster, equivalent computations are tested against."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ldfsam.model.image_encoder import get_rel_pos


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


def sam_med2d_adapter(x: torch.Tensor, w: dict) -> torch.Tensor:
    """SAM-Med2D's ``Adapter_Layer`` (its segment_anything/modeling/image_encoder.py) written from its formula on
    the tensors of its state dict ``w`` (channel.0/2, spatial.0/2, norm; default LayerNorm eps): B×H×W×C tokens,
    H and W even. The spatial branch sees the channel-gated input; the skip carries the input itself."""
    c = x.permute(0, 3, 1, 2)
    gate = torch.sigmoid(F.linear(F.relu(F.linear(c.mean((2, 3)), w["channel.0.weight"])), w["channel.2.weight"]))
    down = F.relu(F.conv2d(c * gate[:, :, None, None], w["spatial.0.weight"], stride=2, padding=1))
    up = F.relu(F.conv_transpose2d(down, w["spatial.2.weight"], stride=2, padding=1))
    out = (c + up).permute(0, 2, 3, 1)
    return F.layer_norm(out, out.shape[-1:], w["norm.weight"], w["norm.bias"], eps=1e-5)
