"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes.

Curves: Phase 1 per epoch (training loss; validation precision, recall, mAP50, mAP50-95 of teacher and student)
and Phase 2 per epoch (training and validation loss, validation Dice). Cases: the image with the reference
(green) and the prediction (red) outlined; a volume as axial, coronal and sagittal slices through the structure.
"""

from __future__ import annotations

import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REF_COLOUR, PRED_COLOUR = "#22c55e", "#ef4444"
ROLE_COLOURS = {"teacher": "#2563eb", "student": "#ea580c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: Sequence[Dict], key: str) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            xs.append(float(row["epoch"]))
            ys.append(value)
    return xs, ys


def phase1_curves(histories: Dict[str, Sequence[Dict]]) -> bytes:
    """Per-epoch rows of each role (teacher, student): loss | mAP50 and mAP50-95 | precision and recall."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for role, rows in histories.items():
        colour = ROLE_COLOURS.get(role)
        axes[0].plot(*_series(rows, "loss"), marker=".", color=colour, label=role)
        axes[1].plot(*_series(rows, "mAP50"), marker=".", color=colour, label=f"{role} mAP50")
        axes[1].plot(*_series(rows, "mAP50_95"), marker=".", ls="--", color=colour, label=f"{role} mAP50-95")
        axes[2].plot(*_series(rows, "precision"), marker=".", color=colour, label=f"{role} precision")
        axes[2].plot(*_series(rows, "recall"), marker=".", ls="--", color=colour, label=f"{role} recall")
    for ax, title in zip(axes, ("training loss", "validation mAP", "validation precision / recall")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    return to_png(fig)


def phase2_curves(rows: Sequence[Dict]) -> bytes:
    """Phase 2's log.csv rows: training and validation loss | validation Dice, per epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(*_series(rows, "train_loss"), marker=".", label="training loss")
    axes[0].plot(*_series(rows, "val_loss"), marker=".", ls="--", label="validation loss")
    axes[1].plot(*_series(rows, "val_dice"), marker=".", color="#16a34a", label="validation Dice")
    axes[1].set_ylim(-0.02, 1.02)
    for ax, title in zip(axes, ("loss (Dice + BCE)", "validation Dice")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return to_png(fig)


def _outline(ax, mask: np.ndarray, colour: str) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)


def _panel(ax, image: np.ndarray, ref: np.ndarray, pred: np.ndarray, title: str, aspect: float = 1.0) -> None:
    ax.imshow(image, cmap=None if image.ndim == 3 else "gray", aspect=aspect, interpolation="nearest")
    _outline(ax, ref, REF_COLOUR)
    _outline(ax, pred, PRED_COLOUR)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _window(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def structure_centre(ref: np.ndarray, pred: np.ndarray) -> Tuple[int, ...]:
    """Voxel index of the reference's centre of mass (the prediction's when the reference is empty; else the
    array's centre)."""
    for mask in (ref, pred):
        if mask.any():
            return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))
    return tuple(s // 2 for s in ref.shape)


def case_figure(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, title: str,
                spacing: Optional[Sequence[float]] = None) -> bytes:
    """A case with its reference (green) and prediction (red) outlined.

    2D: ``image`` H×W or H×W×3, masks H×W. 3D: ``image`` and masks (z, y, x), ``spacing`` (z, y, x) in mm;
    axial, coronal and sagittal slices through the reference's centre.
    """
    plt = _pyplot()
    ref, pred = ref.astype(bool), pred.astype(bool)
    if ref.ndim == 2:
        fig, ax = plt.subplots(1, 1, figsize=(3.6, 3.8))
        shown = image if image.ndim == 3 else _window(image.astype(np.float32))
        _panel(ax, shown, ref, pred, title)
        return to_png(fig)
    sz, sy, sx = spacing or (1.0, 1.0, 1.0)
    z, y, x = structure_centre(ref, pred)
    grey = _window(image.astype(np.float32))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    # Coronal and sagittal slices with superior up; aspect from the voxel spacing.
    _panel(axes[0], grey[z], ref[z], pred[z], f"axial z={z}", sy / sx)
    _panel(axes[1], grey[::-1, y, :], ref[::-1, y, :], pred[::-1, y, :], f"coronal y={y}", sz / sx)
    _panel(axes[2], grey[::-1, :, x], ref[::-1, :, x], pred[::-1, :, x], f"sagittal x={x}", sz / sy)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)
