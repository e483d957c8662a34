"""Segmentation metrics of one binary mask pair, in physical units (section 4.5 and Tables 4-6).

Dice, IoU and pixel accuracy count voxels. HD, HD95 and ASSD are surface distances in millimetres computed
with MONAI (``spacing`` = voxel size along each array axis); SO is MONAI's surface Dice (normalised surface
distance): the fraction of both surfaces lying within ``tolerance_mm`` of the other surface.

Empty masks are handled explicitly, not left to the library:

* both empty: Dice = IoU = SO = 1 and every distance 0 (a correct "nothing here");
* exactly one empty: Dice = IoU = SO = 0 and every distance ``inf`` (there is no surface to measure to).
  Summaries exclude non-finite values from means and report how many were excluded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

METRIC_NAMES = ("dice", "iou", "hd", "hd95", "assd", "so", "accuracy")
# Metrics where smaller is better (for printing and ranking).
DISTANCE_METRICS = ("hd", "hd95", "assd")
DEFAULT_TOLERANCE_MM = 1.0


@dataclass
class PairMetrics:
    dice: float
    iou: float
    hd: float
    hd95: float
    assd: float
    so: float
    accuracy: float
    pred_voxels: int
    ref_voxels: int

    def as_dict(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in (*METRIC_NAMES, "pred_voxels", "ref_voxels")}


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """Dice, IoU and accuracy of two boolean masks of one shape (both empty counts as perfect)."""
    pred, ref = _as_bool(pred), _as_bool(ref)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    union = n_pred + n_ref - tp
    total = pred.size
    accuracy = (total - (n_pred + n_ref - 2 * tp)) / total if total else 1.0
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "iou": 1.0, "accuracy": accuracy}
    return {"dice": 2.0 * tp / (n_pred + n_ref), "iou": tp / union, "accuracy": accuracy}


def _monai_surface(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float):
    """HD, HD95, ASSD and SO from one MONAI surface-distance computation (both directions).

    Same definitions as MONAI's compute_hausdorff_distance (max; 95th percentile by torch.quantile, larger of the
    two directions), compute_average_surface_distance (symmetric) and compute_surface_dice, which would each
    recompute the distance transforms.
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    p = torch.from_numpy(np.ascontiguousarray(pred))
    r = torch.from_numpy(np.ascontiguousarray(ref))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty masks never reach here (handled by the caller)
        _, (d_pr, d_rp), _ = get_edge_surface_distance(p, r, distance_metric="euclidean",
                                                       spacing=[float(s) for s in spacing], symmetric=True)
    d_pr, d_rp = d_pr.double(), d_rp.double()
    hd = max(float(d_pr.max()), float(d_rp.max()))
    hd95 = max(float(torch.quantile(d_pr, 0.95)), float(torch.quantile(d_rp, 0.95)))
    both = torch.cat([d_pr, d_rp])
    assd = float(both.mean())
    so = float((both <= tolerance_mm).double().mean())
    return hd, hd95, assd, so


def pair_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                 tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> PairMetrics:
    """All metrics of a predicted and a reference binary mask (2D or 3D arrays of one shape).

    ``spacing`` is the voxel size (mm) along each array axis, in array order; None means 1 per axis.
    """
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got {pred.ndim} dimensions")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * pred.ndim))
    if len(spacing) != pred.ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing {spacing} does not fit a {pred.ndim}D mask")
    ov = overlap_metrics(pred, ref)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        hd = hd95 = assd = 0.0
        so = 1.0
    elif n_pred == 0 or n_ref == 0:
        hd = hd95 = assd = math.inf
        so = 0.0
    else:
        hd, hd95, assd, so = _monai_surface(pred, ref, spacing, tolerance_mm)
    return PairMetrics(dice=ov["dice"], iou=ov["iou"], hd=hd, hd95=hd95, assd=assd, so=so,
                       accuracy=ov["accuracy"], pred_voxels=n_pred, ref_voxels=n_ref)
