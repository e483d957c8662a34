"""``ldfsam evaluate``: Dice, IoU, HD, HD95, ASSD, SO and accuracy with 95 % bootstrap CIs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "evaluate"
FLAGS = {"save_dir": "--save-predictions"}
HELP = ("Evaluate predictions against references (--pred/--ref) or a model on a dataset (--model/--data): "
        "per-case CSV and summary with bootstrap CIs.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (either --pred and --ref, or --model and --data)")
    src.add_argument("--pred", type=Path, help="folder of predicted masks (label maps or mask images)")
    src.add_argument("--ref", type=Path, help="folder of reference masks, matched to --pred by file name")
    src.add_argument("--model", help="model name or .safetensors file to run on --data")
    src.add_argument("--data", type=Path, help="dataset folder (labelled volumes, or images/ + masks/)")
    src.add_argument("--splits", help="splits file, or a run or prepared folder holding one; evaluate its --split "
                                      "cases (default: all cases of --data)")
    src.add_argument("--split", default="test", choices=["train", "val", "test"])
    src.add_argument("--limit", type=int, help="evaluate only the first N cases")
    src.add_argument("--save-predictions", type=Path, help="with --model: also write the predicted masks here")
    cls = p.add_argument_group("classes (for --pred/--ref; default: any nonzero label is foreground)")
    cls.add_argument("--per-label", action="store_true", help="one class per label value found")
    cls.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME=L1[,L2]",
                     help="a named class made of label values (repeatable)")
    m = p.add_argument_group("metrics")
    m.add_argument("--tolerance", type=float, default=1.0, help="surface overlap (SO) tolerance in mm (default 1)")
    m.add_argument("--spacing-2d", type=float, default=1.0, help="pixel size of 2D masks in mm (default 1: pixels)")
    m.add_argument("--threshold", type=float, default=0.5, help="probability threshold for --model")
    m.add_argument("--box-prompts", choices=["detected", "ground_truth"], default="detected",
                   help="box-mode --model on 2D data: detected boxes, or the reference masks' boxes (oracle)")
    m.add_argument("--refine", action="store_true",
                   help="lite --model on 2D data: the refinement pass (each component of the automatic mask "
                        "re-segmented by LiteMedSAM's unchanged decoder from its box)")
    m.add_argument("--flips", choices=["none", "h", "hv"], default="none",
                   help="lite feature-prompt or auto --model on 2D data: test-time flips, the logits averaged over "
                        "the image and its horizontal flip (h) or its three flips (hv); one encoder pass per flip")
    m.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="lite --model on 2D data: the encoder and decoder's precision (default fp32; auto: the one "
                        "Phase 2 picks on this machine, so a model is scored on embeddings like those it trained on)")
    m.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    m.add_argument("--seed", type=int, default=2025, help="bootstrap seed")
    p.add_argument("--out", type=Path, required=True, help="folder for per_case.csv and summary.json")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (for --model)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")


def run(args: argparse.Namespace) -> int:
    from ._progress import command_progress

    with command_progress(args, COMMAND) as progress:
        summary = _run(args, progress)
    from ..evaluate.report import format_table

    print(format_table(summary), file=sys.stderr if args.progress == "json" else sys.stdout)
    return 0


def _run(args: argparse.Namespace, progress) -> dict:
    from ..errors import InputError
    from ..evaluate.report import summarize, write_report

    folders = args.pred is not None or args.ref is not None
    model = args.model is not None or args.data is not None
    if folders == model:
        raise InputError("give either --pred and --ref, or --model and --data")
    if args.bootstrap < 1:
        raise InputError("--bootstrap must be at least 1")
    if args.tolerance < 0:
        raise InputError("--tolerance must not be negative")
    from ..atomic import check_writable

    check_writable(args.out / "summary.json")  # before the evaluation, not after it
    if folders:
        if args.pred is None or args.ref is None:
            raise InputError("--pred and --ref go together")
        from ..evaluate.folders import evaluate_folders, parse_class_spec

        rows = evaluate_folders(args.pred, args.ref, parse_class_spec(args.classes) or None, args.per_label,
                                args.tolerance, args.spacing_2d, progress=progress)
    else:
        if args.model is None or args.data is None:
            raise InputError("--model and --data go together")
        from ..evaluate.model_eval import evaluate_model

        rows = evaluate_model(args.model, args.data, args.splits, args.split, args.tolerance, args.spacing_2d,
                              args.device, args.threshold, args.limit, args.save_predictions, progress=progress,
                              box_prompts=args.box_prompts, refine=args.refine, precision=args.precision,
                              flips=args.flips)
    summary = summarize(rows, resamples=args.bootstrap, seed=args.seed, tolerance_mm=args.tolerance)
    paths = write_report(args.out, rows, summary)
    progress.done("evaluate", message=f"per-case metrics: {paths['per_case']}; summary: {paths['summary']}",
                  cases=summary["cases"], summary=str(paths["summary"]))
    return summary
