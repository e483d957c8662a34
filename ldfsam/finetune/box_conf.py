"""The detection confidence of box mode, chosen on held-out images instead of a fixed 0.25.

In ``box`` (and ``zero-shot``) mode SAM is prompted with the prompt generator's boxes scoring at least
``ModelConfig.box_conf``. A detector fine-tuned briefly on few images ranks its boxes well but scores them low
(on Kvasir-SEG at the 10 % budget a COCO-initialised YOLOv8n, validation mAP50 0.27, scored no box above 0.05):
at the default 0.25 it then prompts nothing and the box baseline predicts empty masks. The threshold is a
setting of the detector, so it is chosen on images that neither trained it nor score the result: a run's
checkpoint-selection images.

The number of boxes kept per image (``ModelConfig.max_boxes``) is chosen with it: at a low threshold a weak
detector keeps dozens of boxes per image, each a decoder row in training (32 boxes × batch 8 at the 256 grid
took 20 GB and was killed), most of them wrong.

Criterion: the mean over those images of the Dice between the union of the detected boxes (the best ``k``
scoring at least the threshold) and the union of the reference masks' boxes, both painted on the YOLO grid: how
well the box prompts cover the objects, which is what box mode hands to SAM. An image without references scores
1 when nothing is detected, 0 otherwise. Ties go to fewer boxes, then to the middle of the tied thresholds (on
the grid, the lower of two middles): the highest tied threshold sits just under the weakest right box of these few
images, so on new images the weakest objects fall below it and lose their only box (Kvasir-SEG, 100 %, YOLO 384:
one box at 0.5 left 10 of 80 validation images without a box, 0.802 zero-shot Dice against 0.895 at 0.075), and the
lowest sits just above the strongest wrong box.

A fine-tuning run (``ldfsam finetune``, ``ldfsam train``) makes this choice before training, on its validation
images (``FinetuneConfig.box_conf = "auto"``, the default; :func:`choose_for_run`), and saves it in the model:
box mode trains and segments with it, and every mode uses it where inference asks the detector whether an image
holds an object at all (skipping empty CBCT slices).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

# Thresholds tried, low to high: detectors trained briefly score in the hundredths.
CONF_GRID: Tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3,
                                0.4, 0.5)
BOX_COUNTS: Tuple[int, ...] = (1, 2, 3, 5, 8, 16, 32)
# A run chooses on at most this many of its validation images (evenly spread): one YOLO pass each.
MAX_RUN_ITEMS = 256


def middle_tied(scores: Dict[float, float]) -> float:
    """The threshold in the middle of those tied at the best score (the lower of two middles): the highest tied
    threshold sits just under the weakest right detection of a few selection images, the lowest just above noise."""
    best = max(scores.values())
    tied = sorted(t for t, v in scores.items() if v == best)
    return tied[(len(tied) - 1) // 2]


def _paint(boxes: np.ndarray, size: int) -> np.ndarray:
    grid = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), size), min(int(np.ceil(y1)), size)
        if c1 > c0 and r1 > r0:
            grid[r0:r1, c0:c1] = True
    return grid


def box_cover_dice(detections: Sequence[np.ndarray], references: Sequence[np.ndarray], size: int,
                   conf: float, max_boxes: int) -> float:
    """Mean Dice of the detected boxes' union (N_i×6: x0, y0, x1, y1, score, cls; score ≥ ``conf``, the best
    ``max_boxes``) against the reference boxes' union (M_i×4+) per image, on a ``size``×``size`` grid."""
    dices = []
    for det, ref in zip(detections, references):
        det = np.asarray(det, float).reshape(-1, 6)
        det = det[det[:, 4] >= conf]
        det = det[np.argsort(-det[:, 4], kind="stable")][:max_boxes]
        ref = np.asarray(ref, float)
        if ref.size == 0:
            dices.append(1.0 if len(det) == 0 else 0.0)
            continue
        a, b = _paint(det[:, :4], size), _paint(ref[:, :4], size)
        dices.append(2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0))
    return float(np.mean(dices)) if dices else float("nan")


@torch.no_grad()
def choose_box_prompts(generator: torch.nn.Module, dataset, max_boxes: int = 32, grid: Sequence[float] = CONF_GRID,
                       counts: Sequence[int] = BOX_COUNTS) -> Tuple[float, int, Dict[Tuple[float, int], float]]:
    """(threshold, boxes per image, {(threshold, boxes): box-cover Dice}) of the prompt generator
    (``.detect(yolo B×3×Y×Y, conf, max_det)``) on ``dataset`` (items with ``yolo_image`` 3×Y×Y and ``mask``
    C×S×S), the box count at most ``max_boxes``: see the module docstring."""
    from .gt_boxes import boxes_from_masks

    if len(dataset) == 0:
        raise ValueError("no images to choose the box confidence on")
    counts = sorted({min(int(k), max_boxes) for k in counts})
    was_training = generator.training
    generator.eval()
    detections, references, size = [], [], 0
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            yolo, mask = item["yolo_image"], item["mask"]
            size = int(yolo.shape[-1])
            detections.append(generator.detect(yolo[None], conf=min(grid), max_det=max_boxes)[0].cpu().numpy())
            references.append(boxes_from_masks(mask[None], size / mask.shape[-1])[0].numpy())
    finally:
        generator.train(was_training)
    scores = {(float(t), k): box_cover_dice(detections, references, size, float(t), k) for t in grid for k in counts}
    best = max(scores.values())
    k = min(n for (_, n), v in scores.items() if v == best)
    return middle_tied({t: v for (t, n), v in scores.items() if n == k}), k, scores


def choose_for_run(cfg: Any, model: torch.nn.Module, data: Any) -> Optional[Dict[str, Any]]:
    """A fine-tuning run's choice (``FinetuneConfig.box_conf == "auto"``): the confidence and box count of the
    model's prompt generator chosen on the run's validation images (at most ``MAX_RUN_ITEMS``), written into
    ``model.cfg``; returns what was chosen, for the run's records. None, and ``model.cfg`` left as it is, with
    ``box_conf = "model"``, with reference-mask box prompts (an oracle keeps every box) or without validation
    images (nothing held out to choose on)."""
    from .data import _limit

    if cfg.box_conf != "auto" or cfg.box_prompts == "ground_truth" or data.val is None or len(data.val) == 0:
        return None
    images = _limit(data.val, MAX_RUN_ITEMS)
    conf, k, scores = choose_box_prompts(model.prompt_generator, images, model.cfg.max_boxes)
    at_default = max((v for (t, _), v in scores.items() if t == model.cfg.box_conf), default=None)
    chosen = {"conf": conf, "max_boxes": k, "box_cover_dice": scores[conf, k], "images": len(images),
              "replaced": {"conf": model.cfg.box_conf, "max_boxes": model.cfg.max_boxes,
                           "box_cover_dice": at_default}}
    model.cfg.box_conf, model.cfg.max_boxes = conf, k
    return chosen
