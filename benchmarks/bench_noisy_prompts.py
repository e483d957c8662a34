"""Benchmark prompted segmentation with simulated noisy prompts (the SPD paper's protocol) on phantom CBCT volumes
with exact per-tooth truth: how much each part of the prompted mode is worth when clicks and boxes are rough.

    python benchmarks/bench_noisy_prompts.py                          # 2 volumes, 3 teeth each
    python benchmarks/bench_noisy_prompts.py --seeds 9001 --teeth 11,16 --kinds box --json out.json

Prompts per tooth (deterministic for the volume's seed and the tooth):

* ``box``: a box on one slice, the tooth's crown slice (a quarter of the tooth's length from its occlusal end),
  as a user draws one around a crown. Noisy: each side of the tooth's bounding box moved by 10-30 % of the box's
  size along its axis, inwards or outwards at random. Clean: the bounding box grown by one voxel.
* ``clicks``: include clicks on every slice of the tooth. Noisy: one true-positive click (a voxel of the tooth)
  plus 2-5 random clicks (uniform in a square of three times the tooth's size around it, so many land off the
  tooth) per slice. Clean: one click per slice at the voxel of the tooth farthest from its outline.

Rows (``ROWS``): (a) today's prompted mode without the stop rules (``PropagationConfig(stop_rules=False)``), (a')
with them, (b) + SPD's local prompt validation and (c) + CPD, with the demo model's saliency head as the prior
(``ldfsam.infer.context_prompts.PriorPropagator``), and the clean prompts as the ceiling. ``--psc-prior`` and
``--control-prior`` add (d), CPD with a prior trained with PSC, and (d0), the same training without PSC
(``scripts/train_saliency_head.py --pairs N --psc W`` and ``--psc 0``). A row is a name,
whether its prompts are noisy, the propagation settings and keyword arguments for ``PromptedSession`` (e.g. a
prior), so rows for more parts are one line each. Per tooth: Dice, HD95 (``ldfsam.evaluate.metrics``) and the
first and last slice of the result against the tooth's. The volumes use seeds that no training set of the
project uses (its datasets use 0-99; the demo model's saliency head 3000-3002).

All rows of a volume share one encoding per slice: the encoder sees whole slices (``--view-context 0``; the
default view is a square of 3× the box around it, which would make every jittered box a new set of encodings).
Prints the machine and the load average; ``--json`` also writes every per-tooth result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldfsam.cpu_precision import cpu_name  # noqa: E402
from ldfsam.infer.prompts import VoxelPrompt  # noqa: E402
from ldfsam.infer.propagate import PropagationConfig  # noqa: E402


@dataclass
class Row:
    """One way of segmenting the same prompts."""

    name: str
    noisy: bool = True
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    session: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of PromptedSession (e.g. prior=...)
    cpd: bool = True  # with a prior: CPD's consensus prompts across slices (False: local validation alone)


ROWS = [
    Row("(a) prompted, no stop rules", propagation=PropagationConfig(stop_rules=False)),
    Row("(a') + stop rules"),
    # SPD with the bundled demo model's saliency head as the prior (docs/segmentation.md, "Rough prompts").
    Row("(b) + local validation (prior)", session={"prior": "ldfsam-demo"}, cpd=False),
    Row("(c) + CPD (prior)", session={"prior": "ldfsam-demo"}),
    Row("clean prompts, no stop rules", noisy=False, propagation=PropagationConfig(stop_rules=False)),
    Row("clean prompts + stop rules (ceiling)", noisy=False),
]


def crown_slice(zs: np.ndarray, upper: bool) -> int:
    """The slice a quarter of the tooth's length from its occlusal end (upper teeth: the low z end here)."""
    n = int(zs.max() - zs.min())
    return int(round(zs.min() + 0.25 * n)) if upper else int(round(zs.max() - 0.25 * n))


