"""Volume I/O: real head CTs, every format's round trip on the input grid, DICOM series, and each bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.data.phantom import make_phantom
from ldfsam.data.volume import (
    label_on_image_grid,
    read_volume,
    same_grid,
    write_dicom_series,
    write_label_volume,
    write_volume,
)
from ldfsam.errors import InputError, LDFSAMError

FORMATS = [".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd"]


def _oblique():
    # A rotation about an arbitrary axis: no axis of the grid is aligned with the patient axes.
    a, b, c = np.radians([20.0, -10.0, 35.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).ravel()


@pytest.fixture(scope="module")
def oblique_case():
    return make_phantom((16, 32, 32), spacing=(0.3, 0.4, 0.5), origin=(10.123, -20.5, 33.3), direction=_oblique(),
                         seed=3)


def _arr(im):
    return sitk.GetArrayFromImage(im)


def test_real_head_cts_load_with_their_geometry(data_dir):
    headsq = read_volume(data_dir / "ct-headsq" / "headsq.nii.gz")
    assert headsq.GetSize() == (64, 64, 93)
    assert np.allclose(headsq.GetSpacing(), (3.2, 3.2, 1.5))
    assert headsq.GetNumberOfComponentsPerPixel() == 1
    jaw = read_volume(data_dir / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    assert jaw.GetSize() == (256, 256, 53)
    assert np.allclose(jaw.GetSpacing(), (1.0, 1.0, 2.0))
    a = sitk.GetArrayViewFromImage(jaw)
    assert a.shape == (53, 256, 256) and a.max() > 2000  # bone/enamel present


def test_real_label_map_reads_as_labels(data_dir):
    lab = read_volume(data_dir / "dentalsegmentator-labels" / "PostDentalSurgery_Segmentation.nii.gz", label=True)
    assert lab.GetSize() == (360, 360, 330)
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(lab))) == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("suffix", FORMATS)
def test_label_round_trip_on_oblique_grid(tmp_path, oblique_case, suffix):
    image, labels = oblique_case
    img_path = tmp_path / f"image{suffix}"
    write_volume(image, img_path)
    reread = read_volume(img_path)
    assert same_grid(reread, image)
    assert np.allclose(reread.GetDirection(), image.GetDirection(), atol=1e-6)
    out = tmp_path / f"labels{suffix}"
    write_label_volume(sitk.GetArrayFromImage(labels), reread, out)
    back = read_volume(out, label=True)
    assert back.GetSize() == image.GetSize()
    assert same_grid(back, reread)
    assert np.array_equal(_arr(back), _arr(labels))
    # Nothing but the outputs (and a MetaImage's data file) is left beside them.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_seg_nrrd_has_named_segments(tmp_path, oblique_case):
    import slicerio

    image, labels = oblique_case
    out = tmp_path / "teeth.seg.nrrd"
    write_label_volume(labels, image, out, segment_names={11: "tooth 11"})
    seg = slicerio.read_segmentation(str(out))
    by_value = {s["labelValue"]: s["name"] for s in seg["segments"]}
    assert by_value[11] == "tooth 11"
    assert set(by_value) == set(np.unique(_arr(labels))) - {0}


def test_dicom_series_read_and_label_round_trip(tmp_path, oblique_case):
    import locale

    before = locale.setlocale(locale.LC_ALL)
    image, labels = oblique_case
    folder = tmp_path / "dicom"
    write_dicom_series(image, folder)
    series = read_volume(folder)
    # GDCM sets the process locale to "C"; reading and writing put it back (text subprocess I/O stays UTF-8).
    assert locale.setlocale(locale.LC_ALL) == before
    assert same_grid(series, image)
    assert np.array_equal(_arr(series), _arr(image))
    out = tmp_path / "from_dicom.nii.gz"
    write_label_volume(_arr(labels), series, out)
    back = read_volume(out, label=True)
    assert same_grid(back, series) and np.array_equal(_arr(back), _arr(labels))


def test_refuses_to_overwrite_without_permission(tmp_path, oblique_case):
    image, labels = oblique_case
    out = tmp_path / "labels.nii.gz"
    write_label_volume(labels, image, out)
    before = out.read_bytes()
    with pytest.raises(LDFSAMError, match="exists already"):
        write_label_volume(np.zeros_like(_arr(labels)), image, out)
    assert out.read_bytes() == before
    write_label_volume(np.zeros_like(_arr(labels)), image, out, overwrite=True)
    assert _arr(read_volume(out, label=True)).max() == 0


def test_label_array_must_fit_the_input_grid(oblique_case, tmp_path):
    image, _ = oblique_case
    with pytest.raises(ValueError, match="shape"):
        write_label_volume(np.zeros((3, 4, 5), np.uint8), image, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


# -- bad input ---------------------------------------------------------------------------------------------------


def _write(path, array, spacing=None):
    im = sitk.GetImageFromArray(array)
    if spacing:
        im.SetSpacing(spacing)
    sitk.WriteImage(im, str(path))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as e:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(e.value)


def test_unreadable_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a volume" * 10)
    with pytest.raises(InputError, match="cannot be read as a NIfTI") as e:
        read_volume(garbage)
    assert str(garbage) in str(e.value)
    good = _write(tmp_path / "good.nii.gz", np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(InputError, match="truncated.nii.gz"):
        read_volume(truncated)
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_volume(empty)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "scan.png"
    p.write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(p)


def test_2d_and_4d_images_are_specific_errors(tmp_path):
    two = _write(tmp_path / "slice.nrrd", np.arange(64, dtype=np.int16).reshape(8, 8))
    with pytest.raises(InputError, match=r"is a 2D image \(8x8 pixels\); a 3D volume is expected"):
        read_volume(two)
    four = tmp_path / "series.nii.gz"
    im4 = sitk.JoinSeries([sitk.GetImageFromArray(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
                           for _ in range(3)])
    sitk.WriteImage(im4, str(four))
    with pytest.raises(InputError, match=r"is a 4D image .*a 3D volume is expected"):
        read_volume(four)


def test_vector_images_are_rejected(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8) + np.arange(3, dtype=np.uint8), isVector=True)
    p = tmp_path / "rgb.mha"
    sitk.WriteImage(rgb, str(p))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_volume(p)


def test_constant_nan_and_inf_volumes(tmp_path):
    const = _write(tmp_path / "const.nii.gz", np.full((4, 5, 6), 7, np.int16))
    with pytest.raises(InputError, match="is constant"):
        read_volume(const)
    nan = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 voxels that are NaN or infinite") as e:
        read_volume(_write(tmp_path / "nan.nrrd", nan))
    assert "nan.nrrd" in str(e.value)
    inf = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    inf[0, 0, :2] = np.inf
    with pytest.raises(InputError, match="2 voxels that are NaN or infinite"):
        read_volume(_write(tmp_path / "inf.mha", inf))


def test_label_maps_may_be_empty_but_not_fractional_or_negative(tmp_path):
    assert read_volume(_write(tmp_path / "zero.nii.gz", np.zeros((4, 5, 6), np.uint8)), label=True)
    frac = np.zeros((4, 5, 6), np.float32)
    frac[0, 0, 0] = 1.5
    with pytest.raises(InputError, match="fractional"):
        read_volume(_write(tmp_path / "frac.nii.gz", frac), label=True)
    neg = np.zeros((4, 5, 6), np.int16)
    neg[0, 0, 0] = -1
    with pytest.raises(InputError, match="negative"):
        read_volume(_write(tmp_path / "neg.nii.gz", neg), label=True)
    whole = np.zeros((4, 5, 6), np.float32)
    whole[1, 1, 1] = 3.0
    assert read_volume(_write(tmp_path / "whole.nii.gz", whole), label=True).GetPixelID() == sitk.sitkUInt8


def test_empty_dicom_folder(tmp_path):
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "notdicom")


def test_grid_mismatch_and_cropped_segmentation(tmp_path):
    image, labels = make_phantom((16, 32, 32), spacing=0.5, seed=1)
    other = sitk.Image(labels)
    other.SetSpacing((0.6, 0.5, 0.5))
    with pytest.raises(InputError, match="does not match its image's grid"):
        label_on_image_grid(other, image, tmp_path / "lab.nii.gz")
    # A label map cropped to its segments (as Slicer saves some .seg.nrrd) is padded back onto the image grid.
    cropped = labels[4:28, 2:30, 3:13]
    placed = label_on_image_grid(cropped, image, tmp_path / "crop.seg.nrrd")
    assert same_grid(placed, image)
    expected = np.zeros_like(_arr(labels))
    expected[3:13, 2:30, 4:28] = _arr(labels)[3:13, 2:30, 4:28]
    assert np.array_equal(_arr(placed), expected)


def test_gzip_of_garbage_is_reported(tmp_path):
    p = tmp_path / "bad.nii.gz"
    p.write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_volume(p)


def test_multi_layer_segmentation_merged_into_a_label_map(tmp_path):
    import slicerio

    ijk_to_lps = np.eye(4)
    ijk_to_lps[0, 0], ijk_to_lps[1, 1], ijk_to_lps[2, 2] = 0.5, 0.6, 0.7
    ijk_to_lps[:3, 3] = (1.0, 2.0, 3.0)
    seg = slicerio.create_segmentation((10, 12, 14), ijk_to_lps)
    a = np.zeros((10, 12, 14), bool)
    a[2:6, 3:7, 4:8] = True
    b = np.zeros((10, 12, 14), bool)
    b[4:8, 5:9, 6:10] = True  # overlaps a: Slicer stores it in a second layer
    slicerio.add_segment(seg, a, {"name": "tooth 11"})
    slicerio.add_segment(seg, b, {"name": "tooth 12"})
    assert seg["voxels"].ndim == 4
    path = tmp_path / "overlap.seg.nrrd"
    slicerio.write_segmentation(str(path), seg)
    with pytest.raises(InputError, match="2 components per voxel"):
        read_volume(path)  # as an image it is not scalar
    lab = read_volume(path, label=True)
    assert lab.GetSize() == (10, 12, 14) and np.allclose(lab.GetSpacing(), (0.5, 0.6, 0.7))
    assert np.allclose(lab.GetOrigin(), (1.0, 2.0, 3.0))
    ijk = _arr(lab).transpose(2, 1, 0)
    assert np.array_equal(ijk == 2, b) and np.array_equal(ijk == 1, a & ~b)  # the later segment on top
