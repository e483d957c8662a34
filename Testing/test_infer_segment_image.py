"""One model, loaded once, segments volumes in memory (segment_image) exactly as segment_volume does from files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.errors import ConfigError, InputError
from ldfsam.infer import SegmentOptions, load_model, read_input, segment_image, segment_volume
from ldfsam.models.registry import RESOURCES

PHANTOM = RESOURCES / "demo" / "phantom.nii.gz"
TRUTH = RESOURCES / "demo" / "phantom_labels.nii.gz"


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))


@pytest.mark.slow  # minutes with the bundled lite model on 2 cores; CI runs it (-m slow)
def test_a_model_loaded_once_segments_two_volumes_as_segment_volume_does(tmp_path):
    loaded = load_model(None)  # the bundled demo model
    phantom = read_input(PHANTOM)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(TRUTH))) > 0
    # Two parts of the phantom's jaw (teeth on slices 14-57), each 20 slices: seconds of work.
    upper, lower = phantom[:, :, 16:36], phantom[:, :, 36:56]
    sitk.WriteImage(upper, str(tmp_path / "upper.nii.gz"))
    fp32 = SegmentOptions(precision="fp32")
    from_file = segment_volume(tmp_path / "upper.nii.gz", None, model=loaded, device="cpu", precision="fp32")
    in_memory = segment_image(read_input(tmp_path / "upper.nii.gz"), loaded, device="cpu", options=fp32,
                              name="upper")
    np.testing.assert_array_equal(in_memory.labels, from_file.labels)
    assert _dice(in_memory.labels > 0, truth[16:36]) > 0.8
    assert in_memory.timings["load"] == 0.0 and in_memory.outputs == {}
    # The second volume, with the same model object.
    second = segment_image(lower, loaded, device="cpu", options=fp32, name="lower")
    assert second.labels.shape == (20, 160, 160)
    assert _dice(second.labels > 0, truth[36:56]) > 0.8


def test_segment_image_checks_its_model_and_its_volume():
    with pytest.raises(ConfigError, match="give a loaded model"):
        segment_image(read_input(PHANTOM), "ldfsam-demo")
    tiny = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (3, 3, 3)).astype(np.float32))
    with pytest.raises(InputError, match="scan 7: is too small to hold a tooth"):
        segment_image(tiny, load_model(None), name="scan 7")
