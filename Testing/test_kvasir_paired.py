"""benchmarks/kvasir_paired.py: paired differences read from a bench_kvasir run's per-image CSVs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script

from ldfsam.evaluate.metrics import METRIC_NAMES
from ldfsam.evaluate.report import summarize, write_report


def _row(tmp_path, budget, mode, dice, refine=False):
    folder = tmp_path / f"b{round(budget * 100):03d}-{mode.removesuffix('+refine')}"
    rows = [{"case_id": f"c{i:02d}", "class": "polyp", **{m: 1.0 for m in METRIC_NAMES}, "dice": d}
            for i, d in enumerate(dice)]
    write_report(folder / ("eval-val-refine" if refine else "eval-val"), rows, summarize(rows, resamples=10))
    mean = float(np.mean(dice))
    return {"budget": budget, "mode": mode, "model": str(folder / "model.safetensors"),
            "dice": {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}}


def test_differences_are_per_image_and_count_wins(tmp_path):
    bench = load_script("benchmarks/kvasir_paired.py")
    rng = np.random.default_rng(0)
    box = rng.uniform(0.5, 0.9, 40)
    ds = box + 0.05  # better on every image
    ds[:10] -= 0.2  # ... but for ten
    runs = {"b100/box": _row(tmp_path, 1.0, "box", box), "b100/dense+sparse": _row(tmp_path, 1.0, "dense+sparse", ds),
            "b100/dense+sparse+refine": _row(tmp_path, 1.0, "dense+sparse+refine", ds + 0.01, refine=True)}
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    rows = bench.compare(json.loads((tmp_path / "results.json").read_text()))
    vs_box = {r["a"]: r["paired"] for r in rows if r["dice"] is not None}
    assert vs_box["box"] is None
    p = vs_box["dense+sparse"]
    assert p["mean"] == pytest.approx(0.05 - 0.2 * 10 / 40) and p["better"] == 30 and p["worse"] == 10
    assert p["ci_low"] < p["mean"] < p["ci_high"]
    refine = next(r["paired"] for r in rows if r["dice"] is None and r["a"] == "dense+sparse+refine")
    assert refine["mean"] == pytest.approx(0.01) and refine["better"] == 40
    assert bench.main([str(tmp_path)]) == 0


def test_rows_of_different_images_are_refused(tmp_path):
    bench = load_script("benchmarks/kvasir_paired.py")
    a = {"c1": 0.5, "c2": 0.6}
    with pytest.raises(SystemExit, match="different images"):
        bench.paired(a, {"c1": 0.5, "c3": 0.7})


def test_rows_are_compared_with_the_same_rows_of_another_run(tmp_path):
    bench = load_script("benchmarks/kvasir_paired.py")
    box = np.linspace(0.5, 0.9, 20)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    runs = {"b010/box": _row(ours, 0.1, "box", box + 0.02), "b010/sparse": _row(ours, 0.1, "sparse", box)}
    other = {"b010/box": _row(theirs, 0.1, "box", box), "b100/sparse": _row(theirs, 1.0, "sparse", box)}
    rows = bench.against({"runs": runs}, {"runs": other})
    assert len(rows) == 1 and rows[0]["a"] == "box"  # sparse is at another budget there
    assert rows[0]["paired"]["mean"] == pytest.approx(0.02) and rows[0]["paired"]["better"] == 20
    for folder, r in ((ours, runs), (theirs, other)):
        folder.joinpath("results.json").write_text(json.dumps({"runs": r}))
    assert bench.main([str(ours), "--against", str(theirs)]) == 0
