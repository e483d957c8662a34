"""segment_image returns SPD's saliency map: the model's saliency head on the embeddings the decoder used, on the
input grid (issue 23 item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from _infer_helpers import save_tiny_model, tiny_model_config

from ldfsam.errors import ConfigError
from ldfsam.infer import SegmentOptions, load_model, segment_image

SHAPE = (8, 48, 40)  # z, y, x: not square, so a transposed map would not fit


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cfg = tiny_model_config()
    cfg.saliency.enabled = True
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model") / "head.safetensors", cfg, seed=3))


def _volume() -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 50, SHAPE).astype(np.float32)
    array[:, 14:30, 10:22] += 1500  # a bright block, so the map varies across the slice
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def _head_map(loaded, image: sitk.Image, z: int) -> np.ndarray:
    """The head's probabilities on slice z, computed here from the slice itself."""
    from ldfsam.data.preprocess import normalize, to_model_input
    from ldfsam.infer.pipeline import plan_slices

    plan = plan_slices(image, loaded.preprocess, "native")
    model = loaded.model.eval()
    with torch.inference_mode():
        sam = to_model_input(torch.from_numpy(normalize(plan.slices[z:z + 1], plan.window)), loaded.preprocess.sam_size)
        logits = model.saliency_head(model.encode_image(sam)).float()
        logits = F.interpolate(logits, size=SHAPE[1:], mode="bilinear", align_corners=False)
    return torch.sigmoid(logits[0, 0]).numpy()


def test_segment_image_returns_the_saliency_heads_map_on_the_input_grid(loaded):
    image = _volume()
    keep = np.array([True, True, False, True, True, True, True, True])  # slice 2: "no teeth", not encoded
    options = SegmentOptions(precision="fp32", slice_spacing="native", saliency=True)
    sal = segment_image(image, loaded, device="cpu", options=options, keep_slices=keep).saliency
    assert sal is not None and sal.shape == SHAPE and sal.dtype == np.float32
    for z in (0, 5):
        np.testing.assert_allclose(sal[z], _head_map(loaded, image, z), atol=2e-4)
    # The head's map, not a constant: the bright block stands out from the rest of the slice.
    assert abs(float(sal[5, 14:30, 10:22].mean()) - float(sal[5, :, 30:].mean())) > 1e-3
    assert not sal[2].any()  # a slice the encoder did not run on has no map


@pytest.mark.slow  # three segmentations and three encodings: a minute on a loaded 2-core machine
def test_the_map_between_model_slices_is_interpolated_and_only_given_when_asked(loaded):
    image = _volume()
    # Model slices every 2 mm: 0, 2, 4, 5, 7 (first and last included); 1 is filled between 0 and 2.
    options = SegmentOptions(precision="fp32", slice_spacing=2.0, saliency=True)
    result = segment_image(image, loaded, device="cpu", options=options, keep_slices=np.ones(8, bool))
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    mid = 1 / (1 + np.exp(-(logit(_head_map(loaded, image, 0)) + logit(_head_map(loaded, image, 2))) / 2))
    np.testing.assert_allclose(result.saliency[1], mid, atol=5e-4)
    plain = segment_image(image, loaded, device="cpu", options=SegmentOptions(precision="fp32", slice_spacing=2.0),
                          keep_slices=np.ones(8, bool))
    assert plain.saliency is None
    np.testing.assert_array_equal(plain.labels, result.labels)


def test_a_model_without_a_saliency_head_is_refused(loaded):
    head, loaded.model.saliency_head = loaded.model.saliency_head, None
    try:
        with pytest.raises(ConfigError, match="saliency.*no saliency head"):
            segment_image(_volume(), loaded, device="cpu", options=SegmentOptions(precision="fp32", saliency=True))
    finally:
        loaded.model.saliency_head = head
