"""Demo models against each other: segmentation Dice on held-out phantoms (paired, per volume) and what each marks
on the real head CT, outside the tooth rows and inside them.

    python benchmarks/bench_demo_models.py bundled=ldfsam-demo coco=/tmp/run/ldfsam_demo.safetensors \\
        coco40=/tmp/run/ldfsam_demo.safetensors@0.4 [--phantoms 6 --seed 3000] [--clean 5 --clean-seed 3100] \\
        [--ct] [--precision auto] [--json out.json]

Each ``NAME=MODEL[@CONF]`` is a registry name or a model file, ``@CONF`` its box confidence for this run (which
slices the model runs on: ``has_objects`` at ``box_conf``; the file's own value otherwise); the first model is the
reference of the paired differences. Every model segments the same volumes with the same options (the product's
automatic pipeline, ``ldfsam.infer.segment_image``: the encoder the decoder was trained on, ``--precision``).

- Phantoms (seeds outside the demo model's training seeds 1000-1023): ``--phantoms`` augmented ones with non-tooth
  anatomy as in training, ``--clean`` ones like the bundled phantom (``scripts/train_demo_model.py``'s two
  families), and the bundled phantom itself (seed 7). Per volume: Dice of tooth against the truth, voxels marked on
  slices without teeth. Paired differences against the first model, bootstrap 95 % CIs over volumes
  (``ldfsam.evaluate.bootstrap.paired_difference``).
- ``--ct``: the jaw crop of ``ct-head-stanford`` (``$LDFSAM_DATA_DIR``, default ../shared/data), no truth: voxels
  per axial slice, summed outside the tooth rows (slices 0-4, 18 and 31-52 of the crop: skull base, the gap
  between the rows, the mandible's body below the roots, the spine; ``scripts/render_real_ct.py`` says what lies
  where) and inside them (upper row 5-17, lower row 19-30, roots included); and outside the crowns' slices only
  (upper 9-17, lower 20-26, as ``bench_demo_prompt_generator.py`` counts).
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
ROWS = set(range(5, 18)) | set(range(19, 31))
CROWNS = set(range(9, 18)) | set(range(20, 27))


def parse_model(spec: str):
    name, _, rest = spec.partition("=")
    if not rest:
        raise SystemExit(f"{spec}: give NAME=MODEL[@CONF]")
    model, _, conf = rest.partition("@")
    return name, model, float(conf) if conf else None


def phantoms(n_aug: int, seed_aug: int, n_clean: int, seed_clean: int):
    """(case id, sitk image, truth z×y×x bool) of the held-out phantoms."""
    import SimpleITK as sitk

    from ldfsam.data.augment import AugmentConfig
    from ldfsam.data.synthetic import PhantomSampling, augmented_phantom

    for family, n, seed0, sampling, augment in (
            ("aug", n_aug, seed_aug, PhantomSampling(), None),
            ("clean", n_clean, seed_clean, PhantomSampling.clean(), AugmentConfig.none())):
        for seed in range(seed0, seed0 + n):
            result, spacing = augmented_phantom(seed, sampling, augment)
            image = sitk.GetImageFromArray(np.asarray(result.image, np.float32))
            image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
            yield f"{family}-{seed}", image, np.asarray(result.labels) > 0
    demo = REPO / "ldfsam" / "resources" / "demo"
    image = sitk.ReadImage(str(demo / "phantom.nii.gz"))
    yield "demo-7", image, sitk.GetArrayFromImage(sitk.ReadImage(str(demo / "phantom_labels.nii.gz"))) > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL[@CONF]; the first is the reference")
    ap.add_argument("--phantoms", type=int, default=6, help="augmented held-out phantoms")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--clean", type=int, default=5, help="clean held-out phantoms")
    ap.add_argument("--clean-seed", type=int, default=3100)
    ap.add_argument("--ct", action="store_true", help="also the real head CT's jaw crop")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import SimpleITK as sitk

    from ldfsam.evaluate.bootstrap import paired_difference
    from ldfsam.evaluate.metrics import overlap_metrics
    from ldfsam.infer.model_loading import load_model
    from ldfsam.infer.pipeline import segment_image
    from ldfsam.infer.segment_options import SegmentOptions

    specs = [parse_model(s) for s in args.models]
    models = {}
    for name, path, conf in specs:
        loaded = load_model(path)
        if conf is not None:
            loaded.model.cfg.box_conf = conf
        models[name] = loaded
        print(f"{name}: {path}, box confidence {loaded.model.cfg.box_conf}", flush=True)
    options = SegmentOptions(precision=args.precision)
    out = {"models": {n: {"model": p, "box_conf": models[n].model.cfg.box_conf} for n, p, _ in specs},
           "precision": args.precision, "threads": args.threads, "cases": {}, "cpu_s": {n: 0.0 for n in models}}
    t0 = time.time()
    for case, image, truth in phantoms(args.phantoms, args.seed, args.clean, args.clean_seed):
        empty = ~truth.reshape(len(truth), -1).any(1)
        row = {}
        for name, loaded in models.items():
            c0 = time.process_time()
            labels = np.asarray(segment_image(image, loaded, options=options, device="cpu", name=case).labels) > 0
            out["cpu_s"][name] += time.process_time() - c0
            row[name] = {"dice": overlap_metrics(labels, truth)["dice"], "empty_slice_voxels": int(labels[empty].sum())}
        out["cases"][case] = row
        print(f"[{time.time() - t0:6.0f} s] {case}: " + "  ".join(
            f"{n} {r['dice']:.4f} ({r['empty_slice_voxels']} on empty slices)" for n, r in row.items()), flush=True)
    ref = specs[0][0]
    out["paired"] = {}
    for family in ("aug", "clean", "all"):
        ids = [c for c in out["cases"] if family == "all" or c.startswith(family + "-")]
        if not ids:
            continue
        for name in models:
            scores = {c: out["cases"][c][name]["dice"] for c in ids}
            mean = float(np.mean(list(scores.values())))
            line = f"{family:5s} {name}: mean Dice {mean:.4f} over {len(ids)}"
            if name != ref:
                d = paired_difference(scores, {c: out["cases"][c][ref]["dice"] for c in ids})
                out["paired"][f"{family}:{name}-{ref}"] = d
                line += (f"; - {ref} {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], better on "
                         f"{d['better']}, worse on {d['worse']}")
            print(line, flush=True)
    if args.ct:
        data = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
        path = data / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz"
        image = sitk.ReadImage(str(path))
        out["ct"] = {}
        for name, loaded in models.items():
            labels = np.asarray(segment_image(image, loaded, options=options, device="cpu", name=path.name).labels) > 0
            per = {int(z): int(labels[z].sum()) for z in range(len(labels)) if labels[z].any()}
            outside = sum(v for z, v in per.items() if z not in ROWS)
            off_crowns = sum(v for z, v in per.items() if z not in CROWNS)
            out["ct"][name] = {"voxels": int(labels.sum()), "outside_rows": outside, "outside_crowns": off_crowns,
                               "per_slice": per}
            print(f"ct {name}: {int(labels.sum())} voxels, {outside} outside the rows (5-17, 19-30), {off_crowns} "
                  f"outside the crowns' slices (9-17, 20-26); per slice "
                  + " ".join(f"{z}:{v}" for z, v in per.items()), flush=True)
    print("CPU s per model (segmentation): " + ", ".join(f"{n} {s:.0f}" for n, s in out["cpu_s"].items()))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
