"""Output writers: Slicer .seg.nrrd read back with slicerio (names, colours, terminology, geometry), label maps."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from _infer_helpers import oblique_direction

from ldfsam.errors import LDFSAMError, OutputError
from ldfsam.infer import outputs


@pytest.fixture()
def reference():
    img = sitk.Image([12, 10, 8], sitk.sitkInt16)
    img.SetSpacing((0.3, 0.4, 0.5))
    img.SetOrigin((10.0, -20.0, 30.5))
    img.SetDirection(oblique_direction())
    return img


def _labels():
    lab = np.zeros((8, 10, 12), np.uint8)
    lab[1:4, 2:5, 3:7] = 1
    lab[5:7, 6:9, 1:3] = 2
    return lab


def test_seg_nrrd_reads_back_in_slicerio(tmp_path, reference):
    lab = _labels()
    path = outputs.write_segmentation(tmp_path / "teeth.seg.nrrd", lab, reference, names=["Tooth 1", "Tooth 2"])
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["Tooth 1", "Tooth 2"]
    for s in seg["segments"]:
        t = s["terminology"]
        assert t["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert t["type"] == ["SCT", "38199008", "Tooth"]
        assert len(s["color"]) == 3 and all(0.0 <= c <= 1.0 for c in s["color"])
    assert seg["segments"][0]["color"] != seg["segments"][1]["color"]
    # Geometry: slicerio's ijkToLPS equals the reference image's index-to-physical matrix.
    np.testing.assert_allclose(seg["ijkToLPS"], outputs.ijk_to_lps(reference), atol=1e-6)
    for i, s in enumerate(seg["segments"], start=1):
        mask = slicerio.segment_mask(seg, s)  # (i, j, k)
        np.testing.assert_array_equal(mask.transpose(2, 1, 0), lab == i)
        extent = s["extent"]
        k, j, ii = np.nonzero(lab == i)
        assert extent == [ii.min(), ii.max(), j.min(), j.max(), k.min(), k.max()]


def test_seg_nrrd_reads_back_in_simpleitk_on_the_grid(tmp_path, reference):
    path = outputs.write_segmentation(tmp_path / "t.seg.nrrd", (_labels() > 0).astype(np.uint8), reference)
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == reference.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(img.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert img.GetMetaData("Segment0_Name") == "Tooth"
    assert "38199008" in img.GetMetaData("Segment0_Tags")


def test_empty_segmentation_still_has_its_segment(tmp_path, reference):
    path = outputs.write_segmentation(tmp_path / "e.seg.nrrd", np.zeros((8, 10, 12), np.uint8), reference)
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["Tooth"]
    assert not slicerio.segment_mask(seg, seg["segments"][0]).any()


def test_label_map_on_exact_grid(tmp_path, reference):
    lab = _labels()
    path = outputs.write_label_map(tmp_path / "l.nii.gz", lab, reference)
    img = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), lab)
    assert img.GetSize() == reference.GetSize()
    np.testing.assert_allclose(img.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    # No temporary files are left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["l.nii.gz"]


def test_refuses_to_overwrite(tmp_path, reference):
    target = tmp_path / "l.nii.gz"
    target.write_bytes(b"user data")
    with pytest.raises(LDFSAMError, match="exists already"):
        outputs.write_label_map(target, _labels(), reference)
    assert target.read_bytes() == b"user data"


def test_unknown_output_extension():
    with pytest.raises(OutputError, match="unknown output format"):
        outputs.output_kind(__import__("pathlib").Path("x.png"))
