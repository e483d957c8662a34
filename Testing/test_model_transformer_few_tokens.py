"""The two-way transformer's cross-attentions with re-associated products (few tokens against many image tokens) are
SAM's attention: the same outputs and the same gradients for every input and parameter (float64, to rounding)."""

from __future__ import annotations

import pytest
import torch

from ldfsam.model.transformer import Attention, TwoWayTransformer


def _grads(module, inputs, out):
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    # A key bias never changes an attention's output: SAM's products give it a zero gradient, the re-associated
    # ones none at all.
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}
    grads.update({f"input{i}": x.grad.clone() for i, x in enumerate(inputs)})
    module.zero_grad(set_to_none=True)
    for x in inputs:
        x.grad = None
    return grads


@pytest.mark.parametrize("direction", ["tokens_to_image", "image_to_tokens"])
def test_re_associated_cross_attention_equals_sams(direction):
    torch.manual_seed(0)
    att = Attention(256, 8, downsample_rate=2).double()
    tokens = torch.randn(3, 9, 256, dtype=torch.float64, requires_grad=True)
    image = torch.randn(3, 100, 256, dtype=torch.float64, requires_grad=True)
    assert att._few(9) and not att._few(16)  # 8 heads × 9 tokens < 128: the re-associated products
    args = (tokens, image, image) if direction == "tokens_to_image" else (image, tokens, tokens)
    fast = getattr(att, direction)(*args)
    fast_grads = _grads(att, [tokens, image], fast)
    reference = att(*args)
    reference_grads = _grads(att, [tokens, image], reference)
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, atol=1e-12, rtol=1e-10)
    for name, g in reference_grads.items():
        assert torch.allclose(fast_grads[name], g, atol=1e-11, rtol=1e-9), name


def test_the_transformer_takes_the_re_associated_path_and_equals_sams(monkeypatch):
    torch.manual_seed(0)
    net = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=512).double()
    image = torch.randn(2, 256, 8, 8, dtype=torch.float64, requires_grad=True)
    pe = torch.randn(1, 256, 8, 8, dtype=torch.float64).expand(2, -1, -1, -1)  # as the mask decoder passes it
    tokens = torch.randn(2, 7, 256, dtype=torch.float64, requires_grad=True)
    calls = []
    forward = Attention.forward
    monkeypatch.setattr(Attention, "forward", lambda self, q, k, v: calls.append(q.shape[1]) or forward(self, q, k, v))
    hs, src = net(image, pe, tokens)
    # Only the token self-attentions (7 queries) ran SAM's products; no cross-attention projected the 64 pixels.
    assert calls == [7, 7]
    fast_grads = _grads(net, [image, tokens], hs.sum() + (src * src).mean())
    monkeypatch.setattr(Attention, "_few", lambda self, t: False)  # SAM's products everywhere
    hs_ref, src_ref = net(image, pe.contiguous(), tokens)
    reference_grads = _grads(net, [image, tokens], hs_ref.sum() + (src_ref * src_ref).mean())
    assert torch.allclose(hs, hs_ref, atol=1e-10) and torch.allclose(src, src_ref, atol=1e-10)
    for name, g in reference_grads.items():
        assert torch.allclose(fast_grads[name], g, atol=1e-9, rtol=1e-8), name
