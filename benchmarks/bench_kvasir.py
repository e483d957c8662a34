"""Kvasir-SEG at CPU scale: Dense+Sparse Feature Prompts against the box baselines (a small paper Table 1).

Pipeline, all with seed 2025, for each annotation budget:

1. ``prepare``: the 800 Kvasir-SEG training images, split by the paper protocol (sorted ids, one shuffle with
   seed 2025, 10 % held out for validation); the budgets' nested training subsets.
2. Phase 1 (unless ``--prompt-generator`` is given): a YOLOv8n prompt generator trained on the boxes of the
   budget's training images (``ldfsam distill --stage student --scheme none``: no teacher at CPU scale), for
   ``--phase1-epochs`` epochs, or more at a small budget: as many as give at least ``--phase1-min-steps``
   optimizer steps (batch 16; ``epochs_for_steps``). The defaults (6 epochs, 60 steps) give 6 epochs to the 720
   images (270 steps) and 12 to the 72 of the 10 % budget (5 steps an epoch: 6 epochs were 30 steps, half of
   them in the 3-epoch warmup, and left a weak detector, mAP50 0.33; 12 epochs 0.63; 24 epochs 0.68, but their
   Phase 2 models scored lower: docs/training.md, "Third series").
3. Phase 2 for each prompt mode with the same data, budget, seed, schedule and frozen prompt generator (``--epochs``,
   or more at a small budget: at least ``--phase2-min-steps`` steps, 24 epochs at 10 %, where 8 epochs were 72
   steps; docs/training.md, "Third series"). Modes:
   ``box`` (detected boxes, Table 1's baseline), ``box-gt`` (boxes of the reference masks: an oracle),
   ``zero-shot-gt`` (the pretrained decoder unchanged, prompted with the reference boxes: the oracle of a
   pretrained SAM), ``zero-shot`` (unchanged decoder, detected boxes), ``none`` (the decoder fine-tuned with no
   prompt: what fine-tuning alone gives), ``dense``, ``sparse``, ``dense+sparse``, ``auto`` (no training: the
   budget's ``dense+sparse`` and ``box`` models joined, ``ldfsam/model/auto_prompt.py``: per image the box model
   where the detector keeps exactly one box scoring at least a threshold chosen on the checkpoint-selection images,
   else the feature prompts; both modes must run in the same budget). The box modes' detection
   confidence and box count are chosen on the checkpoint-selection images (``--box-conf auto``,
   ``ldfsam/finetune/box_conf.py``): a detector trained on few images scores its boxes far below the model's
   default 0.25.
4. Validation Dice and IoU of each model on the held-out images at their original resolution, with 95 %
   bootstrap CIs, and the learnt α of the dense prompt.
5. The wall and CPU time of every stage (prepare, each budget's Phase 1, box confidence, each mode's training and
   evaluation, auto's threshold), printed as a table at the end and kept in ``results.json`` (``stages``;
   ``whole_run_s`` their sum). Run again on the same ``--out`` after an interruption, the benchmark resumes and
   the stages an earlier invocation finished keep their figures, so the whole run's time is measured, not
   estimated.

``--preset small`` is the randomly initialised small SAM at ``--size``; ``--preset lite`` the pretrained
LiteMedSAM encoder (frozen, SAM input 256, embeddings cached once for all modes) with YOLO at ``--yolo-size``.
Models and logs go to ``--out`` (outside the repository); the results to ``--out/results.json``.

    python benchmarks/bench_kvasir.py --out /work/runs/kvasir
    python benchmarks/bench_kvasir.py --preset lite --budgets 1.0,0.1 --out /work/runs/kvasir-lite
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
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


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children (Phase 1 runs as one)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class StageClock:
    """Wall and CPU time of each stage of the benchmark, kept in ``results["stages"]`` (name -> record), so a run's
    time is measured, not estimated. A stage whose block sets ``info["reused"]`` (its output found, nothing redone)
    keeps the record of the earlier invocation on the same ``--out`` that did it; a training stage resumed after an
    interruption counts the training seconds its log recorded before this invocation as well. The results are
    written to ``path`` after every stage, so an interrupted invocation leaves its finished stages' times behind."""

    def __init__(self, results: dict, earlier: dict, path: Path):
        self.results, self.earlier, self.path = results, earlier, path
        results.setdefault("stages", {})

    @contextlib.contextmanager
    def stage(self, name: str, before_s: float = 0.0):
        t0, c0 = time.time(), _cpu_s()
        info: dict = {}
        yield info
        if info.pop("reused", False) and name in self.earlier:
            self.results["stages"][name] = {**self.earlier[name], "earlier_invocation": True}
            self.path.write_text(json.dumps(self.results, indent=2) + "\n")
            return
        self.results["stages"][name] = {
            "wall_s": round(time.time() - t0 + before_s, 1), "cpu_s": round(_cpu_s() - c0, 1),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2), **info,
            **({"resumed_with_earlier_s": round(before_s, 1)} if before_s else {})}
        self.path.write_text(json.dumps(self.results, indent=2) + "\n")

    def table(self) -> str:
        stages = self.results["stages"]
        lines = ["| stage | wall s | CPU s (this invocation) | load at end |", "| --- | --- | --- | --- |"]
        for name, r in stages.items():
            mark = " (earlier invocation)" if r.get("earlier_invocation") else ""
            lines.append(f"| {name}{mark} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['load_average_1min_at_end']} |")
        total = sum(r["wall_s"] for r in stages.values())
        lines.append(f"| **whole run** | **{total:.0f}** ({total / 3600:.2f} h) | | |")
        return "\n".join(lines)


