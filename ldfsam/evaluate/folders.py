"""Evaluate a folder of predicted masks against a folder of reference masks, matched by case id (file name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .masks import check_same_grid, class_masks, list_masks, read_mask
from .metrics import DEFAULT_TOLERANCE_MM, pair_metrics

ClassSpec = List[Tuple[str, List[int]]]


def parse_class_spec(items: Sequence[str]) -> ClassSpec:
    """``["upper=3", "lower=4", "teeth=3,4"]`` -> [("upper", [3]), ...]."""
    spec: ClassSpec = []
    for item in items:
        name, sep, values = item.partition("=")
        try:
            labels = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            labels = []
        if not sep or not name or not labels:
            raise InputError(f"class '{item}' must look like NAME=LABEL[,LABEL...] with integer labels")
        spec.append((name, labels))
    return spec


def case_rows(case: str, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], classes: Optional[ClassSpec],
              per_label: bool = False, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> List[Dict[str, Any]]:
    """Metric rows of one case: one per class (``classes``), per label value (``per_label``) or foreground."""
    if classes:
        pairs = [(name, class_masks(pred, [(name, v)])[name], class_masks(ref, [(name, v)])[name])
                 for name, v in classes]
    elif per_label:
        values = sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
        pairs = [(f"label_{v}", pred == v, ref == v) for v in values]
    else:
        pairs = [("foreground", pred != 0, ref != 0)]
    rows = []
    for name, p, r in pairs:
        m = pair_metrics(p, r, spacing, tolerance_mm)
        rows.append({"case_id": case, "class": name, **m.as_dict()})
    return rows


def evaluate_folders(pred_dir: Path, ref_dir: Path, classes: Optional[ClassSpec] = None, per_label: bool = False,
                     tolerance_mm: float = DEFAULT_TOLERANCE_MM, spacing_2d: float = 1.0,
                     allow_missing: bool = False, progress=None) -> List[Dict[str, Any]]:
    """Rows of metrics for every reference case. A reference without a prediction is an error unless
    ``allow_missing``, in which case the prediction counts as empty. Predictions without a reference are ignored.
    """
    refs = list_masks(ref_dir)
    preds = list_masks(pred_dir)
    if not refs:
        raise InputError("holds no mask files (.nii.gz, .nrrd, .seg.nrrd, .mha, .png, .jpg, ...)", ref_dir)
    missing = sorted(set(refs) - set(preds))
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"no prediction for {len(missing)} reference case(s): {shown}", pred_dir)
    rows: List[Dict[str, Any]] = []
    if progress is not None:
        progress.start("evaluate", total=len(refs), message=f"evaluating {len(refs)} cases")
    for i, (cid, ref_path) in enumerate(sorted(refs.items())):
        ref = read_mask(ref_path, spacing_2d)
        if cid in preds:
            pred = read_mask(preds[cid], spacing_2d)
            check_same_grid(pred, ref)
            pred_arr = pred.array
        else:
            pred_arr = np.zeros_like(ref.array)
        rows.extend(case_rows(cid, pred_arr, ref.array, ref.spacing, classes, per_label, tolerance_mm))
        if progress is not None:
            progress.update("evaluate", i + 1, len(refs), case=cid, dice=rows[-1]["dice"])
    return rows
