"""Segmentation metrics against values worked out by hand, and an independent brute-force surface distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from ldfsam.evaluate.bootstrap import bootstrap_mean_ci
from ldfsam.evaluate.metrics import pair_metrics
from ldfsam.evaluate.report import format_table, summarize


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from each surface voxel of a to the surface of b; surface = mask minus its erosion."""
    sa = np.argwhere(a & ~binary_erosion(a)) * np.asarray(spacing)
    sb = np.argwhere(b & ~binary_erosion(b)) * np.asarray(spacing)
    return cdist(sa, sb).min(axis=1)


def test_shifted_squares_by_hand():
    # Reference rows 0-3, prediction rows 1-4, both 4 columns wide, on an 8×8 image; pixel 2 mm × 0.5 mm.
    # Surfaces have 12 pixels each. Prediction -> reference: the 4 pixels of row 4 are 2 mm from row 3, the two
    # inner pixels of row 1 are 0.5 mm (one column) from the reference's side; the rest lie on it. The same
    # holds the other way round. ASSD = (2 * (4*2 + 2*0.5)) / 24 = 0.75; HD = 2; SO(1 mm) = 16/24.
    ref = np.zeros((8, 8), bool)
    ref[0:4, 0:4] = True
    pred = np.zeros_like(ref)
    pred[1:5, 0:4] = True
    m = pair_metrics(pred, ref, spacing=(2.0, 0.5), tolerance_mm=1.0)
    assert m.dice == pytest.approx(2 * 12 / 32)
    assert m.iou == pytest.approx(12 / 20)
    assert m.accuracy == pytest.approx(56 / 64)
    assert m.hd == pytest.approx(2.0)
    assert m.hd95 == pytest.approx(2.0)
    assert m.assd == pytest.approx(0.75, abs=1e-6)
    assert m.so == pytest.approx(16 / 24, abs=1e-6)
    # Isotropic 1 mm pixels: six pixels per direction at 1, the rest at 0 -> ASSD 0.5; SO at 0.5 mm = 12/24.
    m = pair_metrics(pred, ref, spacing=(1.0, 1.0), tolerance_mm=0.5)
    assert (m.hd, m.assd, m.so) == pytest.approx((1.0, 0.5, 0.5), abs=1e-6)


def test_shifted_cube_with_anisotropic_spacing():
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = np.zeros_like(ref)
    pred[6:16, 5:15, 5:15] = True  # one voxel along axis 0, whose voxels are 2 mm
    spacing = (2.0, 1.0, 0.5)
    m = pair_metrics(pred, ref, spacing=spacing, tolerance_mm=1.0)
    assert m.dice == pytest.approx(0.9)  # 900 shared voxels of 1000 + 1000
    assert m.iou == pytest.approx(900 / 1100)
    assert m.hd == pytest.approx(2.0)  # the outer face moved by one 2 mm voxel
    d_pr = _surface_distances(pred, ref, spacing)
    d_rp = _surface_distances(ref, pred, spacing)
    assert m.assd == pytest.approx(np.concatenate([d_pr, d_rp]).mean(), rel=1e-5)
    assert m.hd95 == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), rel=1e-5)
    within = (np.sum(d_pr <= 1.0) + np.sum(d_rp <= 1.0)) / (len(d_pr) + len(d_rp))
    assert m.so == pytest.approx(within, rel=1e-5)


