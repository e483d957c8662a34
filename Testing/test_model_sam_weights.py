"""Official SAM checkpoints (1024-input layout) load into the 256-input encoder of the vit_b preset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldfsam.errors import CheckpointError


def _official_vit_b_state() -> dict:
    """A state dict laid out exactly like sam_vit_b_01ec64.pth (1024 input), with random values."""
    from ldfsam.model.common import LayerNorm2d
    from ldfsam.model.image_encoder import ImageEncoderViT
    from ldfsam.model.mask_decoder import MLP, MaskDecoder

    g = torch.Generator().manual_seed(5)
    with torch.device("meta"):  # only the names and shapes are needed; values are drawn below
        encoder = ImageEncoderViT(image_size=1024, adapters=False)  # vit_b dims are the defaults
        decoder = MaskDecoder(num_classes=4)
        decoder.iou_prediction_head = MLP(256, 256, 4, 3)
        mask_downscaling = nn.Sequential(nn.Conv2d(1, 4, 2, 2), LayerNorm2d(4), nn.GELU(), nn.Conv2d(4, 16, 2, 2),
                                         LayerNorm2d(16), nn.GELU(), nn.Conv2d(16, 256, 1))
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    state.update({f"prompt_encoder.mask_downscaling.{k}": v for k, v in mask_downscaling.state_dict().items()})
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    for i in range(4):
        state[f"prompt_encoder.point_embeddings.{i}.weight"] = torch.zeros(1, 256)
    state["prompt_encoder.not_a_point_embed.weight"] = torch.zeros(1, 256)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 256)
    return {k: torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    state = _official_vit_b_state()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vit_b():
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    return build_model(model_config("vit_b", class_names=["upper", "lower", "other"]))


def test_official_layout_loads_into_256_encoder(official, vit_b):
    from ldfsam.model.sam_weights import load_sam_weights

    path, src = official
    assert src["image_encoder.pos_embed"].shape == (1, 64, 64, 768)
    assert src["image_encoder.blocks.2.attn.rel_pos_h"].shape == (127, 64)
    adapter_before = vit_b.state_dict()["image_encoder.blocks.0.adapter.spatial.0.weight"].clone()
    report = load_sam_weights(vit_b, path)
    own = vit_b.state_dict()
    # Resized: absolute positions 64×64 -> 16×16, global blocks' tables 127 -> 31 rows.
    assert own["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    for b in (2, 5, 8, 11):
        assert own[f"image_encoder.blocks.{b}.attn.rel_pos_h"].shape == (31, 64)
        assert own[f"image_encoder.blocks.{b}.attn.rel_pos_w"].shape == (31, 64)
    assert set(report["resized"]) == {"image_encoder.pos_embed"} | {
        f"image_encoder.blocks.{b}.attn.rel_pos_{a}" for b in (2, 5, 8, 11) for a in "hw"}
    lo, hi = src["image_encoder.pos_embed"].min(), src["image_encoder.pos_embed"].max()
    assert lo <= own["image_encoder.pos_embed"].min() and own["image_encoder.pos_embed"].max() <= hi
    # Not resized: equal to the source, bit for bit.
    for key in ("image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.7.attn.qkv.weight",
                "image_encoder.patch_embed.proj.weight", "image_encoder.neck.2.weight",
                "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight",
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.no_mask_embed.weight"):
        assert torch.equal(own[key], src[key]), key
    assert torch.equal(own["prompt_encoder.box_corner_embeddings.1.weight"],
                       src["prompt_encoder.point_embeddings.3.weight"])
    # Every class starts from SAM's single-mask output token and hypernetwork MLP.
    for c in range(3):
        assert torch.equal(own["mask_decoder.mask_tokens.weight"][c], src["mask_decoder.mask_tokens.weight"][0])
        assert torch.equal(own[f"mask_decoder.output_hypernetworks_mlps.{c}.layers.2.weight"],
                           src["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"])
    # Adapters keep their initialisation.
    assert torch.equal(own["image_encoder.blocks.0.adapter.spatial.0.weight"], adapter_before)
    assert all(".adapter." in k for k in report["initialised"])
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in report["skipped"]
    assert vit_b.cfg.sam.init_checkpoint == str(path)


def test_non_sam_file(tmp_path, vit_b):
    from ldfsam.model.sam_weights import load_sam_weights

    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint") as e:
        load_sam_weights(vit_b, other)
    assert str(other) in str(e.value)
    text = tmp_path / "sam_vit_b.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_sam_weights(vit_b, text)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(other.read_bytes()[: other.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is damaged"):
        load_sam_weights(vit_b, cut)

    import argparse

    pickled = tmp_path / "pickled.pth"
    torch.save({"obj": argparse.Namespace(a=1)}, pickled)  # needs arbitrary unpickling
    with pytest.raises(CheckpointError, match="readable as plain tensors"):
        load_sam_weights(vit_b, pickled)


def test_wrong_preset_file(tmp_path, vit_b):
    from ldfsam.model.sam_weights import load_sam_weights

    vit_l_like = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
                  "mask_decoder.mask_tokens.weight": torch.zeros(4, 256)}
    vit_l_like.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1024) for i in range(24)})
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(vit_l_like, path)
    with pytest.raises(CheckpointError, match="holds SAM vit_l, but the model is preset vit_b") as e:
        load_sam_weights(vit_b, path)
    assert str(path) in str(e.value)


def test_small_preset_has_no_official_weights(official):
    from _model_helpers import small_model

    from ldfsam.model.sam_weights import load_sam_weights

    with pytest.raises(CheckpointError, match="'small' preset has no official weights"):
        load_sam_weights(small_model(), official[0])
