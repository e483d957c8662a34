"""The label map lands on the input's exact grid: real head CTs, an oblique direction, a sagittal storage order."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from _infer_helpers import oblique_direction, save_tiny_model

from ldfsam.infer import segment_volume


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _headsq(data_dir) -> sitk.Image:
    """The real head CT, cropped to the slices around the teeth (z 40-63) to keep the test quick."""
    src = sitk.ReadImage(str(data_dir / "ct-headsq" / "headsq.nii.gz"))
    return src[:, :, 40:64]


def _run(path, out, model, **kw):
    n = sitk.ReadImage(str(path)).GetSize()[2]
    return segment_volume(path, out, model=model, keep_slices=np.ones(max(n, 512), bool), min_island_mm3=0, **kw)


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_oblique_head_ct_round_trip(data_dir, tmp_path, tiny_model, suffix):
    src = _headsq(data_dir)
    oblique = sitk.Image(src)
    oblique.SetDirection(oblique_direction(25.0, 12.0))
    oblique.SetOrigin((-101.5, 33.25, 7.125))
    inp = tmp_path / "oblique.nrrd"
    sitk.WriteImage(oblique, str(inp))
    straight = tmp_path / "straight.nii.gz"
    sitk.WriteImage(src, str(straight))

    r_oblique = _run(inp, tmp_path / f"out{suffix}", tiny_model)
    out = sitk.ReadImage(str(tmp_path / f"out{suffix}"))
    _assert_same_grid(out, sitk.ReadImage(str(inp)))
    labels = sitk.GetArrayFromImage(out)
    np.testing.assert_array_equal(labels, r_oblique.labels)
    # Slices are taken in index space, so the direction matrix changes the geometry, never the voxels' labels.
    r_straight = _run(straight, tmp_path / "straight_out.nii.gz", tiny_model)
    np.testing.assert_array_equal(r_straight.labels, r_oblique.labels)
    assert 0 < np.count_nonzero(labels) < labels.size  # a real, non-trivial mask went through the writers


def test_stanford_jaw_round_trip(data_dir, tmp_path, tiny_model):
    inp = data_dir / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz"
    src = sitk.ReadImage(str(inp))
    keep = np.zeros(src.GetSize()[2], bool)
    keep[20:28] = True  # within the tooth rows; the (untrained) prompt generator's choice is overridden
    r = segment_volume(inp, tmp_path / "jaw.nii.gz", model=tiny_model, keep_slices=keep, min_island_mm3=0)
    out = sitk.ReadImage(str(tmp_path / "jaw.nii.gz"))
    _assert_same_grid(out, src)
    arr = sitk.GetArrayFromImage(out)
    assert arr.shape == sitk.GetArrayViewFromImage(src).shape
    assert not arr[:20].any() and not arr[28:].any()
    np.testing.assert_array_equal(arr, r.labels)


def test_sagittally_stored_volume_is_segmented_in_axial_planes(data_dir, tmp_path, tiny_model):
    src = _headsq(data_dir)
    axial = sitk.GetArrayFromImage(src)  # (z, y, x)
    # The same voxels stored with index axes (i, j, k) = (S, P, L): the third index axis is left-right.
    sag = sitk.GetImageFromArray(np.ascontiguousarray(axial.transpose(2, 1, 0)))
    sx, sy, sz = src.GetSpacing()
    sag.SetSpacing((sz, sy, sx))
    sag.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    sag.SetOrigin(src.GetOrigin())
    inp = tmp_path / "sagittal.nrrd"
    sitk.WriteImage(sag, str(inp))
    sitk.WriteImage(src, str(tmp_path / "axial.nrrd"))

    r_sag = _run(inp, tmp_path / "sag_out.nrrd", tiny_model)
    r_ax = _run(tmp_path / "axial.nrrd", None, tiny_model)
    out = sitk.ReadImage(str(tmp_path / "sag_out.nrrd"))
    _assert_same_grid(out, sag)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), r_ax.labels.transpose(2, 1, 0))
    assert r_sag.labels.any()