def test_identical_and_grown_spheres():
    z, y, x = np.mgrid[:24, :24, :24]
    r2 = (z - 11.5) ** 2 + (y - 11.5) ** 2 + (x - 11.5) ** 2
    small, large = r2 <= 6 ** 2, r2 <= 8 ** 2
    m = pair_metrics(small, small, spacing=(0.5, 0.5, 0.5))
    assert (m.dice, m.iou, m.hd, m.hd95, m.assd, m.so) == (1.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    m = pair_metrics(large, small, spacing=(0.5, 0.5, 0.5), tolerance_mm=0.5)
    assert m.dice == pytest.approx(2 * small.sum() / (small.sum() + large.sum()))
    # Radii 8 and 6 voxels of 0.5 mm: the surfaces are about 1 mm apart everywhere.
    assert 0.8 <= m.assd <= 1.2 and 0.8 <= m.hd <= 1.6
    d = np.concatenate([_surface_distances(large, small, (0.5,) * 3), _surface_distances(small, large, (0.5,) * 3)])
    assert m.hd == pytest.approx(d.max(), rel=1e-5)
    assert m.so == pytest.approx(np.mean(d <= 0.5), rel=1e-5)


def test_empty_masks_are_explicit():
    ref = np.zeros((10, 10, 10), bool)
    ref[2:5, 2:5, 2:5] = True
    empty = np.zeros_like(ref)
    m = pair_metrics(empty, ref, spacing=(1, 1, 1))
    assert (m.dice, m.iou, m.so) == (0.0, 0.0, 0.0)
    assert math.isinf(m.hd) and math.isinf(m.hd95) and math.isinf(m.assd)
    assert m.accuracy == pytest.approx(1 - 27 / 1000)
    m = pair_metrics(ref, empty, spacing=(1, 1, 1))
    assert m.dice == 0.0 and math.isinf(m.assd)
    m = pair_metrics(empty, empty, spacing=(1, 1, 1))
    assert (m.dice, m.iou, m.hd, m.hd95, m.assd, m.so, m.accuracy) == (1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        pair_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        pair_metrics(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(1.0, 0.0))


def test_summary_excludes_infinite_distances_with_a_count():
    ref = np.zeros((12, 12), bool)
    ref[3:8, 3:8] = True
    rows = []
    for i, pred in enumerate([ref, np.roll(ref, 1, axis=0), np.zeros_like(ref)]):
        rows.append({"case_id": f"c{i}", "class": "fg", **pair_metrics(pred, ref).as_dict()})
    s = summarize(rows, resamples=200, seed=1)
    hd = s["metrics"]["fg"]["hd"]
    assert hd["n"] == 2 and hd["excluded"] == 1
    assert hd["mean"] == pytest.approx((0.0 + 1.0) / 2)
    dice = s["metrics"]["fg"]["dice"]
    assert dice["n"] == 3 and dice["excluded"] == 0
    assert dice["mean"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert "excl" in format_table(s)


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.random.default_rng(3).normal(0.8, 0.1, size=40).tolist()
    a = bootstrap_mean_ci(values, resamples=1000, seed=2025)
    b = bootstrap_mean_ci(values, resamples=1000, seed=2025)
    c = bootstrap_mean_ci(values, resamples=1000, seed=7)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["ci_low"] < a["mean"] < a["ci_high"]
    # The percentile CI of a mean is close to mean ± 1.96 standard errors for normal data.
    se = np.std(values, ddof=1) / math.sqrt(len(values))
    assert a["ci_high"] - a["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.2)
    one = bootstrap_mean_ci([0.5, math.inf])
    assert (one["mean"], one["ci_low"], one["ci_high"], one["n"], one["excluded"]) == (0.5, 0.5, 0.5, 1, 1)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice inside its functions
def test_surface_metrics_equal_monais_own_functions():
    """One shared distance computation gives what MONAI's separate metric functions give."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[:30, :36, :40]
    ref = (z - 15) ** 2 / 100 + (y - 18) ** 2 / 144 + (x - 20) ** 2 / 196 <= 1
    pred = ((z - 16) ** 2 / 90 + (y - 17) ** 2 / 160 + (x - 21) ** 2 / 180 <= 1) | (rng.random(ref.shape) > 0.999)
    spacing = [0.7, 0.5, 1.2]
    m = pair_metrics(pred, ref, spacing, tolerance_mm=1.0)
    p, r = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float()
    expected = (compute_hausdorff_distance(p, r, True, spacing=spacing),
                compute_hausdorff_distance(p, r, True, percentile=95, spacing=spacing),
                compute_average_surface_distance(p, r, True, symmetric=True, spacing=spacing),
                compute_surface_dice(p, r, [1.0], True, spacing=spacing))
    assert (m.hd, m.hd95, m.assd, m.so) == pytest.approx([float(v) for v in expected], rel=1e-5)


def test_paired_difference_pairs_cases_by_id_and_refuses_different_cases():
    from ldfsam.evaluate.bootstrap import paired_difference

    a = {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c4": 0.6}
    b = {"c4": 0.5, "c3": 0.75, "c2": 0.6, "c1": 0.9}  # another order: paired by id, not position
    d = paired_difference(a, b)
    expected = bootstrap_mean_ci([a[k] - b[k] for k in ("c1", "c2", "c3", "c4")])
    assert d["mean"] == pytest.approx(0.0625)
    assert (d["ci_low"], d["ci_high"]) == (expected["ci_low"], expected["ci_high"]) and d["ci_low"] < d["ci_high"]
    assert (d["n"], d["better"], d["worse"]) == (4, 2, 1)
    with pytest.raises(ValueError, match="different cases"):
        paired_difference(a, {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c5": 0.6})
