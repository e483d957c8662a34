"""The demo model's prompt generator against another (e.g. Phase 1 from the COCO-pretrained YOLOv8n) on held-out
phantoms with exact truth and on the real head CT.

    python benchmarks/bench_demo_prompt_generator.py old=ldfsam/resources/demo/ldfsam_demo.safetensors \\
        coco=runs/demo/phase1_coco.safetensors [--phantoms 6 --seed 3000] [--clean] [--ct] [--png ct.png]

Each ``NAME=PATH`` is an LDFSAM model file (its prompt generator is taken) or a prompt generator file (what
``scripts/train_demo_model.py --phase1`` keeps); the first is the reference of the paired differences. Phase 2
never changes the prompt generator, so which slices a model runs on (``has_objects`` at its ``box_conf``, as
``SlicePredictor`` decides) is the same for a prompt generator and any model built on it.

- Phantoms (``ldfsam.data.synthetic``, seeds outside the demo's training seeds 1000-1023; augmented as in training,
  or ``--clean`` like the bundled phantom): per phantom mAP50 and mAP50-95 (``ldfsam.evaluate.detection``, per-tooth
  boxes), the share of tooth slices a model would run on, and of empty slices it would run on; paired differences
  against the first model with bootstrap 95 % CIs over phantoms.
- ``--ct``: the jaw crop of ``ct-head-stanford`` (``$LDFSAM_DATA_DIR``, default ../shared/data): per axial slice
  whether the model would run on it and its boxes, counted inside and outside the tooth rows' crowns (upper 9-17,
  lower 20-26: the rows' edge slices 18, 19 and 27 and the roots, which ``scripts/render_real_ct.py`` lists, count
  as outside); ``--png`` draws the boxes on a few slices, one row per model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOOTH_ROWS = set(range(9, 18)) | set(range(20, 27))
METRICS = ("mAP50", "mAP50_95", "tooth_slices_run", "empty_slices_run")


def load_generator(path: Path):
    """The prompt generator (eval, float32) of an LDFSAM model file or of a prompt generator file."""
    from ldfsam.checkpoint import load_checkpoint, read_document
    from ldfsam.model.prompt_generator import FORMAT, PromptGenerator, load_prompt_generator_weights

    if read_document(path).get("format") == FORMAT:
        state, cfg, _ = load_prompt_generator_weights(path)
        generator = PromptGenerator(cfg)
        generator.load_weights(state, path)
        return generator.float().eval(), 0.25
    loaded = load_checkpoint(path)
    return loaded.model.prompt_generator.float().eval(), loaded.model_cfg.box_conf


def run(generator, images: torch.Tensor, conf: float):
    """(has_objects B bool, detections at conf 0.001 for mAP, detections at ``conf``) on B×3×Y×Y images."""
    has, low, high = [], [], []
    with torch.no_grad():
        for s in range(0, len(images), 16):
            feats = generator.features(images[s:s + 16])
            has.append(generator.has_objects(feats, conf=conf))
            low += [d.numpy() for d in generator.detect_from_features(feats, conf=0.001, max_det=100)]
            high += [d.numpy() for d in generator.detect_from_features(feats, conf=conf, max_det=32)]
    return torch.cat(has).numpy(), low, high


def phantom_scores(data, has, dets, n: int):
    from ldfsam.evaluate.detection import ImageDetections, detection_scores

    rows = []
    for k in range(n):
        idx = np.nonzero(data.phantom == k)[0]
        # Reference boxes are inclusive pixel bounds; detections are continuous corners.
        ims = [ImageDetections(dets[i][:, :4], dets[i][:, 4], np.zeros(len(dets[i]), int),
                               data.boxes[i][:, 1:5].astype(float) + [0, 0, 1, 1], np.zeros(len(data.boxes[i]), int))
               for i in idx]
        sc = detection_scores(ims)
        teeth = [i for i in idx if len(data.boxes[i])]
        empty = [i for i in idx if not len(data.boxes[i])]
        rows.append({"mAP50": sc.mAP50, "mAP50_95": sc.mAP50_95,
                     "tooth_slices_run": float(np.mean(has[teeth])) if teeth else float("nan"),
                     "empty_slices_run": float(np.mean(has[empty])) if empty else float("nan"),
                     "tooth_slices": len(teeth), "empty_slices": len(empty)})
    return rows


def paired(a, b, metric: str, rng) -> str:
    d = np.array([y[metric] - x[metric] for x, y in zip(a, b)])
    boots = [np.nanmean(d[rng.integers(0, len(d), len(d))]) for _ in range(5000)]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return f"{np.nanmean(d):+.3f} [{lo:+.3f}, {hi:+.3f}] (per phantom " + " ".join(f"{x:+.3f}" for x in d) + ")"


def ct_images(path: Path):
    import SimpleITK as sitk

    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.preprocess import intensity_window, normalize, to_model_input

    view = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    pre = PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256)
    return to_model_input(torch.from_numpy(normalize(view, intensity_window(view, pre))), 256).contiguous()


def draw(images: torch.Tensor, found, zs, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(found), len(zs), figsize=(1.9 * len(zs), 2.1 * len(found)), dpi=90)
    axes = np.atleast_2d(axes)
    for r, (name, dets) in enumerate(found.items()):
        for c, z in enumerate(zs):
            ax = axes[r, c]
            ax.imshow(images[z, 0].numpy(), cmap="gray")
            for b in dets[z]:
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=0.8))
            ax.set_title(f"{name}, z={z}: {len(dets[z])} boxes", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    from PIL import Image

    # 64 colours keep the grey and the red boxes: a sixth of the size, for the docs.
    Image.open(out).convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=PATH, the first is the reference")
    ap.add_argument("--phantoms", type=int, default=6, help="held-out phantoms (0: none)")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--clean", action="store_true", help="clean phantoms like the bundled one, not augmented")
    ap.add_argument("--ct", action="store_true", help="also the real head CT's jaw crop")
    ap.add_argument("--png", type=Path, help="with --ct: the boxes on a few slices")
    ap.add_argument("--slices", default="8,12,14,17,20,23,26")
    ap.add_argument("--conf", type=float, help="box confidence for every model (default: each model's box_conf, "
                                                "0.25 for a prompt generator file)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    t0 = time.time()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s)")
    models = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        generator, conf = load_generator(Path(path))
        models[name] = generator, conf if args.conf is None else args.conf
    results = {}
    if args.phantoms:
        from ldfsam.data.augment import AugmentConfig
        from ldfsam.data.config import PreprocessConfig
        from ldfsam.data.synthetic import PhantomSampling, training_slices

        pre = PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256)
        # The demo script's two phantom families (train_demo_model.make_slices).
        sampling = PhantomSampling.clean() if args.clean else PhantomSampling()
        data = training_slices(args.phantoms, 256, args.seed, pre, sampling,
                               AugmentConfig.none() if args.clean else None)
        images = torch.from_numpy(data.images).float().div_(255)[:, None].expand(-1, 3, -1, -1).contiguous()
        print(f"{len(data)} slices of {args.phantoms} {'clean' if args.clean else 'augmented'} phantoms "
              f"(seeds {args.seed}+), {time.time() - t0:.0f} s")
        for name, (generator, conf) in models.items():
            has, low, _ = run(generator, images, conf)
            results[name] = phantom_scores(data, has, low, args.phantoms)
            means = {m: round(float(np.nanmean([r[m] for r in results[name]])), 3) for m in METRICS}
            print(f"{name}: {json.dumps(means)}  ({time.time() - t0:.0f} s)")
        rng = np.random.default_rng(0)
        first = next(iter(results))
        for name in list(results)[1:]:
            for m in METRICS:
                print(f"{name} - {first} {m}: {paired(results[first], results[name], m, rng)}")
    if args.ct:
        data_dir = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
        images = ct_images(data_dir / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
        found = {}
        for name, (generator, conf) in models.items():
            has, _, dets = run(generator, images, conf)
            found[name] = dets
            on = [z for z in range(len(images)) if has[z]]
            outside = [z for z in on if z not in TOOTH_ROWS]
            n = [len(d) for d in dets]
            results[f"{name}/ct"] = {"slices_run": on, "outside_rows": outside,
                                     "boxes_in_rows": sum(n[z] for z in TOOTH_ROWS),
                                     "boxes_outside": sum(k for z, k in enumerate(n) if z not in TOOTH_ROWS)}
            print(f"{name} on the real CT: runs on {len(on)} of {len(images)} slices, {len(outside)} outside the "
                  f"tooth rows {outside}; tooth-row slices not run {sorted(TOOTH_ROWS - set(on))}; boxes in the rows "
                  f"{results[f'{name}/ct']['boxes_in_rows']}, outside {results[f'{name}/ct']['boxes_outside']}")
        if args.png:
            draw(images, found, [int(z) for z in args.slices.split(",")], args.png)
            print(f"wrote {args.png}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