def box_prompt(name: str, tooth: np.ndarray, upper: bool, noisy: bool, rng: np.random.Generator,
               nz: int) -> VoxelPrompt:
    zs = np.nonzero(tooth.any((1, 2)))[0]
    z = crown_slice(zs, upper)
    ys, xs = np.nonzero(tooth[z])
    ny, nx = tooth.shape[1:]
    y0, y1, x0, x1 = float(ys.min()), float(ys.max()), float(xs.min()), float(xs.max())
    if noisy:
        out = []
        for lo, hi, n in ((y0, y1, ny), (x0, x1, nx)):
            size = hi - lo + 1
            lo = lo + rng.choice((-1, 1)) * rng.uniform(0.1, 0.3) * size
            hi = hi + rng.choice((-1, 1)) * rng.uniform(0.1, 0.3) * size
            lo, hi = sorted((float(np.clip(round(lo), 0, n - 1)), float(np.clip(round(hi), 0, n - 1))))
            out += [lo, hi if hi > lo else lo + 1]
        y0, y1, x0, x1 = out
    else:
        y0, y1, x0, x1 = max(0.0, y0 - 1), min(ny - 1.0, y1 + 1), max(0.0, x0 - 1), min(nx - 1.0, x1 + 1)
    return VoxelPrompt(name, (z, z, int(y0), int(y1), int(x0), int(x1)), False, [], (0, nz - 1))


def click_prompt(name: str, tooth: np.ndarray, noisy: bool, rng: np.random.Generator, nz: int) -> VoxelPrompt:
    from scipy import ndimage

    points: List[Tuple[int, float, float, bool]] = []
    ny, nx = tooth.shape[1:]
    for z in np.nonzero(tooth.any((1, 2)))[0]:
        ys, xs = np.nonzero(tooth[z])
        if noisy:
            k = int(rng.integers(len(ys)))
            points.append((int(z), float(ys[k]), float(xs[k]), True))
            hy, hx = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            cy, cx = (ys.max() + ys.min()) / 2, (xs.max() + xs.min()) / 2
            for _ in range(int(rng.integers(2, 6))):
                y = float(np.clip(round(cy + rng.uniform(-1.5, 1.5) * hy), 0, ny - 1))
                x = float(np.clip(round(cx + rng.uniform(-1.5, 1.5) * hx), 0, nx - 1))
                points.append((int(z), y, x, True))
        else:
            depth = ndimage.distance_transform_edt(tooth[z])
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            points.append((int(z), float(y), float(x), True))
    return VoxelPrompt(name, None, False, points, (0, nz - 1))


def evaluate(mask: np.ndarray, tooth: np.ndarray, spacing_zyx) -> Dict[str, float]:
    from ldfsam.evaluate.metrics import pair_metrics

    m = pair_metrics(mask, tooth, spacing_zyx)
    zt = np.nonzero(tooth.any((1, 2)))[0]
    zr = np.nonzero(mask.any((1, 2)))[0]
    first, last = (int(zr.min()), int(zr.max())) if len(zr) else (-1, -1)
    return {"dice": m.dice, "hd95": m.hd95, "first": first, "last": last, "tooth_first": int(zt.min()),
            "tooth_last": int(zt.max()), "slices_beyond": (int(np.count_nonzero(zr < zt.min()))
                                                            + int(np.count_nonzero(zr > zt.max())))}


def run_volume(seed: int, teeth: List[int], kinds: List[str], rows: List[Row], args) -> List[Dict[str, Any]]:
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer.prompted import PromptedSession
    from ldfsam.infer.propagate import Propagator

    image, labels = make_phantom(tuple(args.shape), spacing=tuple(args.spacing), seed=seed)
    truth = sitk.GetArrayFromImage(labels)
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    sessions: Dict[str, Any] = {}
    out = []
    for row in rows:
        key = json.dumps(sorted(row.session.items()), default=str)  # the values too: one session per prior
        if key not in sessions:
            session = PromptedSession(image, precision=args.precision, **row.session)
            if sessions:  # the same LiteMedSAM on the same volume: share the slice embeddings
                session._sam = next(iter(sessions.values())).sam
            sessions[key] = session
        session = sessions[key]
        cfg = replace(row.propagation, view_context=args.view_context)
        for fdi in teeth:
            tooth = truth == fdi
            if not tooth.any():
                print(f"seed {seed}: tooth {fdi} is missing", flush=True)
                continue
            for kind in kinds:
                rng = np.random.default_rng([seed, fdi, kinds.index(kind)])
                if kind == "box":
                    prompt = box_prompt(str(fdi), tooth, fdi < 30, row.noisy, rng, truth.shape[0])
                else:
                    prompt = click_prompt(str(fdi), tooth, row.noisy, rng, truth.shape[0])
                encoded, t = session.sam.encoded, time.perf_counter()
                if session.prior is not None:
                    from ldfsam.infer.context_prompts import PriorPropagator

                    result = PriorPropagator(session.sam, prompt, session.grid.spacing, cfg, session.maps,
                                             cpd=row.cpd).run()
                else:
                    result = Propagator(session.sam, prompt, session.grid.spacing, cfg).run()
                r = {"row": row.name, "seed": seed, "tooth": fdi, "kind": kind, "seconds": time.perf_counter() - t,
                     "encoded": session.sam.encoded - encoded,
                     "stopped": {str(k): v for k, v in result.stopped.items()},
                     **evaluate(result.mask, tooth, spacing_zyx)}
                out.append(r)
                print(f"seed {seed} tooth {fdi} {kind:6s} {row.name:38s} Dice {r['dice']:.3f} HD95 {r['hd95']:6.2f} "
                      f"slices {r['first']}-{r['last']} (tooth {r['tooth_first']}-{r['tooth_last']}) "
                      f"{r['seconds']:.1f} s", flush=True)
    return out


