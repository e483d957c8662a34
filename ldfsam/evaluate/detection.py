"""Detection metrics of Phase 1: precision, recall, mAP50 and mAP50-95 (COCO-style, 101-point interpolation).

Per image, predictions (boxes, scores, classes) are matched to the reference boxes greedily in descending score
order: each takes the unmatched reference of its class with the highest IoU, if that IoU reaches the threshold.
Per class and IoU threshold, AP is the mean over recall 0, 0.01, ..., 1 of the interpolated precision (the
highest precision at any recall at least that high), as in the COCO evaluation. mAP50 averages AP at IoU 0.5
over the classes that have references; mAP50-95 averages over the thresholds 0.5, 0.55, ..., 0.95 too.
Precision and recall are those at IoU 0.5 at the score threshold with the best F1 (classes averaged).
Boxes are (x_min, y_min, x_max, y_max) in any one pixel frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

import numpy as np

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageDetections:
    """One image: predicted boxes N×4 with scores (N,) and classes (N,), reference boxes M×4 with classes (M,)."""

    pred_boxes: np.ndarray
    scores: np.ndarray
    pred_classes: np.ndarray
    ref_boxes: np.ndarray
    ref_classes: np.ndarray


@dataclass
class DetectionScores:
    precision: float
    recall: float
    mAP50: float
    mAP50_95: float
    images: int
    references: int

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N×4) with every box of ``b`` (M×4): N×M."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(image: ImageDetections, thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """True positives of an image's predictions: N×T booleans, one column per IoU threshold."""
    n = len(image.scores)
    tp = np.zeros((n, len(thresholds)), bool)
    if n == 0 or len(image.ref_classes) == 0:
        return tp
    iou = box_iou(image.pred_boxes, image.ref_boxes)
    iou[np.asarray(image.pred_classes)[:, None] != np.asarray(image.ref_classes)[None, :]] = 0.0
    order = np.argsort(-np.asarray(image.scores, float), kind="stable")
    thr = np.asarray(thresholds, float)[:, None] - 1e-12
    taken = np.zeros((len(thresholds), iou.shape[1]), bool)  # references matched, per threshold
    rows = np.arange(len(thresholds))
    lowest = float(np.min(thresholds)) - 1e-12
    for i in order:
        if iou[i].max() < lowest:
            continue  # matches nothing at any threshold
        candidates = np.where(taken, -1.0, iou[i][None, :])
        j = candidates.argmax(1)
        hit = candidates[rows, j] >= thr[:, 0]
        taken[rows[hit], j[hit]] = True
        tp[i] = hit
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, references: int) -> float:
    """101-point interpolated AP of one class at one threshold: ``tp`` (N,) booleans of predictions ``scores``."""
    if references == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    hits = np.asarray(tp, bool)[order]
    ctp, cfp = np.cumsum(hits), np.cumsum(~hits)
    recall = ctp / references
    precision = ctp / np.maximum(ctp + cfp, 1)
    # Interpolated precision: the highest precision at this recall or beyond.
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
    return float(sampled.mean())


def detection_scores(images: Sequence[ImageDetections]) -> DetectionScores:
    """Precision, recall, mAP50 and mAP50-95 over ``images`` (see the module's definitions)."""
    tps: List[np.ndarray] = []
    scores: List[np.ndarray] = []
    pcls: List[np.ndarray] = []
    rcls: List[np.ndarray] = []
    for im in images:
        tps.append(match(im))
        scores.append(np.asarray(im.scores, float).reshape(-1))
        pcls.append(np.asarray(im.pred_classes).reshape(-1).astype(int))
        rcls.append(np.asarray(im.ref_classes).reshape(-1).astype(int))
    tp = np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    score = np.concatenate(scores) if scores else np.zeros(0)
    pred_cls = np.concatenate(pcls) if pcls else np.zeros(0, int)
    ref_cls = np.concatenate(rcls) if rcls else np.zeros(0, int)
    classes = np.unique(ref_cls)
    if len(classes) == 0:
        return DetectionScores(float("nan"), float("nan"), float("nan"), float("nan"), len(images), 0)
    ap = np.zeros((len(classes), len(IOU_THRESHOLDS)))
    grid = np.linspace(0.0, 1.0, 1001)
    prec_at, rec_at = np.zeros((len(classes), len(grid))), np.zeros((len(classes), len(grid)))
    for k, c in enumerate(classes):
        mine = pred_cls == c
        n_ref = int((ref_cls == c).sum())
        for t in range(len(IOU_THRESHOLDS)):
            ap[k, t] = average_precision(tp[mine, t], score[mine], n_ref)
        # Precision and recall of the predictions scoring at least each threshold of the grid (IoU 0.5).
        order = np.argsort(score[mine], kind="stable")
        ascending = score[mine][order]
        hits_above = np.concatenate([np.cumsum(tp[mine, 0][order][::-1])[::-1], [0]])
        first = np.searchsorted(ascending, grid, side="left")  # the first prediction scoring >= each grid value
        count = len(ascending) - first
        hits = hits_above[first]
        prec_at[k] = hits / np.maximum(count, 1)
        rec_at[k] = hits / n_ref
    p, r = prec_at.mean(0), rec_at.mean(0)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    best = int(np.argmax(f1))
    return DetectionScores(float(p[best]), float(r[best]), float(ap[:, 0].mean()), float(ap.mean()),
                           len(images), len(ref_cls))
