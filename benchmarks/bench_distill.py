"""Phase 1 at CPU scale: the teacher, a student without distillation and LD students, compared by val mAP50-95.

Data: Kvasir-SEG polyps (real, one of the paper's benchmarks; boxes from the masks' connected components, as the
paper derives boxes from masks) or procedural CBCT phantom slices (teeth). The split follows the paper's protocol
(sorted IDs, one shuffle with seed 2025), then takes the first --val images for validation and the next --train
for training. Images are stored at --imgsz so that loading does not dominate.

    python benchmarks/bench_distill.py --data kvasir --out /tmp/bench_distill

Prints a Markdown table (and writes results.json in --out). Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldfsam.distill.config import DistillConfig, LDConfig, TrainRecipe  # noqa: E402
from ldfsam.distill.run import run_distillation  # noqa: E402

DATA_DIR = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def _write_item(root: Path, split: str, name: str, pixels: np.ndarray, boxes, w: int, h: int) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(root / "images" / split / f"{name}.png")
    rows = [f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
            for x0, y0, x1, y1 in boxes]
    (root / "labels" / split / f"{name}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))


def _mask_boxes(mask: np.ndarray, min_pixels: int):
    from scipy import ndimage

    comps, n = ndimage.label(mask)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is not None and (comps[sl] == i).sum() >= min_pixels:
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return boxes


def kvasir(root: Path, n_train: int, n_val: int, size: int) -> Path:
    from PIL import Image

    src = DATA_DIR / "kvasir-seg"
    ids = sorted(p.stem for p in (src / "images").glob("*.jpg"))
    np.random.default_rng(2025).shuffle(ids)
    for split, chosen in (("val", ids[:n_val]), ("train", ids[n_val:n_val + n_train])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for name in chosen:
            image = Image.open(src / "images" / f"{name}.jpg").convert("RGB")
            mask = np.asarray(Image.open(src / "masks" / f"{name}.jpg").convert("L")) > 127
            w, h = image.size
            # JPEG masks carry a few stray pixels: components under 0.1% of the image are not polyps.
            boxes = _mask_boxes(mask, max(16, int(0.001 * w * h)))
            scale = size / max(w, h)
            small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            _write_item(root, split, name, np.asarray(small), boxes, w, h)
    return _yaml(root)


def phantom(root: Path, n_train: int, n_val: int, size: int) -> Path:
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom

    made = {"train": 0, "val": 0}
    seed = 0
    for split, want in (("val", n_val), ("train", n_train)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        while made[split] < want:
            image, labels = make_phantom(shape=(24, size, size), seed=seed, teeth_fraction=0.8)
            seed += 1
            grey = sitk.GetArrayFromImage(image).astype(np.float32)
            lab = sitk.GetArrayFromImage(labels)
            lo, hi = np.percentile(grey, [0.5, 99.5])
            for z in range(lab.shape[0]):
                if made[split] >= want or not lab[z].any():
                    continue
                pixels = (np.clip((grey[z] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
                boxes = []
                for tooth in np.unique(lab[z])[1:]:  # one box per tooth, over all its components
                    ys, xs = np.nonzero(lab[z] == tooth)
                    boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
                _write_item(root, split, f"{seed}_{z}", pixels, boxes, size, size)
                made[split] += 1
    return _yaml(root)


def _yaml(root: Path) -> Path:
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: object\n")
    return root / "data.yaml"


def _best(run: Path, role: str) -> dict:
    return json.loads((run / role / "state.json").read_text())["best"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("kvasir", "phantom"), default="kvasir")
    p.add_argument("--out", default="/tmp/bench_distill")
    p.add_argument("--train", type=int, default=160)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--teacher-scale", default="s")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--schemes", default="none,ld_main_vlr", help="comma-separated student schemes")
    p.add_argument("--init", default="auto", help="teacher and student initialisation: auto (pretrained weights where "
                   "installed: Ultralytics', AGPL-3.0), scratch, a registry name or a file")
    args = p.parse_args()

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose a new --out", file=sys.stderr)
        return 2
    t0 = time.time()
    data = (kvasir if args.data == "kvasir" else phantom)(out / "data", args.train, args.val, args.imgsz)
    recipe = TrainRecipe(batch=args.batch, imgsz=args.imgsz, close_mosaic=max(1, args.student_epochs // 4))
    cfg = DistillConfig(teacher_scale=args.teacher_scale, student_scale="n", teacher_init=args.init,
                        student_init=args.init,
                        teacher=dataclasses.replace(recipe, epochs=args.teacher_epochs),
                        student=dataclasses.replace(recipe, epochs=args.student_epochs))
    rows, timings = [], {}
    t = time.time()
    teacher = run_distillation(data, out / "teacher_run", cfg, stage="teacher")["teacher"]
    timings["teacher"] = time.time() - t
    rows.append((f"teacher YOLOv8{args.teacher_scale}", args.teacher_epochs, _best(out / "teacher_run", "teacher"),
                 timings["teacher"]))
    for scheme in args.schemes.split(","):
        run = out / f"student_{scheme}"
        scfg = dataclasses.replace(cfg, ld=LDConfig(scheme=scheme))
        t = time.time()
        run_distillation(data, run, scfg, stage="student", teacher_weights=teacher)
        timings[scheme] = time.time() - t
        rows.append((f"student YOLOv8n, {scheme}", args.student_epochs, _best(run, "student"), timings[scheme]))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads " \
              f"{__import__('torch').get_num_threads()}"
    print(f"\n{args.data}: {args.train} train / {args.val} val images at {args.imgsz} px, batch {args.batch}; "
          f"{machine}; total {time.time() - t0:.0f} s\n")
    print("| model | epochs | val mAP50 | val mAP50-95 | best epoch | wall time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, epochs, best, secs in rows:
        print(f"| {name} | {epochs} | {best.get('mAP50', float('nan')):.4f} | {best.get('mAP50_95', float('nan')):.4f}"
              f" | {best.get('best_epoch')} | {secs:.0f} |")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": machine, "rows": [
        {"model": n, "epochs": e, **b, "seconds": s} for n, e, b, s in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
