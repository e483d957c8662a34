"""``RUN/report.html``: one self-contained page about a training run (figures embedded as base64 PNG).

Sections (each an element with its id): ``configuration``, ``time`` (stages and wall time), ``machine``,
``phase1`` (curves and best scores of teacher and student), ``phase2`` (curves), ``alpha`` (the learnt dense
prompt scale), ``evaluation`` (table with 95 % CIs) and ``cases`` (best and worst test cases as pictures). A
section whose stage has not run yet says so. Everything is read from the run folder, so ``ldfsam report RUN``
rebuilds the page at any time.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import write_text_atomic
from . import figures
from .run import STAGES, RunFolder

PathLike = Union[str, Path]
SECTIONS = ("configuration", "time", "machine", "phase1", "phase2", "alpha", "evaluation", "cases")

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
pre{background:#f8f8f8;padding:8px;overflow:auto;font-size:12px;max-height:420px}
img{max-width:100%}.note{color:#666}.case{display:inline-block;margin:6px;vertical-align:top}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_csv(path: Path) -> List[Dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


# -- sections --------------------------------------------------------------------------------------------------
def _configuration(folder: RunFolder) -> str:
    doc = _read_json(folder.config) or {}
    return f"<pre>{html.escape(json.dumps(doc.get('config', doc), indent=2))}</pre>"


def _time(stages: Dict[str, Dict[str, Any]]) -> str:
    rows = []
    for stage in STAGES:
        info = stages.get(stage)
        when = (datetime.datetime.fromtimestamp(info["finished"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                if info else None)
        rows.append((stage, "finished" if info else "not run yet", info and float(info["seconds"]), when))
    total = sum(float(i["seconds"]) for i in stages.values())
    return (_table(("stage", "status", "wall time (s)", "finished (UTC)"), rows)
            + _note(f"total wall time of the finishing attempts: {total:.1f} s ({total / 60:.1f} min)"))


def _machine(stages: Dict[str, Dict[str, Any]]) -> str:
    from .machine import machine_info

    machines: List[Tuple[str, Dict[str, Any]]] = []
    for stage in STAGES:
        m = stages.get(stage, {}).get("machine")
        if m and all(m != other for _, other in machines):
            machines.append((stage, m))
    if not machines:
        machines.append(("this report", machine_info()))
    keys = ["cpu", "cores", "threads", "gpu", "torch", "python", "platform", "ldfsam"]
    return _table(["", *[f"from {s}" for s, _ in machines]],
                  [(k, *[m.get(k) for _, m in machines]) for k in keys])


def _phase1(folder: RunFolder) -> str:
    from ..distill.run import best_scores, read_history

    histories = {role: read_history(folder.phase1 / role) for role in ("teacher", "student")}
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return _note("Phase 1 has not run yet.")
    best = best_scores(folder.phase1)
    rows = [(role, b.get("best_epoch"), b.get("precision"), b.get("recall"), b.get("mAP50"), b.get("mAP50_95"))
            for role, b in best.items()]
    return (_img(figures.phase1_curves(histories), "Phase 1 curves")
            + _table(("model", "best epoch", "precision", "recall", "mAP50", "mAP50-95"), rows)
            + _note("Validation scores of ldfsam.evaluate.detection (COCO-style 101-point AP); the checkpoint "
                    "kept is the epoch with the best mAP50-95."))


def _phase2(folder: RunFolder) -> str:
    rows = _read_csv(folder.phase2 / "log.csv")
    if not rows:
        return _note("Phase 2 has not run yet.")
    dice = [(float(r["val_dice"]), r["epoch"]) for r in rows if r.get("val_dice") not in (None, "", "nan")]
    best = f"best validation Dice {max(dice)[0]:.4f} (epoch {max(dice)[1]})" if dice else "no validation"
    return _img(figures.phase2_curves(rows), "Phase 2 curves") + _note(f"{len(rows)} epochs; {best}.")


def learnt_alpha(model: Path) -> Optional[Dict[str, float]]:
    """The dense prompt scale α of each feature prompt head in a model file (None when it has none)."""
    from safetensors import safe_open

    if not model.is_file():
        return None
    found = {}
    with safe_open(str(model), framework="pt") as f:
        for key in f.keys():
            if key == "alpha" or key.endswith(".alpha"):
                found[key] = float(f.get_tensor(key).float().reshape(-1)[0])
    return found or None


def _alpha(folder: RunFolder) -> str:
    alpha = learnt_alpha(folder.model)
    if alpha is None:
        return _note("No fine-tuned model with a dense feature prompt yet.")
    return (_table(("parameter", "α"), sorted(alpha.items()))
            + _note("α scales the dense feature prompt added to SAM's image embedding; it starts at 0."))


def _evaluation(folder: RunFolder) -> str:
    from ..evaluate.metrics import DISTANCE_METRICS, METRIC_NAMES

    summary = _read_json(folder.evaluation / "summary.json")
    if not summary:
        return _note("The evaluation has not run yet.")
    rows = []
    for cls, metrics in summary["metrics"].items():
        for name in METRIC_NAMES:
            s = metrics[name]
            unit = " (mm)" if name in DISTANCE_METRICS else ""
            rows.append((cls, name + unit, s.get("mean"), s.get("ci_low"), s.get("ci_high"), s.get("n"),
                         s.get("excluded")))
    boot = summary.get("bootstrap", {})
    return (_table(("class", "metric", "mean", "95 % CI low", "95 % CI high", "n", "excluded"), rows)
            + _note(f"{summary.get('cases')} test cases; percentile bootstrap of the mean, "
                    f"B = {boot.get('resamples')}, seed {boot.get('seed')}.") + _comparison(folder, summary))


def _comparison(folder: RunFolder, new: Dict[str, Any]) -> str:
    """A run started from a model (``--from``): the starting model and the new one on the same held-out cases."""
    old = _read_json(folder.evaluation / "starting_model" / "summary.json")
    if not old:
        return ""
    cfg = folder.read_config()
    rows = []
    for cls, metrics in new["metrics"].items():
        for name in ("dice", "iou", "hd95", "assd"):
            if name not in metrics:
                continue
            a, b = (old["metrics"].get(cls) or {}).get(name) or {}, metrics[name]
            rows.append((cls, name, a.get("mean"), f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]",
                         b.get("mean"), f"[{_fmt(b.get('ci_low'))}, {_fmt(b.get('ci_high'))}]"))
    return (f"<h3>Starting model ({html.escape(str(cfg.init_model_name))}) and the new model on the same "
            f"{new.get('cases')} held-out case(s)</h3>"
            + _table(("class", "metric", "starting model", "95 % CI", "new model", "95 % CI"), rows))


def rank_cases(per_case: Sequence[Dict[str, str]], shown: int) -> Tuple[List[Tuple[str, float]],
                                                                        List[Tuple[str, float]]]:
    """(best, worst): up to ``shown`` cases each by mean Dice over classes, without a case in both."""
    scores: Dict[str, List[float]] = {}
    for row in per_case:
        try:
            scores.setdefault(row["case_id"], []).append(float(row["dice"]))
        except (KeyError, ValueError):
            continue
    ranked = sorted(((cid, float(np.mean(v))) for cid, v in scores.items()), key=lambda t: (-t[1], t[0]))
    best = ranked[:shown]
    worst = [c for c in reversed(ranked) if c not in best][:shown]
    return best, worst


def _case_arrays(folder: RunFolder, case_id: str):
    """(image, reference mask, predicted mask, spacing) of a test case, or a reason it cannot be shown."""
    from ..data.prepared import PreparedData
    from ..evaluate.model_eval import select_cases

    cfg = folder.read_config()
    prepared = PreparedData(folder.prepared_dir(cfg))
    kind, cases = select_cases(Path(prepared.manifest["source"]), None, "test", ids=[case_id])
    case = cases[0]
    if kind == "2d":
        from PIL import Image

        from ..data.images import read_mask_image, read_rgb

        pred_path = folder.predictions / f"{case_id}.png"
        pred = np.asarray(Image.open(pred_path)) > 0
        return read_rgb(case.image), read_mask_image(case.label), pred, None
    import SimpleITK as sitk

    from ..data.labels import map_labels
    from ..data.volume import read_volume

    image = read_volume(case.image)
    ref, _ = map_labels(sitk.GetArrayFromImage(read_volume(case.label, label=True)), prepared.preprocess,
                        case.label)
    pred = sitk.GetArrayFromImage(read_volume(folder.predictions / f"{case_id}.nii.gz", label=True))
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return sitk.GetArrayFromImage(image), ref > 0, pred > 0, spacing


def _cases(folder: RunFolder, shown: int) -> str:
    per_case = _read_csv(folder.evaluation / "per_case.csv")
    if not per_case:
        return _note("The evaluation has not run yet.")
    best, worst = rank_cases(per_case, shown)
    parts = [_note("Reference outlined in green, prediction in red; volumes: axial, coronal and sagittal slices "
                   "through the reference's centre.")]
    for title, group in (("Best", best), ("Worst", worst)):
        parts.append(f"<h3>{title}</h3>")
        for case_id, dice in group:
            label = f"{case_id}: Dice {dice:.4f}"
            try:
                image, ref, pred, spacing = _case_arrays(folder, case_id)
                if ref.shape != pred.shape:
                    raise ValueError(f"prediction grid {pred.shape} differs from the reference's {ref.shape}")
                parts.append(f'<div class="case">{_img(figures.case_figure(image, ref, pred, label, spacing), label)}'
                             "</div>")
            except Exception as e:  # a missing file must not cost the rest of the report
                parts.append(_note(f"{label}: cannot be shown ({e})"))
    return "".join(parts)


def build_html(run: PathLike) -> str:
    """The report page of the run folder ``run``."""
    folder = RunFolder(run)
    cfg = folder.read_config()
    stages = folder.read_stages()
    body = {
        "configuration": ("Configuration", _configuration(folder)),
        "time": ("Stages and time", _time(stages)),
        "machine": ("Machine", _machine(stages)),
        "phase1": ("Phase 1: prompt generator (teacher and student)", _phase1(folder)),
        "phase2": ("Phase 2: segmentation fine-tuning", _phase2(folder)),
        "alpha": ("Learnt α", _alpha(folder)),
        "evaluation": (f"Evaluation on the {cfg.evaluate.split} split", _evaluation(folder)),
        "cases": ("Best and worst cases", _cases(folder, cfg.evaluate.cases_shown)),
    }
    built = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                       for key, (title, content) in body.items())
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>LDFSAM training report: "
            f"{html.escape(folder.root.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>LDFSAM training report</h1><p>Run folder <code>{html.escape(str(folder.root.resolve()))}</code>, "
            f"data <code>{html.escape(cfg.data)}</code>; built {built}.</p>{sections}</body></html>\n")


def write_report(run: PathLike) -> Path:
    """Write ``run/report.html`` atomically; returns its path."""
    folder = RunFolder(run)
    page = build_html(folder.root)
    write_text_atomic(folder.report, page)
    return folder.report
