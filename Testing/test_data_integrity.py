"""Files cut short or corrupt, and non-finite NIfTI voxels, are refused by name; whole files read unchanged.

SimpleITK alone reads a cut ``.nii.gz`` or ``.nii`` as if whole (zeros for the missing voxels), reads corrupt
gzip/zlib data in NIfTI, NRRD and MetaImage without a word, and turns NaN NIfTI voxels into zeros.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.data.volume import read_volume, write_dicom_series
from ldfsam.errors import InputError


@pytest.fixture(scope="module")
def head(data_dir) -> sitk.Image:
    return sitk.ReadImage(str(data_dir / "ct-headsq" / "headsq.nii.gz"))


def _cut(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _flip(src: Path, dst: Path, at: float = 0.5) -> Path:
    data = bytearray(src.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _refused(path: Path, words: str) -> str:
    with pytest.raises(InputError) as e:
        read_volume(path)
    text = str(e.value)
    assert str(path) in text and words in text, text
    return text


def test_real_nii_gz_cut_to_a_third_is_refused(data_dir, tmp_path):
    src = data_dir / "ct-headsq" / "headsq.nii.gz"
    cut = _cut(src, tmp_path / "headsq.nii.gz", 1 / 3)
    # What the reader alone does: the whole grid, the missing two thirds as zeros.
    alone = sitk.GetArrayFromImage(sitk.ReadImage(str(cut)))
    assert alone.shape == (93, 64, 64) and np.count_nonzero(alone[60:]) == 0
    _refused(cut, "is incomplete")
    # One byte short of whole is as incomplete.
    _refused(_cut(src, tmp_path / "last.nii.gz", (src.stat().st_size - 1) / src.stat().st_size), "is incomplete")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_compressed_file_whole_reads_the_same_cut_or_corrupt_is_refused(head, tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(head, str(whole), True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(whole)), sitk.GetArrayViewFromImage(head))
    _refused(_cut(whole, tmp_path / f"cut{suffix}", 0.6), "is incomplete")
    _refused(_flip(whole, tmp_path / f"flip{suffix}"), "is corrupt")


def test_metaimage_with_separate_compressed_data_file(head, tmp_path):
    sitk.WriteImage(head, str(tmp_path / "scan.mhd"), True)
    data = tmp_path / "scan.zraw"
    assert data.is_file()
    read_volume(tmp_path / "scan.mhd")
    _cut(data, data, 0.5)
    _refused(tmp_path / "scan.mhd", "is incomplete")


def test_uncompressed_nii_cut_short_is_refused(head, tmp_path):
    whole = tmp_path / "whole.nii"
    sitk.WriteImage(head, str(whole), False)
    read_volume(whole)
    text = _refused(_cut(whole, tmp_path / "cut.nii", 0.5), "is incomplete")
    assert f"of the {93 * 64 * 64 * 2:,} bytes" in text


def test_nifti_in_two_gzip_members_is_whole(head, tmp_path):
    """gzip allows one member after another (``cat a.gz b.gz``): such a file is whole and must be read."""
    src = tmp_path / "one.nii"
    sitk.WriteImage(head, str(src), False)
    raw = src.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:100_000]) + gzip.compress(raw[100_000:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(two)), sitk.GetArrayViewFromImage(head))
    _refused(_cut(two, tmp_path / "cut.nii.gz", 0.8), "is incomplete")


def test_scaled_nifti_is_checked_by_inflating(head, tmp_path):
    """With scl_slope 2 the reader returns float voxels, not the file's: the stream itself is checked."""
    src = tmp_path / "plain.nii"
    sitk.WriteImage(head, str(src), False)
    raw = bytearray(src.read_bytes())
    raw[112:116] = struct.pack("<f", 2.0)
    scaled = tmp_path / "scaled.nii.gz"
    scaled.write_bytes(gzip.compress(bytes(raw)))
    got = sitk.GetArrayFromImage(read_volume(scaled))
    np.testing.assert_allclose(got, 2.0 * sitk.GetArrayViewFromImage(head))
    _refused(_flip(scaled, tmp_path / "flip.nii.gz", 0.7), "is corrupt")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_and_infinite_nifti_voxels_are_counted(tmp_path, suffix):
    a = np.random.default_rng(0).normal(0, 1, (8, 16, 16)).astype(np.float32)
    a[2, 3, 4] = np.nan
    a[5, 6, 7] = np.inf
    a[1, 1, 1] = -np.inf
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    # What the reader alone does: the three voxels become zeros.
    alone = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(alone).all() and alone[2, 3, 4] == 0
    _refused(path, "has 3 voxels that are NaN or infinite")


def _dicom(head: sitk.Image, folder: Path):
    return write_dicom_series(head, folder)


def test_dicom_series_with_a_file_cut_short_is_refused(head, tmp_path):
    files = _dicom(head, tmp_path / "dcm")
    read_volume(tmp_path / "dcm")
    _cut(files[40], files[40], 0.3)
    text = _refused(tmp_path / "dcm", "missing or misplaced slices")
    assert files[40].name in text and "3 mm apart where the others are 1.5 mm" in text


def test_dicom_series_with_a_missing_file_is_refused(head, tmp_path):
    files = _dicom(head, tmp_path / "dcm")
    files[10].unlink()
    _refused(tmp_path / "dcm", "missing or misplaced slices")


def test_copy_of_whole_file_reads_after_a_cut_one_was_refused(head, tmp_path):
    """Nothing is cached between reads: a re-downloaded file reads."""
    whole = tmp_path / "w.nii.gz"
    sitk.WriteImage(head, str(whole), True)
    target = tmp_path / "scan.nii.gz"
    _cut(whole, target, 0.5)
    _refused(target, "is incomplete")
    shutil.copyfile(whole, target)
    read_volume(target)
