"""The mask decoder's sub-pixel upscaling (MaskDecoder.upscaled_masks) is SAM's convolution path, exactly."""

from __future__ import annotations

import pytest
import torch

from ldfsam.model.mask_decoder import MaskDecoder


def _by_convolutions(decoder: MaskDecoder, src: torch.Tensor, h: int, w: int, hyper_in: torch.Tensor):
    """SAM's own formulation: transposed convolutions on the image, then the hypernetwork product."""
    n, _, d = src.shape
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(n, d, h, w))
    _, c, hh, ww = upscaled.shape
    return (hyper_in @ upscaled.view(n, c, hh * ww)).view(n, -1, hh, ww)


@pytest.mark.parametrize("h,w,masks", [(8, 8, 1), (6, 10, 4)])
def test_upscaled_masks_equal_the_convolutions_forward_and_backward(h, w, masks):
    torch.manual_seed(0)
    decoder = MaskDecoder(num_classes=masks, transformer_dim=64)
    with torch.no_grad():  # non-trivial norm parameters and biases, so a misplaced one would show
        for p in decoder.output_upscaling.parameters():
            p.add_(0.3 * torch.randn_like(p))
    src = torch.randn(3, h * w, 64, requires_grad=True)
    hyper_in = torch.randn(3, masks, 8, requires_grad=True)
    params = [src, hyper_in, *decoder.output_upscaling.parameters()]

    ref = _by_convolutions(decoder, src, h, w, hyper_in)
    out = decoder.upscaled_masks(src, h, w, hyper_in)
    assert out.shape == ref.shape == (3, masks, 4 * h, 4 * w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    weights = torch.randn_like(ref)  # a loss that weighs every output pixel differently
    grads_ref = torch.autograd.grad((ref * weights).sum(), params)
    grads = torch.autograd.grad((out * weights).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_decoder_forward_uses_the_same_masks_as_sam():
    """The whole decoder with SAM's multimask layout: every mask equals the convolution path's."""
    torch.manual_seed(1)
    decoder = MaskDecoder(num_classes=1, transformer_dim=32, num_heads=4, mlp_dim=64, num_multimask_outputs=3).eval()
    emb, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    tokens, dense = torch.randn(2, 2, 32), torch.randn(2, 32, 4, 4)
    masks, _ = decoder.predict_all(emb, pe, tokens, dense)

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    all_tokens = torch.cat([output_tokens.unsqueeze(0).expand(2, -1, -1), tokens], dim=1)
    hs, src = decoder.transformer(emb + dense, pe.expand(2, -1, -1, -1), all_tokens)
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(4)], dim=1)
    torch.testing.assert_close(masks, _by_convolutions(decoder, src, 4, 4, hyper_in), rtol=1e-5, atol=1e-5)
