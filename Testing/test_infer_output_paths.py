"""Where a segmentation may be written: never onto its input (not even with force), never twice, and a place
that cannot be written is said in one line naming the path, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _infer_helpers import write_image

from ldfsam.data.volume import write_dicom_series, write_volume
from ldfsam.errors import OutputError
from ldfsam.infer import segment_volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def scan(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_image(tmp_path / "scan.nii.gz", rng.normal(0, 100, (12, 32, 32)).astype(np.int16),
                       spacing=(0.5, 0.5, 0.5))


def _refused(input, output, words, **kw) -> str:
    before = {p: p.read_bytes() for p in Path(input).parent.rglob("*") if p.is_file()}
    with pytest.raises(OutputError) as e:
        segment_volume(input, output, **kw)
    text = str(e.value)
    assert str(output) in text and words in text and "\n" not in text, text
    after = {p: p.read_bytes() for p in Path(input).parent.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing lost
    return text


def test_output_is_the_input_even_with_force(scan):
    _refused(scan, scan, "is the input", force=True)
    _refused(scan, scan, "is the input")


def test_output_is_a_link_to_the_input(scan, tmp_path):
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    _refused(scan, link, "is the input", force=True)
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    _refused(scan, hard, "is the input", force=True)
    # The input given through a link, the output by its real name.
    _refused(link, scan, "is the input", force=True)


def test_output_inside_the_dicom_input_folder(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 100, (12, 32, 32)).astype(np.int16))
    write_dicom_series(image, tmp_path / "dicom")
    _refused(tmp_path / "dicom", tmp_path / "dicom" / "teeth.nii.gz", "inside the input DICOM folder", force=True)
    _refused(tmp_path / "dicom", tmp_path / "dicom" / "sub" / "teeth.seg.nrrd", "inside the input DICOM folder")


def test_output_would_overwrite_the_data_file_of_a_metaimage_input(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 100, (12, 32, 32)).astype(np.int16))
    header = tmp_path / "scan.mhd"
    sitk.WriteImage(image, str(header), True)
    (tmp_path / "scan.zraw").rename(tmp_path / "teeth.zraw")
    header.write_text(header.read_text().replace("ElementDataFile = scan.zraw", "ElementDataFile = teeth.zraw"))
    assert sitk.ReadImage(str(header)).GetSize() == (32, 32, 12)
    # teeth.mhd writes teeth.zraw: the input's voxels.
    _refused(header, tmp_path / "teeth.mhd", "its data file teeth.zraw", force=True)


def test_one_file_for_two_outputs(scan, tmp_path):
    out = tmp_path / "out.nii.gz"
    _refused(scan, out, "both output and probabilities", probabilities=out)


def test_output_under_proc_is_one_line_naming_it(scan):
    _refused(scan, Path("/proc/teeth.nii.gz"), "cannot be written there")
    _refused(scan, Path("/proc/no/such/teeth.seg.nrrd"), "cannot be written there")


def test_output_below_a_file(scan, tmp_path):
    text = _refused(scan, scan.parent / "scan.nii.gz" / "teeth.nii.gz", "cannot be written there", force=True)
    assert "is a file, not a folder" in text


def test_volume_writer_names_the_path_it_cannot_write(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8))
    for target in (Path("/proc/x.nii.gz"), Path("/proc/x.mhd")):
        with pytest.raises(OutputError, match=f"{target}: cannot be written there"):
            write_volume(image, target)


def test_cli_refuses_to_overwrite_its_input_with_force(scan, tmp_path):
    before = scan.read_bytes()
    r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(scan), "-o", str(scan), "--force",
                        "--progress", "json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2
    assert f"ldfsam segment: error: {scan}: is the input and would be overwritten" in r.stderr
    assert "Traceback" not in r.stderr
    assert scan.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(scan), "-o", "/proc/teeth.nii.gz"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ldfsam segment: error: /proc/teeth.nii.gz: cannot be "
                                                        "written there")
