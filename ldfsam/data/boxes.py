"""Tight axis-aligned boxes around each annotated instance of a 2D mask (paper section 4.2).

A box is (x_min, y_min, x_max, y_max) in pixel indices, inclusive: the extreme columns and rows of the instance's
foreground pixels. Instances are 8-connected components of each class; when an instance map is given (per-tooth
FDI labels), touching teeth of different numbers are separate instances.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)


def instance_boxes(class_map: np.ndarray, num_classes: int, instances: Optional[np.ndarray] = None,
                   min_pixels: int = 1, with_ids: bool = False):
    """Boxes of one slice: K×5 int array (class 0-based, x_min, y_min, x_max, y_max), sorted by class, y, x.

    class_map: (H, W) class indices (0 background, 1..C). instances: optional (H, W) label values that split a
    class into instances (e.g. FDI numbers); each connected piece of each value is one box. Components smaller
    than ``min_pixels`` are dropped. ``with_ids`` also returns each box's instance value (K,).
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class_map must be 2D (H, W), got shape {class_map.shape}")
    rows = []
    for c in range(1, num_classes + 1):
        fg = class_map == c
        if not fg.any():
            continue
        if instances is None:
            groups = [(c, fg)]
        else:
            groups = [(int(v), fg & (instances == v)) for v in np.unique(instances[fg])]
        for value, g in groups:
            comp, n = ndimage.label(g, structure=_EIGHT)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            for i, sl in enumerate(ndimage.find_objects(comp), start=1):
                if sl is None or sizes[i] < min_pixels:
                    continue
                ys, xs = sl
                rows.append((c - 1, xs.start, ys.start, xs.stop - 1, ys.stop - 1, value))
    out = np.array(rows, np.int64).reshape(-1, 6)
    out = out[np.lexsort((out[:, 1], out[:, 2], out[:, 0]))]
    return (out[:, :5], out[:, 5]) if with_ids else out[:, :5]


def boxes_to_yolo(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel boxes (K×5 as from :func:`instance_boxes`) -> YOLO rows (class, xc, yc, w, h) normalised to [0, 1].

    Pixel ``i`` covers [i, i+1), so a box spans x_min .. x_max + 1 in continuous coordinates.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 0]
    out[:, 1] = (boxes[:, 1] + boxes[:, 3] + 1) / 2.0 / width
    out[:, 2] = (boxes[:, 2] + boxes[:, 4] + 1) / 2.0 / height
    out[:, 3] = (boxes[:, 3] - boxes[:, 1] + 1) / width
    out[:, 4] = (boxes[:, 4] - boxes[:, 2] + 1) / height
    return out


def scale_boxes(boxes: np.ndarray, from_hw, to_hw) -> np.ndarray:
    """Pixel boxes K×5 at size ``from_hw`` as continuous (x0, y0, x1, y1) K×4 at size ``to_hw`` (e.g. 640)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.stack([boxes[:, 1] * sx, boxes[:, 2] * sy, (boxes[:, 3] + 1) * sx, (boxes[:, 4] + 1) * sy], axis=1)
