"""Prompted segmentation on the real head CT: each upper tooth of ``ct-head-stanford``'s jaw crop prompted as a new
user would, and where propagation starts and stops (docs/images/prompted_ct_*.png).

    python scripts/prompted_real_ct.py                         # a box on one slice around each upper crown
    python scripts/prompted_real_ct.py --kinds box,rough,clicks --teeth 11,16,23 --json out.json
    python scripts/prompted_real_ct.py --no-stop-rules --teeth 11 # propagation without the stop rules

Prompts per tooth (``--kinds``):

* ``box``: a box on slice 13 around the tooth's crown, placed by eye (``UPPER``);
* ``rough``: the same box with each side moved by 10-30 % of the box's size, inwards or outwards at random;
* ``clicks``: no box; on slice 13 one include click in the crown and 2-5 include clicks at random in a square of
  three times the box around it (the noisy-prompt protocol of ``benchmarks/bench_noisy_prompts.py``);
* ``box3d``: the two lower teeth with a 3D box each (``LOWER_3D``), as before the stop rules.

The teeth are numbered (FDI) by counting from the midline on slice 13. Slice 0 is the top of the crop; the
crop's voxels are 1 × 1 × 2 mm, origin (0, 0, 120) mm, identity direction, so LPS mm = (x, y, 120 + 2z). The
upper row occupies slices 5-17 (root apices about 5-8, crown tips 16-17, read on sagittal cuts), slice 18 is the
gap between the rows and the lower crowns start at 19. The CT is read from ``$LDFSAM_DATA_DIR`` (default
``../shared/data``) and never copied into the repository. Prints per structure the slices segmented, why
propagation stopped on each side, and how many slices lie outside the upper row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PRIMARY = 13
UPPER_ROW = (5, 17)
# FDI: (x0, x1, y0, y1) inclusive voxels on slice PRIMARY, around the crown.
UPPER = {17: (80, 90, 66, 74), 16: (82, 91, 56, 65), 15: (89, 95, 44, 51), 14: (91, 98, 38, 44),
         13: (94, 101, 32, 39), 12: (99, 105, 29, 35), 11: (105, 111, 27, 34), 21: (112, 118, 27, 34),
         22: (118, 123, 29, 35), 23: (123, 129, 32, 38), 24: (125, 131, 38, 44), 25: (126, 132, 44, 51)}
# name: (x0, x1, y0, y1, z0, z1) inclusive voxels.
LOWER_3D = {"lower incisor": (109, 116, 33, 44, 21, 25), "lower molar": (130, 142, 60, 73, 23, 27)}


def lps(x: float, y: float, z: float) -> list:
    return [x, y, 120.0 + 2.0 * z]


def rough(box, rng: np.random.Generator):
    x0, x1, y0, y1 = box
    out = []
    for lo, hi in ((x0, x1), (y0, y1)):
        size = hi - lo + 1
        lo = int(round(lo + rng.choice((-1, 1)) * rng.uniform(0.1, 0.3) * size))
        hi = int(round(hi + rng.choice((-1, 1)) * rng.uniform(0.1, 0.3) * size))
        lo, hi = sorted((lo, hi))
        out += [lo, max(hi, lo + 1)]
    return tuple(out)


def structure(fdi: int, kind: str) -> dict:
    """A prompts-file entry, and the in-plane box (x0, x1, y0, y1) it is drawn around."""
    box = UPPER[fdi]
    rng = np.random.default_rng([fdi, 23])
    if kind == "rough":
        box = rough(box, rng)
    x0, x1, y0, y1 = box
    if kind in ("box", "rough"):
        return {"name": f"{fdi} {kind}", "box": {"min": lps(x0 - 0.5, y0 - 0.5, PRIMARY),
                                                 "max": lps(x1 + 0.5, y1 + 0.5, PRIMARY)}}, box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0 + 1, y1 - y0 + 1
    points = [{"position": lps(cx, cy, PRIMARY), "label": "include"}]
    for _ in range(int(rng.integers(2, 6))):
        points.append({"position": lps(round(cx + rng.uniform(-1.5, 1.5) * w), round(cy + rng.uniform(-1.5, 1.5) * h),
                                       PRIMARY), "label": "include"})
    return {"name": f"{fdi} {kind}", "points": points}, box


def picture(ct: np.ndarray, masks: dict, out: Path, title: str) -> None:
    """Per structure, a sagittal cut through the mask's middle (x) on the crop's upper half, with the mask's
    outline (green), the prompted slice (orange) and the upper row's ends (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(masks)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, (mask, box)) in zip(axes.flat, masks.items()):
        x0, x1, y0, y1 = box
        xm = (x0 + x1) // 2
        if mask[PRIMARY].any():
            xm = int(np.round(np.nonzero(mask[PRIMARY])[1].mean()))
        ya, yb = max(0, y0 - 14), min(ct.shape[1], y1 + 15)
        za, zb = 0, 30
        ax.imshow(ct[za:zb, ya:yb, xm], cmap="gray", vmin=800, vmax=3200, aspect=2.0,
                  extent=(ya - .5, yb - .5, zb - .5, za - .5))
        if mask[za:zb, ya:yb, xm].any():
            ax.contour(np.arange(ya, yb), np.arange(za, zb), mask[za:zb, ya:yb, xm], levels=[0.5], colors="lime",
                       linewidths=1.0)
        ax.axhline(PRIMARY, color="orange", lw=0.8)
        for z in (UPPER_ROW[0] - 0.5, UPPER_ROW[1] + 0.5):
            ax.axhline(z, color="white", lw=0.6, ls=":")
        zs = np.nonzero(mask.any((1, 2)))[0]
        span = f"{zs.min()}-{zs.max()}" if len(zs) else "empty"
        beyond = (f", {len(zs) - np.count_nonzero((zs >= UPPER_ROW[0]) & (zs <= UPPER_ROW[1]))} out"
                  if len(zs) else "")
        ax.set_title(f"{name}: {span}{beyond}", fontsize=8)
        ax.axis("on")
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> int:
    from ldfsam.infer.propagate import PropagationConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    p.add_argument("--input", type=Path, default=data / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--teeth", default=",".join(str(t) for t in UPPER), help="FDI numbers of upper teeth")
    p.add_argument("--kinds", default="box", help="box, rough, clicks, box3d (comma-separated)")
    p.add_argument("--no-stop-rules", action="store_true", help="propagate as without the stop rules")
    p.add_argument("--tag", default="", help="added to the pictures' names")
    p.add_argument("--json", type=Path, help="also write the per-structure results (and what the rules measured)")
    p.add_argument("--prior", default=None, help="SPD's prior: a model with a saliency head (e.g. ldfsam-demo)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    args = p.parse_args()
    import SimpleITK as sitk
    import torch

    from ldfsam.infer.prompted import PromptedSession
    from ldfsam.infer.prompts import parse_prompts

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    kinds = args.kinds.split(",")
    entries, boxes = [], {}
    for kind in kinds:
        if kind == "box3d":
            for name, (x0, x1, y0, y1, z0, z1) in LOWER_3D.items():
                entries.append({"name": name, "box": {"min": lps(x0 - 0.5, y0 - 0.5, z0 - 0.5),
                                                      "max": lps(x1 + 0.5, y1 + 0.5, z1 + 0.5)}})
                boxes[name] = (x0, x1, y0, y1)
            continue
        for fdi in (int(t) for t in args.teeth.split(",")):
            entry, box = structure(fdi, kind)
            entries.append(entry)
            boxes[entry["name"]] = box
    session = PromptedSession(args.input, propagation=PropagationConfig(stop_rules=not args.no_stop_rules),
                              prior=args.prior, precision=args.precision)
    ct = sitk.GetArrayFromImage(session.image)
    out, masks = [], {}
    t_all = time.perf_counter()
    for prompt in parse_prompts({"structures": entries}):
        t = time.perf_counter()
        result = session.segment(prompt)
        mask = result.mask
        zs = np.nonzero(mask.any((1, 2)))[0]
        first, last = (int(zs.min()), int(zs.max())) if len(zs) else (-1, -1)
        outside = int(len(zs) - np.count_nonzero((zs >= UPPER_ROW[0]) & (zs <= UPPER_ROW[1])))
        row = {"name": prompt.name, "first": first, "last": last, "voxels": int(mask.sum()),
               "outside_upper_row": outside, "stopped": {str(k): v for k, v in result.stopped.items()},
               "seconds": time.perf_counter() - t, "trace": {str(z): s for z, s in result.trace.items()},
               "not_used": [d for d in result.validation if d["action"] != "kept"]}
        out.append(row)
        masks[prompt.name] = (mask, boxes[prompt.name])
        print(f"{prompt.name}: slices {first}-{last} ({len(zs)}), {outside} outside the upper row "
              f"{UPPER_ROW[0]}-{UPPER_ROW[1]}, {row['voxels']} voxels; stopped above: {result.stopped.get(-1)}, "
              f"below: {result.stopped.get(1)}; {row['seconds']:.0f} s", flush=True)
    seconds = time.perf_counter() - t_all
    print(f"{seconds:.0f} s for {len(out)} structures, {session.sam.encoded} slices encoded; load average "
          f"{os.getloadavg()}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rules = "without the stop rules" if args.no_stop_rules else "with the stop rules"
    rules += f", prior {args.prior}" if args.prior else ", no prior"
    for kind in kinds:
        chosen = {n: m for n, m in masks.items() if n.endswith(f" {kind}") or (kind == "box3d" and n in LOWER_3D)}
        if chosen:
            name = f"prompted_ct_{kind}{args.tag}.png"
            picture(ct, chosen, args.out_dir / name, f"{kind} prompts on slice {PRIMARY}, {rules}"
                    if kind != "box3d" else f"3D boxes, {rules}")
            print(f"wrote {args.out_dir / name}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "stop_rules": not args.no_stop_rules,
                                         "structures": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
