"""Paired differences between the rows of a ``bench_kvasir.py`` run: per budget, every row against the detected-box
baseline and the comparisons the docs' tables quote (dense+sparse against sparse, dense and none, auto against
dense+sparse, each refinement pass against its row), as a markdown table.

A difference is the mean over the validation images of (Dice of row A − Dice of row B) on the same images, with
the percentile bootstrap CI of that mean and the number of images on which A is better and worse (B = 1000, seed
2025, ``ldfsam.evaluate.bootstrap.paired_difference``). The per-image Dice is read from each run's
``eval-val/per_case.csv`` (``eval-val-refine`` for the ``+refine`` rows); nothing is recomputed.

    python benchmarks/kvasir_paired.py /work/runs/kvasir-lite            # the table
    python benchmarks/kvasir_paired.py DIR --json DIR/paired.json         # also kept as JSON
    python benchmarks/kvasir_paired.py DIR --against OTHER                # also each row − the same row of OTHER
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldfsam.evaluate.bootstrap import paired_difference  # noqa: E402

# (A, B) pairs beyond "every row − box"; a pair whose rows the run lacks is skipped.
PAIRS = (("dense+sparse", "sparse"), ("dense+sparse", "dense"), ("dense+sparse", "none"), ("dense", "none"),
         ("auto", "dense+sparse"), ("auto+refine", "dense+sparse+refine"))


def per_image_dice(run: dict) -> Dict[str, float]:
    """case id -> Dice of one row of results.json (its model's folder, eval-val or eval-val-refine)."""
    folder = Path(run["model"]).parent / ("eval-val-refine" if run["mode"].endswith("+refine") else "eval-val")
    with open(folder / "per_case.csv", encoding="utf-8") as f:
        return {r["case_id"]: float(r["dice"]) for r in csv.DictReader(f) if r["class"] != "all"}


def paired(a: Dict[str, float], b: Dict[str, float]) -> dict:
    """Mean of A − B over the images both scored, its bootstrap CI, and how many images A wins and loses."""
    try:
        return paired_difference(a, b)
    except ValueError as e:
        raise SystemExit(f"the rows scored different images: {e}") from None


def _fmt(p: Optional[dict]) -> str:
    if p is None:
        return ""
    return (f"{p['mean']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] "
            f"({p['better']} better, {p['worse']} worse)")


def compare(results: dict, baseline: str = "box") -> List[dict]:
    """One entry per row (its Dice, CI and the difference to the budget's ``baseline``) and per extra pair."""
    by_budget: Dict[float, Dict[str, dict]] = {}
    for run in results["runs"].values():
        by_budget.setdefault(float(run["budget"]), {})[run["mode"]] = run
    out: List[dict] = []
    for budget, runs in sorted(by_budget.items(), reverse=True):
        dice = {mode: per_image_dice(run) for mode, run in runs.items()}
        for mode, run in runs.items():
            vs = None if mode == baseline or baseline not in dice else paired(dice[mode], dice[baseline])
            out.append({"budget": budget, "a": mode, "b": baseline, "dice": run["dice"], "paired": vs})
        pairs: List[Tuple[str, str]] = list(PAIRS) + [(m, m.removesuffix("+refine")) for m in runs
                                                      if m.endswith("+refine")]
        for a, b in pairs:
            if a in dice and b in dice:
                out.append({"budget": budget, "a": a, "b": b, "dice": None, "paired": paired(dice[a], dice[b])})
    return out


def against(results: dict, other: dict) -> List[dict]:
    """Each row of ``results`` − the row of the same budget and mode in ``other`` (another run on the same
    validation images, e.g. with another Phase 1), for the rows both runs have."""
    theirs = {(float(r["budget"]), r["mode"]): r for r in other["runs"].values()}
    out: List[dict] = []
    for run in results["runs"].values():
        key = (float(run["budget"]), run["mode"])
        if key in theirs:
            out.append({"budget": key[0], "a": run["mode"], "b": f"{run['mode']} (other run)", "dice": None,
                        "paired": paired(per_image_dice(run), per_image_dice(theirs[key]))})
    return out


def table(rows: List[dict], baseline: str) -> str:
    lines = [f"| budget | prompt | val Dice [95 % CI] | − {baseline} (paired) |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r["dice"] is not None:
            d = r["dice"]
            lines.append(f"| {r['budget']:.0%} | {r['a']} | {d['mean']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}]"
                         f" | {_fmt(r['paired'])} |")
    lines += ["", "| budget | A − B | paired difference [95 % CI] |", "| --- | --- | --- |"]
    for r in rows:
        if r["dice"] is None:
            lines.append(f"| {r['budget']:.0%} | {r['a']} − {r['b']} | {_fmt(r['paired'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the benchmark folder (its results.json)")
    p.add_argument("--baseline", default="box", help="the row every other row is compared with (default box)")
    p.add_argument("--against", type=Path, help="another benchmark folder: also each row − the same row there")
    p.add_argument("--json", type=Path, help="also write the comparisons here")
    args = p.parse_args(argv)
    results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    rows = compare(results, args.baseline)
    if args.against:
        rows += against(results, json.loads((args.against / "results.json").read_text(encoding="utf-8")))
    print(table(rows, args.baseline))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
