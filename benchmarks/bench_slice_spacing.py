"""What ``--slice-spacing`` costs in accuracy and buys in time: the bundled demo model on thin-sliced phantoms,
the model on every slice against the model on slices further apart (Dice against the phantom's truth and
against every-slice inference, model slices, seconds).

    python benchmarks/bench_slice_spacing.py
    python benchmarks/bench_slice_spacing.py --spacings native auto 1.27 --fractions 0.4 --json out.json

The phantoms are those of ``bench_segment.py``: SLICES×SIZE×SIZE voxels at 0.25 mm, teeth on the given fraction
of the slices (``ldfsam.data.phantom``, seed 1 unless ``--seed``). "1px" is every candidate one model pixel
apart (SIZE × 0.25 mm / 256); "auto" chooses among the same candidates coarse to fine, and is also compared
with "1px".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dice(a, b) -> float:
    import numpy as np

    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * np.count_nonzero(a & b) / total if total else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacings", nargs="+", default=["native", "auto", "1px", "1.0", "2px", "1.9", "2.54"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.4, 1.0])
    ap.add_argument("--slices", type=int, default=420)
    ap.add_argument("--size", type=int, default=650)
    ap.add_argument("--seed", type=int, default=1, help="phantom seed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer import segment_volume
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    torch.set_num_threads(args.threads)
    spacings = [s if s in ("native", "auto") or s.endswith("px") else float(s) for s in args.spacings]
    if spacings[0] != "native":
        spacings.insert(0, "native")  # the reference
    if "auto" in spacings and "1px" in spacings:  # auto chooses among 1px's candidates: compare the two
        spacings.remove("1px")
        spacings.insert(1, "1px")
    runs = []
    with tempfile.TemporaryDirectory(prefix="ldfsam-bench-") as work:
        for fraction in args.fractions:
            image, labels = make_phantom((args.slices, args.size, args.size), spacing=0.25, seed=args.seed,
                                         teeth_fraction=fraction)
            path = Path(work) / f"phantom_{fraction}.nrrd"
            sitk.WriteImage(image, str(path))
            truth = sitk.GetArrayFromImage(labels) > 0
            del image, labels
            native = every_candidate = None
            for spacing in spacings:
                t = time.perf_counter()
                r = segment_volume(path, None, slice_spacing=spacing, device="cpu")
                seconds = time.perf_counter() - t
                mask = r.labels > 0
                if native is None:
                    native = mask
                if spacing == "1px":
                    every_candidate = mask
                run = {"teeth_fraction": fraction, "slice_spacing": spacing, "model_slices": r.model_slices,
                       "encoded": r.slices_with_teeth, "dice_truth": dice(mask, truth),
                       "dice_native": dice(mask, native), "seconds": seconds}
                if spacing == "auto" and every_candidate is not None:
                    run["dice_1px"] = dice(mask, every_candidate)
                runs.append(run)
                print(f"teeth {fraction:.0%} spacing {spacing}: model on {r.model_slices} slices "
                      f"({r.slices_with_teeth} encoded), Dice {run['dice_truth']:.4f} against the truth, "
                      f"{run['dice_native']:.4f} against every slice"
                      + (f", {run['dice_1px']:.4f} against 1px" if "dice_1px" in run else "")
                      + f", {seconds:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