def table(results: List[Dict[str, Any]], rows: List[Row], kinds: List[str]) -> str:
    lines = ["| prompts | row | teeth | Dice | HD95 mm | slices beyond the tooth (mean, max) | ends within 1 slice |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind in kinds:
        for row in rows:
            rs = [r for r in results if r["row"] == row.name and r["kind"] == kind]
            if not rs:
                continue
            hd = [r["hd95"] for r in rs if np.isfinite(r["hd95"])]
            ends = sum(abs(r["first"] - r["tooth_first"]) <= 1 and abs(r["last"] - r["tooth_last"]) <= 1 for r in rs)
            beyond = [r["slices_beyond"] for r in rs]
            empty = f" ({len(rs) - len(hd)} empty)" if len(hd) < len(rs) else ""
            lines.append(f"| {kind} | {row.name} | {len(rs)} | {np.mean([r['dice'] for r in rs]):.3f} | "
                         f"{np.mean(hd) if hd else float('nan'):.2f}{empty} | {np.mean(beyond):.1f}, {max(beyond)} | "
                         f"{ends}/{len(rs)} |")
    return "\n".join(lines)


def main(rows: Optional[List[Row]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="9001,9002", help="phantom seeds (comma-separated)")
    ap.add_argument("--teeth", default="11,16,23,36", help="FDI numbers (comma-separated)")
    ap.add_argument("--kinds", default="box,clicks", help="box, clicks or both")
    ap.add_argument("--shape", type=int, nargs=3, default=(40, 160, 160), metavar=("Z", "Y", "X"))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.5, 0.5, 1.0), metavar=("X", "Y", "Z"))
    ap.add_argument("--view-context", type=float, default=0.0, help="the encoder's view (0: whole slices)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--rows", help="only the rows whose names start with one of these (comma-separated), e.g. "
                    "\"(a),(a'),clean\"")
    ap.add_argument("--json", type=Path, help="also write every result here")
    ap.add_argument("--psc-prior", type=Path, help="row (d): a prior trained with PSC (scripts/"
                    "train_saliency_head.py --psc W)")
    ap.add_argument("--control-prior", type=Path, help="row (d0): the same recipe without PSC (--psc 0), so (d0) "
                    "-> (d) is PSC's contribution")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = list(rows or ROWS)
    at = max(i for i, r in enumerate(rows) if r.session) + 1 if any(r.session for r in rows) else len(rows)
    for name, path in (("(d0) + CPD, prior retrained without PSC", args.control_prior),
                       ("(d) + CPD, PSC-trained prior", args.psc_prior)):
        if path is not None:
            rows.insert(at, Row(name, session={"prior": str(path)}))
            at += 1
    if args.rows:
        rows = [r for r in rows if r.name.startswith(tuple(args.rows.split(",")))]
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "python": platform.python_version(), "load_before": os.getloadavg()}
    print(f"machine: {machine}", flush=True)
    kinds = args.kinds.split(",")
    teeth = [int(t) for t in args.teeth.split(",")]
    t = time.perf_counter()
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results += run_volume(seed, teeth, kinds, rows, args)
    machine["load_after"] = os.getloadavg()
    machine["seconds"] = time.perf_counter() - t
    print(table(results, rows, kinds))
    print(f"{machine['seconds']:.0f} s; load average before {machine['load_before']}, after {machine['load_after']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: (list(v) if isinstance(v, tuple) else v)
                                                                       for k, v in vars(args).items() if k != "json"},
                                         "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
