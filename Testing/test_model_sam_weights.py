"""Official SAM checkpoints (1024-input layout) and SAM-Med2D's (256 input, adapters) load into the vit_b preset."""

from __future__ import annotations

import pytest
import torch

from ldfsam.errors import CheckpointError


def _vit_b_layout(image_size: int = 1024, adapters: tuple = ()) -> dict:
    """Names and shapes of segment-anything's ``build_sam_vit_b()`` state dict (the layout of sam_vit_b_01ec64.pth),
    written out from segment-anything's build_sam.py and modeling/*.py, not taken from LDFSAM's modules. At 256
    input with ``adapters`` (block numbers), SAM-Med2D's vit_b: the same names plus ``blocks.N.Adapter.*``."""
    g = image_size // 16
    d = 768
    shapes = {"image_encoder.patch_embed.proj.weight": (d, 3, 16, 16), "image_encoder.patch_embed.proj.bias": (d,),
              "image_encoder.pos_embed": (1, g, g, d)}
    for i in range(12):
        b = f"image_encoder.blocks.{i}."
        rel = 2 * g - 1 if i in (2, 5, 8, 11) else 2 * 14 - 1  # global attention, else 14×14 windows
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.rel_pos_h": (rel, 64),
                       b + "attn.rel_pos_w": (rel, 64), b + "attn.qkv.weight": (3 * d, d),
                       b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,), b + "norm2.weight": (d,),
                       b + "norm2.bias": (d,), b + "mlp.lin1.weight": (4 * d, d), b + "mlp.lin1.bias": (4 * d,),
                       b + "mlp.lin2.weight": (d, 4 * d), b + "mlp.lin2.bias": (d,)})
        if i in adapters:
            shapes.update({b + "Adapter.channel.0.weight": (d // 4, d), b + "Adapter.channel.2.weight": (d, d // 4),
                           b + "Adapter.spatial.0.weight": (d, d, 3, 3), b + "Adapter.spatial.2.weight": (d, d, 4, 4),
                           b + "Adapter.norm.weight": (d,), b + "Adapter.norm.bias": (d,)})
    shapes.update({"image_encoder.neck.0.weight": (256, d, 1, 1), "image_encoder.neck.1.weight": (256,),
                   "image_encoder.neck.1.bias": (256,), "image_encoder.neck.2.weight": (256, 256, 3, 3),
                   "image_encoder.neck.3.weight": (256,), "image_encoder.neck.3.bias": (256,)})
    p = "prompt_encoder."
    shapes[p + "pe_layer.positional_encoding_gaussian_matrix"] = (2, 128)
    for i in range(4):
        shapes[f"{p}point_embeddings.{i}.weight"] = (1, 256)
    shapes.update({p + "not_a_point_embed.weight": (1, 256), p + "no_mask_embed.weight": (1, 256),
                   p + "mask_downscaling.0.weight": (4, 1, 2, 2), p + "mask_downscaling.0.bias": (4,),
                   p + "mask_downscaling.1.weight": (4,), p + "mask_downscaling.1.bias": (4,),
                   p + "mask_downscaling.3.weight": (16, 4, 2, 2), p + "mask_downscaling.3.bias": (16,),
                   p + "mask_downscaling.4.weight": (16,), p + "mask_downscaling.4.bias": (16,),
                   p + "mask_downscaling.6.weight": (256, 16, 1, 1), p + "mask_downscaling.6.bias": (256,)})

    def attention(prefix: str, inner: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            shapes[f"{prefix}.{proj}.weight"] = (inner, 256)
            shapes[f"{prefix}.{proj}.bias"] = (inner,)
        shapes[f"{prefix}.out_proj.weight"] = (256, inner)
        shapes[f"{prefix}.out_proj.bias"] = (256,)

    t = "mask_decoder.transformer."
    for i in range(2):
        layer = f"{t}layers.{i}"
        attention(f"{layer}.self_attn", 256)
        attention(f"{layer}.cross_attn_token_to_image", 128)  # downsample_rate 2
        attention(f"{layer}.cross_attn_image_to_token", 128)
        for n in range(1, 5):
            shapes[f"{layer}.norm{n}.weight"] = shapes[f"{layer}.norm{n}.bias"] = (256,)
        shapes.update({f"{layer}.mlp.lin1.weight": (2048, 256), f"{layer}.mlp.lin1.bias": (2048,),
                       f"{layer}.mlp.lin2.weight": (256, 2048), f"{layer}.mlp.lin2.bias": (256,)})
    attention(f"{t}final_attn_token_to_image", 128)
    shapes[f"{t}norm_final_attn.weight"] = shapes[f"{t}norm_final_attn.bias"] = (256,)
    m = "mask_decoder."
    shapes.update({m + "iou_token.weight": (1, 256), m + "mask_tokens.weight": (4, 256),
                   m + "output_upscaling.0.weight": (256, 64, 2, 2), m + "output_upscaling.0.bias": (64,),
                   m + "output_upscaling.1.weight": (64,), m + "output_upscaling.1.bias": (64,),
                   m + "output_upscaling.3.weight": (64, 32, 2, 2), m + "output_upscaling.3.bias": (32,)})
    for head, count, out in (("output_hypernetworks_mlps", 4, 32), (None, 1, 4)):
        for k in range(count):
            name = f"{m}{head}.{k}" if head else f"{m}iou_prediction_head"
            shapes.update({f"{name}.layers.0.weight": (256, 256), f"{name}.layers.0.bias": (256,),
                           f"{name}.layers.1.weight": (256, 256), f"{name}.layers.1.bias": (256,),
                           f"{name}.layers.2.weight": (out, 256), f"{name}.layers.2.bias": (out,)})
    return shapes


def _random_state(layout: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in layout.items()}


def _official_vit_b_state() -> dict:
    """A state dict laid out exactly like sam_vit_b_01ec64.pth (1024 input), with random values."""
    return _random_state(_vit_b_layout(), 5)


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


def test_sam_med2d_file_loads_its_adapters_and_reproduces_them(tmp_path, vit_b):
    from _sam_reference import sam_med2d_adapter

    from ldfsam.model.sam_weights import load_sam_weights

    # SAM-Med2D has an adapter in every block; three of them keep the file small (180 M parameters in twelve).
    with_adapters = (0, 3, 11)
    src = _random_state(_vit_b_layout(256, adapters=with_adapters), 7)
    path = tmp_path / "sam-med2d_b.pth"
    torch.save({"model": src}, path)  # SAM-Med2D saves {"model": state_dict, ...}
    report = load_sam_weights(vit_b, path)
    own = vit_b.state_dict()
    assert report["resized"] == []  # already laid out for 256 input
    # The adapters in the file were loaded; only the others kept their initialisation.
    assert {k.split(".")[2] for k in report["initialised"]} == {str(i) for i in range(12)} - {"0", "3", "11"}
    assert all(".adapter." in k for k in report["initialised"])
    for i in with_adapters:
        for part in ("channel.0.weight", "channel.2.weight", "spatial.0.weight", "spatial.2.weight", "norm.bias"):
            assert torch.equal(own[f"image_encoder.blocks.{i}.adapter.{part}"],
                               src[f"image_encoder.blocks.{i}.Adapter.{part}"])
    # Block 3's adapter computes SAM-Med2D's formula on SAM-Med2D's tensors.
    prefix = "image_encoder.blocks.3.Adapter."
    weights = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    x = torch.randn(1, 16, 16, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(vit_b.image_encoder.blocks[3].adapter(x), sam_med2d_adapter(x, weights),
                                   rtol=1e-4, atol=1e-4)