PHASE1_BATCH = 16


def epochs_for_steps(train_images: int, epochs: int, min_steps: int, batch: int = PHASE1_BATCH) -> int:
    """Epochs for ``train_images`` images: ``epochs``, or more where that gives fewer than ``min_steps`` optimizer
    steps (one step per batch, the last one partial), so a small budget's detector (Phase 1) and decoder (Phase 2)
    are trained too."""
    per_epoch = max(1, -(-train_images // batch))
    return max(epochs, -(-min_steps // per_epoch))


def _train_seconds(run: Path) -> float:
    """Training seconds of a Phase 2 run as its log recorded them (cumulative over resumed attempts), 0 without one."""
    if not (run / "log.csv").is_file():
        return 0.0
    with open(run / "log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["seconds"]) if rows else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
                   / "kvasir-seg")
    p.add_argument("--out", type=Path, required=True, help="benchmark folder (outside the repository)")
    p.add_argument("--preset", choices=["small", "lite"], default="small")
    p.add_argument("--budgets", default="0.1", help="comma-separated fractions of the 720 training images")
    p.add_argument("--size", type=int, default=128, help="SAM and YOLO input size of the small preset (128)")
    p.add_argument("--yolo-size", type=int, default=256,
                   help="YOLO input of the lite preset (default 256: P3 32×32, resampled to TinyViT's 64×64 grid; "
                        "the preset's 512 matches the grid but makes Phase 1 4× dearer on a CPU)")
    p.add_argument("--epochs", type=int, default=8, help="Phase 2 epochs (default 8)")
    p.add_argument("--full-budget-epochs", type=int,
                   help="Phase 2 epochs of the full budget (1.0) only (default: --epochs). 4 halves the run's "
                        "longest part at a measured cost (docs/training.md, the benchmark's time)")
    p.add_argument("--phase2-min-steps", type=int, default=216,
                   help="Phase 2 trains for at least this many optimizer steps (--batch): default 216 gives 24 epochs "
                        "at the 10 %% budget (72 images, 9 steps an epoch), --epochs at the full one (90 an epoch); 0 "
                        "turns the rule off")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--flip-augment", choices=["none", "h", "hv"], default="none",
                   help="Phase 2 flip augmentation (FinetuneConfig.flip_augment; default none, as the paper)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--alpha-lr-scale", type=float,
                   help="the dense prompt's α learns at this multiple of --lr (default: FinetuneConfig's)")
    p.add_argument("--dense-norm", choices=["none", "group"],
                   help="normalisation of the dense prompt (default: the preset's; none = the earlier runs')")
    p.add_argument("--phase1-epochs", type=int, default=6,
                   help="Phase 1 epochs (default 6), raised at a small budget by --phase1-min-steps")
    p.add_argument("--phase1-min-steps", type=int, default=60,
                   help="Phase 1 trains for at least this many optimizer steps (batch 16): default 60 gives 12 "
                        "epochs at the 10 %% budget (72 images), 6 at the full one; 0 turns the rule off")
    p.add_argument("--prompt-generator", type=Path, help="use this Phase 1 prompt generator instead of training one")
    p.add_argument("--modes", help="comma-separated prompt modes (default small: box,box-gt,dense+sparse; lite: "
                                   "zero-shot-gt,box,none,dense+sparse,dense,sparse,auto)")
    p.add_argument("--val-during-training", type=int, default=24,
                   help="validation images used for checkpoint selection during training (default 24)")
    p.add_argument("--validate-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--refine", action="store_true",
                   help="lite: also evaluate every feature-prompt model with the refinement pass (rows MODE+refine)")
    p.add_argument("--prepared", type=Path, help="reuse this prepared Kvasir folder (default: --out/prepared)")
    p.add_argument("--hold-out", type=int, default=0,
                   help="hold this many training images out of every budget's training, stratified by polyp area "
                        "(kvasir_variants.stratified_by_area); they become what the run selects on (Phase 1's "
                        "validation, Phase 2's checkpoint selection, the box confidence, auto's threshold, and "
                        "kvasir_variants.py --selection-from held-out), and no stage sees a validation image before "
                        "it is scored (a prepared folder of their own: --out/prepared-holdout<N>)")
    p.add_argument("--eval-precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="precision of the evaluations (default auto: the one Phase 2 trains in on this machine, so "
                        "a model is scored on embeddings of the precision it was trained on; fp32: the runs before "
                        "2026-12-07's third series)")
    p.add_argument("--box-conf", default="auto",
                   help="detection confidence of the box modes: auto (default: chosen on the checkpoint-selection "
                        "images, ldfsam/finetune/box_conf.py) or a number (0.25: the model's default)")
    args = p.parse_args()

    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
    from ldfsam.progress import Progress

    out = args.out.resolve()
    if REPO in out.parents or out == REPO:
        p.error("--out must be outside the repository")
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
               "command": " ".join([sys.executable, *sys.argv]), "modes": {}}
    earlier = {}
    if (out / "results.json").is_file():  # an earlier invocation on this folder: its finished stages keep their time
        try:
            earlier = json.loads((out / "results.json").read_text(encoding="utf-8")).get("stages", {})
        except (OSError, ValueError):
            earlier = {}
    clock = StageClock(results, earlier, out / "results.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    default_modes = ("zero-shot-gt,box,none,dense+sparse,dense,sparse,auto" if args.preset == "lite"
                     else "box,box-gt,dense+sparse")
    modes = [m.strip() for m in (args.modes or default_modes).split(",") if m.strip()]
    sam_size = 256 if args.preset == "lite" else args.size
    yolo_size = args.yolo_size if args.preset == "lite" else args.size
    results["runs"] = {}
    prepared = args.prepared.resolve() if args.prepared else out / "prepared"
    existed = (prepared / "prepared.json").is_file()
    with clock.stage("prepare") as info:
        info["reused"] = existed
        if not existed:
            pre = PreprocessConfig(target_spacing=None, sam_size=sam_size, yolo_size=yolo_size, class_names=["polyp"])
            prepare_dataset(args.data, prepared, pre,
                            PrepareOptions(kind="2d", test_count=0, val_fraction=0.1, seed=args.seed,
                                           budgets=budgets, yolo=True), progress=Progress("none"))
    if args.hold_out:
        prepared = hold_out(args.data, prepared, args.hold_out, out / f"prepared-holdout{args.hold_out}")
    pd = PreparedData(prepared)
    val_ids = pd.case_ids("test" if args.hold_out else "val")  # the images scored
    if args.hold_out:
        results["held_out"] = {"prepared": str(prepared), "selection": pd.case_ids("val"), "scored": val_ids}
    for budget in budgets:
        run_budget(args, out, env, pd, prepared, budget, val_ids, modes, sam_size, yolo_size, results, clock)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["load_average_at_end"] = os.getloadavg()
    results["whole_run_s"] = round(sum(r["wall_s"] for r in results["stages"].values()), 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| budget | prompt | val Dice [95% CI] | val IoU [95% CI] | α | steps | train s |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"].values():
        d, i = r["dice"], r["iou"]
        alpha = "" if r["alpha"] is None else f"{r['alpha']:.3f}"
        print(f"| {r['budget']:.0%} | {r['mode']} | {d['mean']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}] | "
              f"{i['mean']:.4f} [{i['ci_low']:.4f}, {i['ci_high']:.4f}] | {alpha} | {r['steps']} | "
              f"{r['train_s']:.0f} |")
    print(f"\nWall time by stage ({results['machine']['cpu']}, {results['machine']['cores']} cores; stages an earlier "
          f"invocation finished keep its figures):\n{clock.table()}")
    print(f"\nresults: {out / 'results.json'}")
    return 0


def hold_out(data: Path, prepared: Path, count: int, dest: Path) -> Path:
    """A prepared folder like ``prepared`` whose ``count`` training images, stratified by polyp area, no budget trains
    on: they are its ``val`` split (what a run selects on), the validation images its ``test`` split (what the run
    scores), the training images the rest in their order (so budgets stay nested). The case cache is shared (a link);
    the YOLO datasets are exported again for the new splits. Found again in ``dest`` when made before."""
    import shutil

    from ldfsam.data.prepared import MANIFEST, PreparedData
    from ldfsam.data.splits import read_splits, write_split_ids

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kvasir_variants import stratified_by_area

    source = PreparedData(prepared)
    held = stratified_by_area(data, source.case_ids("train"), count)
    train = [i for i in source.case_ids("train") if i not in set(held)]
    val = source.case_ids("val")
    if (dest / MANIFEST).is_file():
        made = read_splits(dest / "splits.json")
        if (made.train, sorted(made.val), made.test) != (train, held, val):
            raise SystemExit(f"{dest} holds other splits than --hold-out {count} of {prepared}: remove it")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / "cache").exists():
        (dest / "cache").symlink_to((prepared / "cache").resolve(), target_is_directory=True)
    shutil.copyfile(prepared / "preprocess.json", dest / "preprocess.json")
    write_split_ids({"train": train, "val": held, "test": val}, dest / "splits.json", seed=source.splits.seed,
                    val_fraction=source.splits.val_fraction, held_out_from_train=count,
                    protocol=f"{prepared}'s splits; val: {count} of its training images stratified by polyp area, "
                             "held out of training; test: its validation images")
    manifest = {k: v for k, v in source.manifest.items() if k != "yolo"}  # exported again for the new splits
    manifest["summary"] = {**manifest.get("summary", {}), "train": len(train), "val": len(held), "test": len(val)}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return dest


def _alpha(model_path: Path):
    """The learnt α of the dense feature prompt, or None for a model without one."""
    from safetensors import safe_open

    with safe_open(str(model_path), "pt") as f:
        return float(f.get_tensor("feature_prompts.alpha")) if "feature_prompts.alpha" in f.keys() else None


def _box_conf(args, pd, prepared: Path, budget: float, pg_state, pg_cfg, yolo_size: int, sam_size: int,
              results: dict, tag: str):
    """(confidence, boxes per image) of the box modes: given (with the model's default count), or chosen on the
    runs' checkpoint-selection images (the ``--val-during-training`` images Phase 2 selects its checkpoint on),
    never on the rest of the validation."""
    from ldfsam.model.config import ModelConfig

    if args.box_conf != "auto":
        results.setdefault("box_conf", {})[tag] = {"conf": float(args.box_conf), "chosen_on": "given"}
        return float(args.box_conf), ModelConfig().max_boxes
    import dataclasses

    from ldfsam.finetune.box_conf import choose_box_prompts
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.data import load_data
    from ldfsam.model.prompt_generator import PromptGenerator

    t0 = time.time()
    cfg = FinetuneConfig(data=str(prepared), budget=budget, max_val_items=args.val_during_training)
    data = load_data(cfg, sam_size, yolo_size, list(pd.preprocess.class_names))
    generator = PromptGenerator(dataclasses.replace(pg_cfg, image_size=yolo_size))
    generator.load_weights(pg_state, "prompt generator")
    conf, k, scores = choose_box_prompts(generator, data.val, ModelConfig().max_boxes)
    results.setdefault("box_conf", {})[tag] = {
        "conf": conf, "max_boxes": k, "chosen_on": f"{len(data.val)} checkpoint-selection images",
        "box_cover_dice": {f"{t}/{n}": v for (t, n), v in scores.items()}, "seconds": round(time.time() - t0, 1)}
    at_default = max(v for (t, n), v in scores.items() if t == 0.25)
    print(f"{tag}: box prompts at confidence {conf}, at most {k} per image (box-cover Dice {scores[conf, k]:.3f} on "
          f"{len(data.val)} checkpoint-selection images; at 0.25: {at_default:.3f})", flush=True)
    return conf, k


def _selection_ids(args, pd, prepared: Path, budget: float, sam_size: int, yolo_size: int) -> list:
    """The case ids of the checkpoint-selection images (the ``--val-during-training`` images Phase 2 selects its
    checkpoint on)."""
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.data import load_data

    cfg = FinetuneConfig(data=str(prepared), budget=budget, max_val_items=args.val_during_training)
    val = load_data(cfg, sam_size, yolo_size, list(pd.preprocess.class_names)).val
    return [val[i]["case_id"] for i in range(len(val))]


def _detection_scores(model_path: Path, data: Path, ids) -> list:
    """Per image the scores of the model's detections (down to the lowest threshold the choice tries, at most 8),
    on the inputs evaluation gives it."""
    import torch

    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.data.images import read_rgb, resize_square
    from ldfsam.evaluate.model_eval import select_cases
    from ldfsam.finetune.box_conf import CONF_GRID

    loaded = load_checkpoint(model_path)
    size = loaded.preprocess.yolo_size
    scores = []
    for case in select_cases(data, None, "val", ids)[1]:
        yolo = torch.from_numpy(resize_square(read_rgb(case.image), size, False).copy()).permute(2, 0, 1)
        with torch.no_grad():
            det = loaded.model.prompt_generator.detect(yolo.float()[None] / 255.0, conf=min(CONF_GRID), max_det=8)[0]
        scores.append((case.case_id, [float(x) for x in det[:, 4]]))
    return [sc for _, sc in sorted(scores)]


def _run_auto(args, out: Path, pd, prepared: Path, budget: float, val_ids, sam_size: int, yolo_size: int,
              results: dict, tag: str, clock: StageClock) -> None:
    """The ``auto`` row: the budget's dense+sparse and box models joined, its box-score threshold chosen on the
    checkpoint-selection images (never on the rest of the validation), then evaluated like every mode."""
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.evaluate.report import summarize, write_report
    from ldfsam.model.auto_assemble import assemble
    from ldfsam.model.auto_prompt import choose_box_score
    from ldfsam.progress import Progress

    t0 = time.time()
    ds, box = (out / f"{tag}-finetune-{m}" / "model.safetensors" for m in ("dense_sparse", "box"))
    with clock.stage(f"{tag} auto: threshold and join"):
        sel = sorted(_selection_ids(args, pd, prepared, budget, sam_size, yolo_size))
        dice = {}
        for name, path in (("ds", ds), ("box", box)):
            rows = evaluate_model(str(path), args.data, ids=sel, progress=Progress("none"),
                                  precision=args.eval_precision)
            dice[name] = [r["dice"] for r in sorted(rows, key=lambda r: r["case_id"])]
        score, means = choose_box_score(_detection_scores(ds, args.data, sel), dice["box"], dice["ds"])
        run = out / f"{tag}-auto"
        run.mkdir(exist_ok=True)
        model_path = run / "model.safetensors"
        assemble(ds, box, model_path, score)
    choose_s = time.time() - t0
    for refine in (False, True) if args.refine else (False,):
        t0 = time.time()
        with clock.stage(f"{tag} auto{'+refine' if refine else ''}: evaluation"):
            rows = evaluate_model(str(model_path), args.data, ids=val_ids, progress=Progress("none"), refine=refine,
                                  precision=args.eval_precision)
        summary = summarize(rows, resamples=1000, seed=args.seed, tolerance_mm=1.0)
        write_report(run / ("eval-val-refine" if refine else "eval-val"), rows, summary)
        m = summary["metrics"][summary["classes"][0]]
        mode = "auto+refine" if refine else "auto"
        results["runs"][f"{tag}/{mode}"] = {
            "budget": budget, "mode": mode, "model": str(model_path), "steps": 0,
            "train_images": len(pd.case_ids("train", budget)), "dice": m["dice"], "iou": m["iou"], "hd_px": m["hd"],
            "alpha": _alpha(model_path), "train_s": 0.0, "eval_s": round(time.time() - t0, 1),
            "box_score": score, "box_score_chosen_on": f"{len(sel)} checkpoint-selection images",
            "selection_dice_by_score": means, "choose_s": round(choose_s, 1)}
        print(f"{tag} {mode} (box score {score}): Dice {m['dice']['mean']:.4f} [{m['dice']['ci_low']:.4f}, "
              f"{m['dice']['ci_high']:.4f}]", flush=True)


def run_budget(args, out: Path, env, pd, prepared: Path, budget: float, val_ids, modes, sam_size: int,
               yolo_size: int, results: dict, clock: StageClock) -> None:
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.evaluate.report import summarize, write_report
    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.run import finetune
    from ldfsam.model.presets import model_config
    from ldfsam.model.prompt_generator import load_prompt_generator_weights
    from ldfsam.progress import Progress

    tag = f"b{round(budget * 100):03d}"
    train_ids = pd.case_ids("train", budget)
    print(f"budget {budget}: {len(train_ids)} training images, {len(val_ids)} validation", flush=True)
    generator = args.prompt_generator
    if generator is None:
        phase1 = out / f"{tag}-phase1"
        generator = phase1 / "student.safetensors"
        existed = generator.is_file()
        epochs1 = epochs_for_steps(len(train_ids), args.phase1_epochs, args.phase1_min_steps)
        results.setdefault("phase1_epochs", {})[tag] = epochs1
        with clock.stage(f"{tag} Phase 1") as info:
            info["reused"] = existed
            info["epochs"] = epochs1
            if not existed:
                print(f"{tag} Phase 1: {epochs1} epochs", flush=True)
                cmd = [sys.executable, "-m", "ldfsam", "distill", str(prepared), "-o", str(phase1), "--stage",
                       "student", "--scheme", "none", "--budget", str(budget * 100), "--imgsz", str(yolo_size),
                       "--epochs", str(epochs1), "--batch", str(PHASE1_BATCH), "--progress", "none"]
                if phase1.exists():
                    cmd.append("--resume")
                subprocess.run(cmd, check=True, cwd=REPO, env=env)
    if not generator.is_file():
        found = sorted(generator.parent.glob("*.safetensors"))
        raise SystemExit(f"no prompt generator at {generator} (found: {[str(f) for f in found]})")
    pg_state, pg_cfg, _ = load_prompt_generator_weights(generator)
    with clock.stage(f"{tag} box confidence"):
        box_conf, max_boxes = _box_conf(args, pd, prepared, budget, pg_state, pg_cfg, yolo_size, sam_size, results,
                                        tag)
    if "auto" in modes and not {"dense+sparse", "box"} <= set(modes):
        raise SystemExit("mode auto joins the budget's dense+sparse and box models: list both modes too")
    for mode in [m for m in modes if m != "auto"] + (["auto"] if "auto" in modes else []):
        t0 = time.time()
        run = out / f"{tag}-finetune-{mode.replace('+', '_')}"
        if mode == "auto":
            _run_auto(args, out, pd, prepared, budget, val_ids, sam_size, yolo_size, results, tag, clock)
            continue
        prompt_mode = {"box-gt": "box", "zero-shot-gt": "zero-shot"}.get(mode, mode)
        gt = mode.endswith("-gt")
        model_cfg = model_config(args.preset, prompt_mode=prompt_mode, class_names=list(pd.preprocess.class_names))
        model_cfg.sam.image_size = sam_size
        model_cfg.prompt_generator = pg_cfg
        model_cfg.prompt_generator.image_size = yolo_size
        model_cfg.prompt_generator.init_weights = str(generator)
        if not gt:  # the oracle modes take every reference box, whatever the detector's settings
            model_cfg.box_conf, model_cfg.max_boxes = box_conf, max_boxes
        if args.dense_norm:
            model_cfg.feature_prompts.dense_norm = args.dense_norm
        extra = {} if args.alpha_lr_scale is None else {"alpha_lr_scale": args.alpha_lr_scale}
        epochs = args.full_budget_epochs if budget >= 1.0 and args.full_budget_epochs else args.epochs
        epochs = epochs_for_steps(len(train_ids), epochs, args.phase2_min_steps, args.batch)
        cfg = FinetuneConfig(**extra, data=str(prepared), budget=budget, epochs=epochs, batch_size=args.batch,
                             lr=args.lr, seed=args.seed, num_workers=1, max_val_items=args.val_during_training,
                             validate_every_epochs=args.validate_every, box_conf="model",  # chosen above
                             box_prompts="ground_truth" if gt else "detected", flip_augment=args.flip_augment)
        before_s = _train_seconds(run)
        had_model = (run / "model.safetensors").is_file()
        with clock.stage(f"{tag} {mode}: training", before_s=before_s) as info:
            if (run / "state.safetensors").is_file():
                result = finetune(None, None, run, resume=True, progress=Progress("bar"))
            elif had_model and prompt_mode == "zero-shot":
                result = None
            else:
                result = finetune(cfg, model_cfg, run, progress=Progress("bar"))
            # Training time as the run recorded it (also right for a run resumed after an interruption); the rest
            # of the stage is building the model and encoding the images the embedding cache lacks.
            train_s = info["train_s"] = _train_seconds(run)
            info["reused"] = had_model and train_s == before_s
        model_path = run / "model.safetensors"
        steps = 0 if result is None else result.global_step
        t0 = time.time()
        with clock.stage(f"{tag} {mode}: evaluation"):
            rows = evaluate_model(str(model_path), args.data, ids=val_ids, progress=Progress("none"),
                                  box_prompts=cfg.box_prompts, precision=args.eval_precision)
        summary = summarize(rows, resamples=1000, seed=args.seed, tolerance_mm=1.0)
        write_report(run / "eval-val", rows, summary)
        m = summary["metrics"][summary["classes"][0]]
        results["runs"][f"{tag}/{mode}"] = {
            "budget": budget, "mode": mode, "model": str(model_path), "steps": steps,
            "train_images": len(train_ids), "dice": m["dice"], "iou": m["iou"], "hd_px": m["hd"],
            "alpha": _alpha(model_path), "train_s": round(train_s, 1), "eval_s": round(time.time() - t0, 1),
        }
        print(f"{tag} {mode}: Dice {m['dice']['mean']:.4f} [{m['dice']['ci_low']:.4f}, {m['dice']['ci_high']:.4f}], "
              f"IoU {m['iou']['mean']:.4f} ({steps} steps, {train_s:.0f} s)", flush=True)
        if args.refine and args.preset == "lite" and prompt_mode not in ("box", "zero-shot"):
            t0 = time.time()
            with clock.stage(f"{tag} {mode}+refine: evaluation"):
                rows = evaluate_model(str(model_path), args.data, ids=val_ids, progress=Progress("none"),
                                      refine=True, precision=args.eval_precision)
            summary = summarize(rows, resamples=1000, seed=args.seed, tolerance_mm=1.0)
            write_report(run / "eval-val-refine", rows, summary)
            m = summary["metrics"][summary["classes"][0]]
            results["runs"][f"{tag}/{mode}+refine"] = {
                **results["runs"][f"{tag}/{mode}"], "mode": f"{mode}+refine", "dice": m["dice"], "iou": m["iou"],
                "hd_px": m["hd"], "eval_s": round(time.time() - t0, 1)}
            print(f"{tag} {mode}+refine: Dice {m['dice']['mean']:.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
