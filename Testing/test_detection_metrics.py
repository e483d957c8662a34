"""Phase 1's detection metrics (ldfsam.evaluate.detection): exact cases worked by hand, and agreement with
ultralytics' own validation (its matching and ap_per_class) on random detections."""

from __future__ import annotations

import numpy as np
import pytest

from ldfsam.evaluate.detection import ImageDetections, average_precision, box_iou, detection_scores, match

A, B = [0, 0, 10, 10], [20, 20, 30, 40]


def _image(pred, scores, refs, pred_cls=None, ref_cls=None) -> ImageDetections:
    pred, refs = np.array(pred, float).reshape(-1, 4), np.array(refs, float).reshape(-1, 4)
    return ImageDetections(pred, np.array(scores, float), np.zeros(len(pred)) if pred_cls is None else
                           np.array(pred_cls), refs, np.zeros(len(refs)) if ref_cls is None else np.array(ref_cls))


def test_predictions_equal_to_the_references_score_one():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(5):
        xy = rng.uniform(0, 50, (4, 2))
        boxes = np.hstack([xy, xy + rng.uniform(3, 20, (4, 2))])
        cls = rng.integers(0, 3, 4)
        images.append(_image(boxes, rng.uniform(0.3, 1, 4), boxes, cls, cls))
    s = detection_scores(images)
    assert (s.precision, s.recall, s.mAP50, s.mAP50_95) == (1.0, 1.0, 1.0, 1.0)
    assert s.references == 20 and s.images == 5


def test_shifted_box_counts_only_at_thresholds_its_iou_reaches():
    # A 10x10 reference and the same box shifted 2 px: IoU = 80 / 120 = 2/3, a hit at 0.5, 0.55, 0.6 and 0.65.
    image = _image([[2, 0, 12, 10]], [0.9], [A])
    assert box_iou(image.pred_boxes, image.ref_boxes)[0, 0] == pytest.approx(2 / 3)
    assert match(image)[0].tolist() == [True] * 4 + [False] * 6
    s = detection_scores([image])
    assert s.mAP50 == 1.0 and s.mAP50_95 == pytest.approx(0.4)


def test_false_positive_between_hits_by_hand():
    # Scores 0.9 (hits A), 0.8 (misses), 0.7 (hits B): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. Interpolated
    # precision is 1 for the 51 recall points 0..0.50 and 2/3 for the 50 points 0.51..1: AP = (51 + 50 * 2/3) / 101.
    image = _image([A, [50, 50, 60, 60], B], [0.9, 0.8, 0.7], [A, B])
    s = detection_scores([image])
    assert s.mAP50 == pytest.approx((51 + 50 * 2 / 3) / 101) and s.mAP50_95 == pytest.approx(s.mAP50)
    # Best F1 over score thresholds: keep all three (P 2/3, R 1, F1 0.8) rather than the first (P 1, R 1/2).
    assert (s.precision, s.recall) == (pytest.approx(2 / 3), 1.0)


def test_matching_is_per_class_and_one_to_one():
    # Two predictions on one reference: the higher score takes it, the other is a false positive; a prediction
    # of another class never matches.
    image = _image([A, A, B], [0.6, 0.9, 0.8], [A, B], pred_cls=[0, 0, 1], ref_cls=[0, 0])
    tp = match(image)[:, 0]
    assert tp.tolist() == [False, True, False]
    assert average_precision(np.array([True, False]), np.array([0.9, 0.6]), 2) == pytest.approx(51 / 101)


def test_no_predictions_and_no_references():
    assert detection_scores([_image(np.zeros((0, 4)), [], [A])]).mAP50 == 0.0
    s = detection_scores([_image([A], [0.5], np.zeros((0, 4)))])
    assert np.isnan(s.mAP50) and s.references == 0


def test_agrees_with_ultralytics_validation():
    """The same detections scored end to end by ultralytics (its matching, ap_per_class) and by the project."""
    import torch

    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class
    from ultralytics.utils.metrics import box_iou as ultralytics_iou

    rng = np.random.default_rng(3)
    images = []
    for _ in range(30):
        n_ref = int(rng.integers(1, 6))
        xy = rng.uniform(0, 80, (n_ref, 2))
        refs = np.hstack([xy, xy + rng.uniform(5, 30, (n_ref, 2))])
        ref_cls = rng.integers(0, 2, n_ref)
        # Jittered copies of most references plus random boxes, with random scores.
        keep = rng.random(n_ref) < 0.8
        jitter = refs[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        xy = rng.uniform(0, 80, (2, 2))
        noise = np.hstack([xy, xy + rng.uniform(5, 30, (2, 2))])
        pred = np.vstack([jitter, noise])
        pred_cls = np.concatenate([ref_cls[keep], rng.integers(0, 2, 2)])
        images.append(_image(pred, rng.random(len(pred)), refs, pred_cls, ref_cls))
    ours = detection_scores(images)
    validator = DetectionValidator()
    tp = np.concatenate([validator.match_predictions(
        torch.tensor(im.pred_classes), torch.tensor(im.ref_classes),
        ultralytics_iou(torch.tensor(im.ref_boxes, dtype=torch.float32),
                        torch.tensor(im.pred_boxes, dtype=torch.float32))).cpu().numpy() for im in images])
    cat = lambda key: np.concatenate([getattr(im, key) for im in images])  # noqa: E731
    result = ap_per_class(tp, cat("scores"), cat("pred_classes"), cat("ref_classes"))
    ap = result[5]
    assert 0.05 < ours.mAP50_95 < ours.mAP50 < 1.0  # a case where the definitions could disagree
    # ultralytics integrates the same 101-point envelope with the trapezoidal rule instead of averaging it.
    assert ours.mAP50 == pytest.approx(ap[:, 0].mean(), abs=0.01)
    assert ours.mAP50_95 == pytest.approx(ap.mean(), abs=0.01)
    # Precision and recall at the best mean F1: the same choice; ultralytics interpolates its curves.
    assert ours.precision == pytest.approx(result[2].mean(), abs=0.03)
    assert ours.recall == pytest.approx(result[3].mean(), abs=0.03)
