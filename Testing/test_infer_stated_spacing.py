"""Inputs whose voxel size cannot be trusted: a NIfTI header stating a voxel size of 0 is refused (ITK would read
it at 1 mm) unless the true spacing is stated (``spacing=``, ``--spacing X Y Z``); an input folder with nothing
in it is named as the problem. Real files, real ``ldfsam segment`` subprocesses."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _infer_helpers import save_tiny_model

from ldfsam.data.volume import read_volume
from ldfsam.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]


def _zero_pixdim(src: Path, dst: Path, values=(0.0, 0.0, 0.0)) -> Path:
    """A copy of the NIfTI-1 file ``src`` whose header states ``values`` as voxel size (pixdim[1..3])."""
    data = bytearray(src.read_bytes())
    assert struct.unpack_from("<i", data, 0)[0] == 348  # a little-endian NIfTI-1 header, as SimpleITK writes
    struct.pack_into("<3f", data, 80, *values)
    if dst.name.endswith(".gz"):
        dst.write_bytes(gzip.compress(bytes(data)))
    else:
        dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def phantom_zero(tmp_path_factory) -> Path:
    from ldfsam.data.phantom import make_phantom

    image, _ = make_phantom((24, 64, 64), spacing=0.5, seed=3)
    folder = tmp_path_factory.mktemp("phantom")
    sitk.WriteImage(image, str(folder / "phantom.nii"))
    return _zero_pixdim(folder / "phantom.nii", folder / "zero.nii.gz")


@pytest.mark.parametrize("name", ["zero.nii", "zero.nii.gz"])
def test_zero_voxel_size_refused_naming_file(tmp_path, name):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))
    image.SetSpacing((0.3, 0.3, 0.3))
    sitk.WriteImage(image, str(tmp_path / "src.nii"))
    bad = _zero_pixdim(tmp_path / "src.nii", tmp_path / name)
    assert sitk.ReadImage(str(bad)).GetSpacing() == (1.0, 1.0, 1.0)  # what ITK makes of it, silently
    with pytest.raises(InputError, match="voxel size of 0 x 0 x 0 mm") as e:
        read_volume(bad)
    assert str(e.value).startswith(f"{bad}: ") and "--spacing X Y Z" in str(e.value)
    read = read_volume(bad, spacing=(0.25, 0.3, 0.35))
    assert read.GetSpacing() == pytest.approx((0.25, 0.3, 0.35))
    assert np.array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))


def test_one_zero_axis_and_a_good_file(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(1).random((8, 9, 10)).astype(np.float32))
    image.SetSpacing((0.3, 0.4, 0.5))
    sitk.WriteImage(image, str(tmp_path / "good.nii.gz"))
    assert read_volume(tmp_path / "good.nii.gz").GetSpacing() == pytest.approx((0.3, 0.4, 0.5))
    sitk.WriteImage(image, str(tmp_path / "src.nii"))
    bad = _zero_pixdim(tmp_path / "src.nii", tmp_path / "z.nii", (0.3, 0.0, 0.5))
    with pytest.raises(InputError, match="voxel size of 0.3 x 0 x 0.5 mm"):
        read_volume(bad)


@pytest.mark.parametrize("spacing", [(0.3, 0.3), (0.3, 0.0, 0.3), (0.3, -1, 0.3), (0.3, float("nan"), 0.3), "abc"])
def test_bad_stated_spacing(tmp_path, spacing):
    image = sitk.GetImageFromArray(np.random.default_rng(2).random((8, 9, 10)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    with pytest.raises(ConfigError, match="spacing=.*: give three positive voxel sizes"):
        read_volume(tmp_path / "a.nii.gz", spacing=spacing)


def _segment(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ldfsam", "segment", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def test_cli_refuses_zero_spacing_then_segments_with_stated_one(tmp_path, phantom_zero):
    tiny = save_tiny_model(tmp_path / "tiny.safetensors")
    out = tmp_path / "teeth.nii.gz"
    r = _segment(phantom_zero, "-o", out, "--model", tiny, "--progress", "none")
    assert r.returncode == 2, r.stderr
    assert f"{phantom_zero}: states a voxel size of 0 x 0 x 0 mm" in r.stderr and "--spacing X Y Z" in r.stderr
    assert not out.exists()
    r = _segment(phantom_zero, "-o", out, "--model", tiny, "--progress", "none", "--spacing", "0.5", "0.5", "0.5",
                 "--slice-spacing", "native")
    assert r.returncode == 0, r.stderr
    labels = sitk.ReadImage(str(out))
    assert labels.GetSpacing() == pytest.approx((0.5, 0.5, 0.5)) and labels.GetSize() == (64, 64, 24)


def test_cli_bad_spacing_names_the_flag(tmp_path, phantom_zero):
    r = _segment(phantom_zero, "-o", tmp_path / "o.nii.gz", "--spacing", "0.5", "0", "0.5", "--progress", "none")
    assert r.returncode == 2 and "--spacing" in r.stderr and "give three positive voxel sizes" in r.stderr, r.stderr


def test_cli_cohort_spacing_applies_to_every_input(tmp_path, phantom_zero):
    tiny = save_tiny_model(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    r = _segment(phantom_zero, phantom_zero.with_name("phantom.nii"), "-o", out, "--model", tiny, "--progress",
                 "none", "--spacing", "0.4", "0.4", "0.4", "--format", "nii.gz", "--slice-spacing", "native")
    assert r.returncode == 0, r.stdout + r.stderr
    written = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in written] == ["phantom.nii.gz", "zero.nii.gz"]
    for p in written:
        assert sitk.ReadImage(str(p)).GetSpacing() == pytest.approx((0.4, 0.4, 0.4))


@pytest.mark.parametrize("output", ["out.nii.gz", "out"])
def test_cli_empty_input_folder_is_named(tmp_path, output):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a volume")
    r = _segment(empty, "-o", tmp_path / output, "--progress", "none")
    assert r.returncode == 2
    assert f"{empty}: holds no volumes, so nothing to segment" in r.stderr, r.stderr
    assert "names a file" not in r.stderr and not (tmp_path / output).exists()


def test_prompted_session_reads_through_the_same_check(phantom_zero):
    from ldfsam.infer.prompted import PromptedSession

    with pytest.raises(InputError, match="voxel size of 0"):
        PromptedSession(phantom_zero)
    session = PromptedSession(phantom_zero, spacing=(0.5, 0.5, 0.5))
    assert session.image.GetSpacing() == pytest.approx((0.5, 0.5, 0.5))
