"""The ViT image encoder against straightforward reference computations (a safety net for speed work)."""

from __future__ import annotations

import torch
from _sam_reference import add_decomposed_rel_pos, sam_med2d_adapter, window_partition, window_unpartition

from ldfsam.model.image_encoder import Adapter, Attention, Block, ImageEncoderViT


def test_window_partition_pads_16_to_28_and_round_trips():
    x = torch.randn(2, 16, 16, 8)
    windows, pad_hw = window_partition(x, 14)
    assert pad_hw == (28, 28) and windows.shape == (2 * 4, 14, 14, 8)
    # Window (row 0, col 1) of image 1 starts at column 14 and is zero beyond column 15.
    assert torch.equal(windows[5, :, :2], x[1, :14, 14:16])
    assert torch.all(windows[5, :, 2:] == 0)
    assert torch.equal(window_unpartition(windows, 14, pad_hw, (16, 16)), x)


def test_decomposed_rel_pos_matches_its_definition():
    torch.manual_seed(0)
    h = w = 5
    dim = 4
    q = torch.randn(2, h * w, dim)
    rel_h, rel_w = torch.randn(2 * h - 1, dim), torch.randn(2 * w - 1, dim)
    out = add_decomposed_rel_pos(torch.zeros(2, h * w, h * w), q, rel_h, rel_w, (h, w), (h, w))
    ref = torch.zeros_like(out)
    for i in range(h):
        for j in range(w):
            for m in range(h):
                for n in range(w):
                    qv = q[:, i * w + j]
                    term_h = (qv * rel_h[i - m + h - 1]).sum(-1)
                    term_w = (qv * rel_w[j - n + w - 1]).sum(-1)
                    ref[:, i * w + j, m * w + n] = term_h + term_w
    torch.testing.assert_close(out, ref)


def test_windowed_block_attention_equals_per_window_reference():
    """SAM's windowed attention: zero-pad the 16×16 grid to 28×28, attend inside each 14×14 window, crop."""
    torch.manual_seed(0)
    block = Block(32, 2, 4.0, window_size=14, input_size=(16, 16), adapter=False, adapter_mlp_ratio=0.25).eval()
    with torch.no_grad():
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
    x = torch.randn(1, 16, 16, 32)
    with torch.no_grad():
        out = block(x)
        y = torch.nn.functional.pad(block.norm1(x), (0, 0, 0, 12, 0, 12))
        attended = torch.zeros_like(y)
        for r in (0, 14):
            for c in (0, 14):
                attended[:, r:r + 14, c:c + 14] = block.attn(y[:, r:r + 14, c:c + 14])
        h = x + attended[:, :16, :16]
        ref = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_global_attention_equals_plain_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(16, 2, (4, 4), use_rel_pos=False).eval()
    x = torch.randn(3, 4, 4, 16)
    with torch.no_grad():
        out = attn(x)
        q, k, v = attn.qkv(x.view(3, 16, 16)).chunk(3, dim=-1)
        heads = [torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 8**0.5, -1) @ v[..., s]
                 for s in (slice(0, 8), slice(8, 16))]
        ref = attn.proj(torch.cat(heads, -1)).view(3, 4, 4, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_adapter_handles_odd_grids_and_runs_beside_the_mlp():
    adapter = Adapter(24)
    assert adapter(torch.randn(2, 7, 9, 24)).shape == (2, 7, 9, 24)
    block = Block(24, 2, 4.0, window_size=0, input_size=(6, 6), adapter=True, adapter_mlp_ratio=0.25).eval()
    x = torch.randn(1, 6, 6, 24)
    with torch.no_grad():
        h = x + block.attn(block.norm1(x))
        y = block.norm2(h)
        torch.testing.assert_close(block(x), h + block.mlp(y) + block.adapter(y))


def test_adapter_is_sam_med2ds_formula():
    torch.manual_seed(3)
    adapter = Adapter(32).eval()
    with torch.no_grad():
        adapter.norm.weight.normal_(1, 0.2)
        adapter.norm.bias.normal_(0, 0.2)
    w = {k: v.detach() for k, v in adapter.state_dict().items()}
    x = torch.randn(2, 16, 16, 32)
    with torch.no_grad():
        out = adapter(x)
        torch.testing.assert_close(out, sam_med2d_adapter(x, w), rtol=1e-5, atol=1e-5)
        # The formula this replaced (the skip from the gated input) is far from it: the test tells them apart.
        c = x.permute(0, 3, 1, 2)
        gated = c * adapter.channel(c.mean((2, 3)))[:, :, None, None]
        old = adapter.norm((gated + adapter.spatial(gated)).permute(0, 2, 3, 1))
        assert (out - old).abs().max() > 0.1


def test_encoder_output_grid_follows_input_size():
    enc = ImageEncoderViT(image_size=320, embed_dim=32, depth=2, num_heads=2, out_chans=16, window_size=14,
                          global_attn_indexes=(1,))
    assert enc.pos_embed.shape == (1, 20, 20, 32)
    assert enc.blocks[1].attn.rel_pos_h.shape == (39, 16) and enc.blocks[0].attn.rel_pos_h.shape == (27, 16)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 320, 320)).shape == (1, 16, 20, 20)
