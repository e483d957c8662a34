"""Evaluation output: the per-case CSV, the summary JSON with bootstrap CIs, and a printed table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..atomic import make_folder, write_text_atomic
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_mean_ci
from .metrics import DISTANCE_METRICS, METRIC_NAMES

CSV_COLUMNS = ("case_id", "class", *METRIC_NAMES, "pred_voxels", "ref_voxels")
ALL_CLASSES = "all"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.6g}"
    return str(value)


def rows_to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """Per-case rows (one per case and class) as CSV text; infinite distances are written ``inf``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row.get(c, "")) for c in CSV_COLUMNS])
    return buf.getvalue()


def summarize(rows: Sequence[Dict[str, Any]], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              tolerance_mm: float | None = None) -> Dict[str, Any]:
    """Mean, std and 95 % bootstrap CI of every metric, per class and over all rows ("all").

    With one class, "all" equals that class. Each statistic counts the finite values used (``n``) and the
    non-finite ones left out (``excluded``, distances where one mask is empty).
    """
    classes: List[str] = []
    for row in rows:
        if row["class"] not in classes:
            classes.append(row["class"])
    groups = {c: [r for r in rows if r["class"] == c] for c in classes}
    if len(classes) > 1:
        groups[ALL_CLASSES] = list(rows)
    per_class = {
        name: {m: bootstrap_mean_ci([float(r[m]) for r in group], resamples=resamples, seed=seed)
               for m in METRIC_NAMES}
        for name, group in groups.items()
    }
    return {
        "cases": len({r["case_id"] for r in rows}),
        "rows": len(rows),
        "classes": classes,
        "bootstrap": {"resamples": resamples, "confidence": 0.95, "seed": seed},
        "surface_tolerance_mm": tolerance_mm,
        "metrics": per_class,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_table(summary: Dict[str, Any]) -> str:
    """The summary as a fixed-width table: one line per class and metric, mean [95 % CI] and exclusions."""
    lines = [f"{'class':<12} {'metric':<9} {'mean':>10} {'95% CI':>23} {'n':>6} {'excl':>5}"]
    for cls, metrics in summary["metrics"].items():
        for name in METRIC_NAMES:
            s = metrics[name]
            unit = " mm" if name in DISTANCE_METRICS else ""
            ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"
            lines.append(f"{cls:<12} {name + unit:<9} {_fmt(s['mean']):>10} {ci:>23} {s['n']:>6} {s['excluded']:>5}")
    return "\n".join(lines)


def write_report(out_dir: Path, rows: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> Dict[str, Path]:
    """Write ``per_case.csv`` and ``summary.json`` into ``out_dir`` atomically; returns their paths."""
    out_dir = make_folder(out_dir)
    paths = {"per_case": out_dir / "per_case.csv", "summary": out_dir / "summary.json"}
    write_text_atomic(paths["per_case"], rows_to_csv(rows))
    write_text_atomic(paths["summary"], json.dumps(_json_safe(summary), indent=2) + "\n")
    return paths
