"""The Segment module's markups -> prompts file helpers, checked against the core's own prompt validation and
voxel conversion (a real image grid), so what the widget writes is what ``ldfsam segment --prompts`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment")]

from LDFSAMSegmentLib.prompts import prompts_document, roi_box, structure  # noqa: E402

from ldfsam.data.preprocess import Grid  # noqa: E402
from ldfsam.errors import InputError  # noqa: E402
from ldfsam.infer.prompts import parse_prompts, to_voxels  # noqa: E402


def _grid():
    image = sitk.Image(40, 30, 20, sitk.sitkInt16)
    image.SetSpacing((0.5, 0.5, 1.0))
    image.SetOrigin((-10.0, -5.0, 3.0))
    return Grid.of(image), image


def test_roi_and_points_land_on_the_voxels_they_mark():
    grid, image = _grid()
    # A ROI centred on voxel (i, j, k) = (20, 10, 8), 5 mm x 3 mm x 4 mm, given in RAS as Slicer does.
    lps = image.TransformIndexToPhysicalPoint((20, 10, 8))
    ras_center = (-lps[0], -lps[1], lps[2])
    inc = image.TransformIndexToPhysicalPoint((21, 11, 9))
    exc = image.TransformIndexToPhysicalPoint((19, 9, 7))
    doc = prompts_document([structure("Tooth 21", ras_center, (5.0, 3.0, 4.0),
                                       include=[(-inc[0], -inc[1], inc[2])], exclude=[(-exc[0], -exc[1], exc[2])])])
    [s] = parse_prompts(doc)
    vp = to_voxels(s, grid)
    z0, z1, y0, y1, x0, x1 = vp.box
    assert (x0, x1) == (15, 25) and (y0, y1) == (7, 13) and (z0, z1) == (6, 10)
    assert vp.box_3d
    assert vp.points == [(9, 11.0, 21.0, True), (7, 9.0, 19.0, False)]


def test_rotated_roi_gives_the_box_around_its_corners():
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    box = roi_box((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), axes=((c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0)))
    np.testing.assert_allclose(box["max"], [np.sqrt(2), np.sqrt(2), 1.0])
    np.testing.assert_allclose(box["min"], [-np.sqrt(2), -np.sqrt(2), -1.0])


def test_bad_markups_are_refused_before_a_file_is_written():
    with pytest.raises(ValueError, match="place a ROI, a line of clicks or at least one include point"):
        structure("t", exclude=[(0, 0, 0)])
    with pytest.raises(ValueError, match="ROI size"):
        roi_box((0, 0, 0), (1, -1, 1))
    with pytest.raises(ValueError, match="same name"):
        prompts_document([structure("a", include=[(0, 0, 0)]), structure("a", include=[(1, 0, 0)])])
    # A flat ROI passes here but the core names it: zero size in the slice plane.
    grid, _ = _grid()
    [s] = parse_prompts(prompts_document([structure("flat", (10.0, 5.0, 10.0), (0.0, 3.0, 4.0))]))
    with pytest.raises(InputError, match=r"\('flat'\)\.box: has zero size"):
        to_voxels(s, grid)
