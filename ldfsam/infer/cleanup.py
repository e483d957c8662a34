"""The 3D clean-up of a predicted label map (islands, holes, one label per tooth) and its way back to the input's
array order."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .fdi import fdi_segment_names
from .postprocess import bounding_box, fill_holes, remove_islands, split_teeth
from .segment_options import SegmentOptions
from .slice_plan import SlicePlan
from .volume_prediction import Prediction


def clean_up(prediction: Prediction, plan: SlicePlan, class_names: List[str],
             options: SegmentOptions) -> Tuple[np.ndarray, Optional[np.ndarray], List[str]]:
    """3D clean-up class by class inside the box holding all teeth (islands, holes; each tooth its own label
    with ``options.split``), then back to the input's array order: (labels, probabilities, segment names)."""
    labels, spacing, n_classes = prediction.labels, plan.spacing, len(class_names)
    box = bounding_box(labels)
    if box is not None and n_classes == 1:
        mask = labels[box].view(bool)  # the 0/1 labels themselves, cleaned in place: no mask-sized copy
        remove_islands(mask, spacing, options.min_island_mm3)
        if options.fill:
            fill_holes(mask)
    elif box is not None:
        sub = labels[box]  # a view: changes land in ``labels``
        for c in range(1, n_classes + 1):
            mask = sub == c
            if not mask.any():
                continue
            remove_islands(mask, spacing, options.min_island_mm3)
            if options.fill:
                fill_holes(mask)
            sub[sub == c] = 0
            sub[mask] = c
    first = class_names[0]
    names = list(class_names) if n_classes > 1 else [first.capitalize() if first == "tooth" else first]
    if options.split:
        labels, _ = split_teeth(labels > 0, spacing, options.min_island_mm3)
        names = fdi_segment_names(plan.orient.invert(labels), plan.grid)  # estimated FDI numbers, "Tooth 11"
    labels_in = np.ascontiguousarray(plan.orient.invert(labels))
    probs = prediction.probabilities
    probs_in = None if probs is None else np.ascontiguousarray(plan.orient.invert(probs))
    return labels_in, probs_in, names
