"""3D clean-up: islands by volume in mm³, hole filling, splitting touching teeth."""

from __future__ import annotations

import numpy as np

from ldfsam.infer.postprocess import bounding_box, fill_holes, remove_islands, split_teeth


def test_remove_islands_by_physical_volume():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    mask[15:17, 15:17, 15:17] = True  # 8 voxels
    spacing = (0.5, 0.5, 0.5)  # 0.125 mm³ per voxel: 27 mm³ and 1 mm³
    out = remove_islands(mask.copy(), spacing, min_mm3=2.0)
    assert out[2:8, 2:8, 2:8].all() and not out[15:17, 15:17, 15:17].any()
    # At 1 mm voxels the small cube is 8 mm³ and stays.
    assert remove_islands(mask.copy(), (1.0, 1.0, 1.0), min_mm3=2.0).sum() == 224
    # Diagonal neighbours belong to one piece (26-connectivity).
    diag = np.zeros((5, 5, 5), bool)
    diag[1, 1, 1] = diag[2, 2, 2] = True
    assert remove_islands(diag.copy(), (1, 1, 1), 1.5).sum() == 2


def test_fill_holes_closes_cavities_and_open_pulp_canals():
    mask = np.zeros((12, 12, 12), bool)
    mask[2:10, 2:10, 2:10] = True
    mask[4:6, 4:6, 4:6] = False  # enclosed cavity
    mask[7:10, 5:7, 5:7] = False  # a canal open at the top: a hole in each axial slice, not in 3D
    out = fill_holes(mask.copy())
    assert out[2:10, 2:10, 2:10].all() and out.sum() == 512


def test_split_teeth_separates_touching_blobs():
    zz, yy, xx = np.mgrid[0:20, 0:30, 0:50]
    a = (zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 14) ** 2 <= 64
    b = (zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 29) ** 2 <= 64  # overlaps a in a thin neck
    c = (zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 44) ** 2 <= 9  # separate, small
    labels, n = split_teeth(a | b | c, (1.0, 1.0, 1.0))
    assert n == 3
    assert labels[10, 15, 14] != labels[10, 15, 29] and labels[10, 15, 44] not in (0, labels[10, 15, 14])
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert ((labels > 0) == (a | b | c)).all()
    # Numbered along x within the volume's lower/upper half.
    assert labels[10, 15, 14] == 1 and labels[10, 15, 29] == 2 and labels[10, 15, 44] == 3
    labels, n = split_teeth(a | b | c, (1.0, 1.0, 1.0), min_mm3=200)
    assert n == 2


def test_bounding_box():
    m = np.zeros((4, 5, 6), np.uint8)
    assert bounding_box(m) is None
    m[1, 2, 3] = m[2, 4, 1] = 1
    assert bounding_box(m) == (slice(1, 3), slice(2, 5), slice(1, 4))


def test_hole_filling_equals_scipy():
    from scipy import ndimage

    from ldfsam.infer.postprocess import _fill

    rng = np.random.default_rng(0)
    for shape in ((20, 30, 40), (50, 60)):
        for density in (0.5, 0.7):
            mask = rng.random(shape) < density
            want = ndimage.binary_fill_holes(mask)
            assert want.sum() > mask.sum()
            assert np.array_equal(_fill(mask), want)
