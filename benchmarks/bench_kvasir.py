"""Kvasir-SEG at CPU scale: Dense+Sparse Feature Prompts against the box baseline (a small paper Table 1).

Pipeline, all with seed 2025 and one annotation budget:

1. ``prepare``: the 800 Kvasir-SEG training images, split by the paper protocol (sorted ids, one shuffle with
   seed 2025, 10 % held out for validation); the budget's nested training subset.
2. Phase 1 (unless ``--prompt-generator`` is given): a YOLOv8n prompt generator trained on the boxes of the
   budget's training images (``ldfsam distill --stage student --scheme none``: no teacher at CPU scale).
3. Phase 2 for each prompt mode (``box`` and ``dense+sparse`` by default) with the same data, budget, seed,
   schedule and frozen prompt generator.
4. Validation Dice and IoU of each model on the held-out images at their original resolution, with 95 %
   bootstrap CIs.

Models and logs go to ``--out`` (outside the repository); the results to ``--out/results.json``.

    python benchmarks/bench_kvasir.py --out /work/runs/kvasir
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
                   / "kvasir-seg")
    p.add_argument("--out", type=Path, required=True, help="benchmark folder (outside the repository)")
    p.add_argument("--budget", type=float, default=0.1, help="fraction of the 720 training images (default 0.1)")
    p.add_argument("--size", type=int, default=128, help="SAM and YOLO input size (default 128)")
    p.add_argument("--epochs", type=int, default=8, help="Phase 2 epochs (default 8)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--phase1-epochs", type=int, default=6)
    p.add_argument("--prompt-generator", type=Path, help="use this Phase 1 prompt generator instead of training one")
    p.add_argument("--modes", default="box,box-gt,dense+sparse",
                   help="prompt modes: box (detected boxes, the paper's baseline), box-gt (boxes of the reference "
                        "masks: an oracle baseline), dense, sparse, dense+sparse")
    p.add_argument("--val-during-training", type=int, default=24,
                   help="validation images used for checkpoint selection during training (default 24)")
    p.add_argument("--validate-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--prepared", type=Path, help="reuse this prepared Kvasir folder (default: --out/prepared)")
    args = p.parse_args()

    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.evaluate.report import summarize, write_report
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.run import finetune
    from ldfsam.model.presets import model_config
    from ldfsam.progress import Progress

    out = args.out.resolve()
    if REPO in out.parents or out == REPO:
        p.error("--out must be outside the repository")
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
               "command": " ".join([sys.executable, *sys.argv]), "timings_s": {}, "modes": {}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    t0 = time.time()
    prepared = args.prepared.resolve() if args.prepared else out / "prepared"
    if not (prepared / "prepared.json").is_file():
        pre = PreprocessConfig(target_spacing=None, sam_size=args.size, yolo_size=args.size, class_names=["polyp"])
        prepare_dataset(args.data, prepared, pre,
                        PrepareOptions(kind="2d", test_count=0, val_fraction=0.1, seed=args.seed,
                                       budgets=[args.budget], yolo=True), progress=Progress("none"))
    pd = PreparedData(prepared)
    train_ids, val_ids = pd.case_ids("train", args.budget), pd.case_ids("val")
    results["data"] = {"train_images": len(train_ids), "val_images": len(val_ids),
                       "all_training_images": len(pd.splits.train)}
    results["timings_s"]["prepare"] = round(time.time() - t0, 1)
    print(f"data: {len(train_ids)} training images (budget {args.budget}), {len(val_ids)} validation", flush=True)

    generator = args.prompt_generator
    if generator is None:
        t0 = time.time()
        phase1 = out / "phase1"
        generator = phase1 / "student.safetensors"
        if not generator.is_file():
            cmd = [sys.executable, "-m", "ldfsam", "distill", str(prepared), "-o", str(phase1), "--stage", "student",
                   "--scheme", "none", "--budget", str(args.budget * 100), "--imgsz", str(args.size),
                   "--epochs", str(args.phase1_epochs), "--batch", "16", "--progress", "none"]
            if phase1.exists():
                cmd.append("--resume")
            subprocess.run(cmd, check=True, cwd=REPO, env=env)
        results["timings_s"]["phase1"] = round(time.time() - t0, 1)
    if not generator.is_file():
        found = sorted(generator.parent.glob("*.safetensors"))
        raise SystemExit(f"no prompt generator at {generator} (found: {[str(f) for f in found]})")
    results["prompt_generator"] = str(generator)

    from ldfsam.model.prompt_generator import load_prompt_generator_weights

    _, pg_cfg, _ = load_prompt_generator_weights(generator)
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        t0 = time.time()
        run = out / f"finetune-{mode.replace('+', '_')}"
        prompt_mode = "box" if mode == "box-gt" else mode
        model_cfg = model_config("small", prompt_mode=prompt_mode, class_names=list(pd.preprocess.class_names))
        model_cfg.sam.image_size = args.size
        model_cfg.prompt_generator = pg_cfg
        model_cfg.prompt_generator.image_size = args.size
        model_cfg.prompt_generator.init_weights = str(generator)
        cfg = FinetuneConfig(data=str(prepared), budget=args.budget, epochs=args.epochs, batch_size=args.batch,
                             lr=args.lr, seed=args.seed, num_workers=1, max_val_items=args.val_during_training,
                             validate_every_epochs=args.validate_every,
                             box_prompts="ground_truth" if mode == "box-gt" else "detected")
        if (run / "state.safetensors").is_file():
            result = finetune(None, None, run, resume=True, progress=Progress("bar"))
        else:
            result = finetune(cfg, model_cfg, run, progress=Progress("bar"))
        # Training time as the run recorded it (also right for a run resumed after an interruption).
        with open(run / "log.csv", encoding="utf-8") as f:
            train_s = float(list(csv.DictReader(f))[-1]["seconds"])
        t0 = time.time()
        rows = evaluate_model(str(result.model_path), args.data, ids=val_ids, progress=Progress("none"),
                              box_prompts=cfg.box_prompts)
        summary = summarize(rows, resamples=1000, seed=args.seed, tolerance_mm=1.0)
        write_report(run / "eval-val", rows, summary)
        m = summary["metrics"][summary["classes"][0]]
        results["modes"][mode] = {
            "model": str(result.model_path), "steps": result.global_step,
            "best_val_dice_during_training": result.best_val_dice,
            "dice": m["dice"], "iou": m["iou"], "hd_px": m["hd"], "train_s": round(train_s, 1),
            "eval_s": round(time.time() - t0, 1),
        }
        print(f"{mode}: Dice {m['dice']['mean']:.4f} [{m['dice']['ci_low']:.4f}, {m['dice']['ci_high']:.4f}], "
              f"IoU {m['iou']['mean']:.4f} ({result.global_step} steps, {train_s:.0f} s)", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| prompt | val Dice [95% CI] | val IoU [95% CI] | steps | train s |\n| --- | --- | --- | --- | --- |")
    for mode, r in results["modes"].items():
        d, i = r["dice"], r["iou"]
        print(f"| {mode} | {d['mean']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}] | {i['mean']:.4f} "
              f"[{i['ci_low']:.4f}, {i['ci_high']:.4f}] | {r['steps']} | {r['train_s']:.0f} |")
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
