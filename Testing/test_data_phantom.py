"""The procedural CBCT phantom: determinism, anatomy, FDI labels, teeth-slice fraction, speed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ldfsam.data.phantom import make_phantom, teeth_slice_fraction, tooth_voxel_counts, write_phantom_dataset

ALL_FDI = {q * 10 + p for q in (1, 2, 3, 4) for p in range(1, 9)}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 128, 128), spacing=0.25, seed=7)


def test_deterministic_for_a_seed():
    a_img, a_lab = make_phantom((24, 64, 64), seed=5)
    b_img, b_lab = make_phantom((24, 64, 64), seed=5)
    c_img, _ = make_phantom((24, 64, 64), seed=6)
    assert np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(b_img))
    assert np.array_equal(sitk.GetArrayViewFromImage(a_lab), sitk.GetArrayViewFromImage(b_lab))
    assert not np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(c_img))


def test_geometry_and_types(phantom):
    image, labels = phantom
    assert image.GetSize() == (128, 128, 64) == labels.GetSize()
    assert image.GetSpacing() == (0.25, 0.25, 0.25) == labels.GetSpacing()
    assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8


def test_fdi_labels_each_a_single_tooth(phantom):
    _, labels = phantom
    counts = tooth_voxel_counts(labels)
    assert set(counts) <= ALL_FDI
    # Every tooth but (some) third molars is present, in all four quadrants.
    assert ALL_FDI - {18, 28, 38, 48} <= set(counts)
    lab = sitk.GetArrayViewFromImage(labels)
    for fdi in counts:
        _, n = ndimage.label(lab == fdi, structure=np.ones((3, 3, 3)))
        assert n == 1, f"tooth {fdi} is in {n} pieces"
    # Upper teeth (quadrants 1, 2) sit above the lower ones (index z grows superiorly); quadrant 1 and 4 are
    # on the patient's right (low x, as in LPS).
    z_upper = np.nonzero(np.isin(lab, [11, 16, 21, 26]))[0].mean()
    z_lower = np.nonzero(np.isin(lab, [31, 36, 41, 46]))[0].mean()
    assert z_upper > z_lower
    assert np.nonzero(lab == 16)[2].mean() < np.nonzero(lab == 26)[2].mean()
    assert np.nonzero(lab == 46)[2].mean() < np.nonzero(lab == 36)[2].mean()
    # Incisors are anterior (low y) to molars.
    assert np.nonzero(lab == 11)[1].mean() < np.nonzero(lab == 16)[1].mean()


def test_tissues_ordered_like_cbct(phantom):
    image, labels = phantom
    img = sitk.GetArrayViewFromImage(image).astype(np.float32)
    lab = sitk.GetArrayViewFromImage(labels)
    teeth = lab > 0
    core = ndimage.binary_erosion(teeth, iterations=1)
    # Enamel (brightest tooth tissue) is brighter than the tooth's dentine, dentine than bone, bone than soft tissue.
    tooth_vals = img[core]
    assert np.percentile(tooth_vals, 95) > 2200  # enamel
    assert 1300 < np.median(tooth_vals) < 2200  # dentine dominates
    bone = (img > 500) & (img < 1400) & ~ndimage.binary_dilation(teeth, iterations=2)
    assert bone.sum() > 1000
    air = img < -800
    assert air.sum() > 0.1 * img.size  # outside the head
    assert img.max() > 4000  # metal fillings


def test_slices_without_teeth_and_fraction_control():
    for fraction in (0.4, 1.0, 0.5):
        _, labels = make_phantom((50, 64, 64), seed=1, teeth_fraction=fraction)
        measured = teeth_slice_fraction(labels)
        assert abs(measured - fraction) <= 1.0 / 50 + 1e-9, (fraction, measured)
    _, labels = make_phantom((50, 64, 64), seed=1, teeth_fraction=0.4)
    lab = sitk.GetArrayViewFromImage(labels)
    has = lab.reshape(50, -1).any(axis=1)
    assert not has[:10].any() and not has[-10:].any()  # empty slices above and below the tooth rows


def test_write_phantom_dataset(tmp_path):
    ids = write_phantom_dataset(tmp_path, cases=2, shape=(16, 48, 48))
    assert ids == ["phantom_000", "phantom_001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "phantom_000.nii.gz", "phantom_000_label.nii.gz", "phantom_001.nii.gz", "phantom_001_label.nii.gz"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="teeth_fraction"):
        make_phantom((16, 32, 32), teeth_fraction=0.0)
    with pytest.raises(ValueError, match="too small"):
        make_phantom((4, 32, 32))


@pytest.mark.slow
def test_scales_to_benchmark_size():
    # The benchmark volume (its time is measured by benchmarks/bench_data.py, not asserted here).
    image, labels = make_phantom((420, 650, 650), spacing=0.25, seed=0, teeth_fraction=0.4)
    assert image.GetSize() == labels.GetSize() == (650, 650, 420)
    assert abs(teeth_slice_fraction(labels) - 0.4) < 0.01
