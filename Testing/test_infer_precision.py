"""bfloat16 must not change the result: masks agree with float32 at Dice >= 0.99 on the demo phantom."""

from __future__ import annotations

import numpy as np
import pytest

from ldfsam.cpu_precision import cpu_supports_bf16
from ldfsam.infer import segment_volume
from ldfsam.models.registry import RESOURCES

PHANTOM = RESOURCES / "demo" / "phantom.nii.gz"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX): emulated bf16 "
                    "takes minutes here, and --precision auto never picks it on such a CPU")
@pytest.mark.slow  # minutes with the bundled lite model on 2 cores; CI runs it (-m slow)
def test_bf16_matches_fp32_on_the_phantom():
    # The bundled demo model (real trained weights), loaded anew for each precision.
    fp32 = segment_volume(PHANTOM, None, precision="fp32")
    bf16 = segment_volume(PHANTOM, None, precision="bf16")
    assert fp32.labels.sum() > 1000  # a real segmentation, not two empty masks
    assert fp32.slices_with_teeth == bf16.slices_with_teeth
    assert _dice(fp32.labels, bf16.labels) >= 0.99


@pytest.mark.parametrize("grid, window", [((16, 16), 14), ((14, 14), 7), ((16, 20), 7), ((10, 12), 14)])
def test_unpadded_windows_equal_sams_padded_windows(grid, window):
    """The encoder's windowed attention works on the real tokens only (no projections of padded tokens, no
    padded queries; see image_encoder.py). On a block with random relative positions and qkv bias, the output
    equals SAM's pad-and-partition definition, for grids that pad (several window shapes at once) or do not."""
    import torch
    from _sam_reference import window_partition, window_unpartition

    from ldfsam.model.image_encoder import Block

    torch.manual_seed(0)
    block = Block(96, 4, 4.0, window_size=window, input_size=grid, adapter=True, adapter_mlp_ratio=0.25).eval()
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0, 0.5)
        block.attn.rel_pos_w.normal_(0, 0.5)
        block.attn.qkv.bias.normal_(0, 0.5)
        x = torch.randn(3, *grid, 96)
        y = block.norm1(x)
        windows, pad_hw = window_partition(y, window)  # zero-padded, as SAM does
        h = x + window_unpartition(block.attn(windows), window, pad_hw, grid)
        z = block.norm2(h)
        ref = h + block.mlp(z) + block.adapter(z)
        torch.testing.assert_close(block(x), ref, rtol=0, atol=1e-5)


def test_encoder_dtype_converts_only_the_encoder(tmp_path):
    import torch
    from _infer_helpers import save_tiny_model

    from ldfsam.checkpoint import load_checkpoint, load_state, save_state

    # Stored in float16, as the bundled demo model is: every floating weight must come back as float32 (bf16 for
    # the encoder when asked), with the stored values.
    path = save_tiny_model(tmp_path / "m.safetensors")
    stored, document = load_state(path)
    path = tmp_path / "half.safetensors"
    save_state(path, {k: v.half() if v.is_floating_point() else v for k, v in stored.items()}, document)
    ref = {k: v.half().float() if v.is_floating_point() else v for k, v in stored.items()}
    fp32 = load_checkpoint(path, encoder_dtype=torch.float32).model.state_dict()
    bf16 = load_checkpoint(path, encoder_dtype=torch.bfloat16).model.state_dict()
    assert fp32.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.equal(fp32[k], v), k
        if k.startswith("image_encoder.") and v.is_floating_point():
            assert bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], v.to(torch.bfloat16)), k
        else:
            assert torch.equal(bf16[k], v), k
