"""``ldfsam prepare``: build splits, the preprocessing cache and the YOLO dataset from a dataset folder."""

from __future__ import annotations

import argparse
import json
import sys

COMMAND = "prepare"
HELP = "prepare a dataset folder (3D volumes or 2D images with labels) for both training phases"


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"budget {text} must be in (0, 100]")
    return value / 100.0


def _spacing(text: str):
    if text.lower() in ("none", "native", "keep"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a spacing in mm (or 'none')") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("spacing must be positive")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="dataset folder (nnU-Net imagesTr/labelsTr, images/+labels/, X + X_label "
                                      "volumes, or 2D images/+masks/)")
    parser.add_argument("output", help="output folder (splits.json, cache/, yolo/, prepared.json)")
    parser.add_argument("--kind", choices=("auto", "3d", "2d"), default="auto", help="dataset kind (default auto)")
    parser.add_argument("--label-map", metavar="SPEC",
                        help="label value -> class: 'dentalsegmentator', 'fdi', '3:1,4:1', '11-28:1,31-48:2', JSON "
                             "or a .json file (default: every nonzero label is a tooth)")
    parser.add_argument("--classes", metavar="NAMES", help="comma-separated class names (default: tooth)")
    parser.add_argument("--budget", type=_percent, nargs="+", default=None, metavar="PERCENT",
                        help="annotation budget(s) in percent of the training cases, e.g. 10 20 50 100 (default 100)")
    parser.add_argument("--spacing", type=_spacing, default=0.25, metavar="MM",
                        help="isotropic resampling spacing in mm, or 'none' to keep the input's (default 0.25)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("P_LOW", "P_HIGH"), default=None,
                        help="per-volume intensity percentiles mapped to [0, 1] (default 0.5 99.5)")
    parser.add_argument("--fixed-window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="fixed grey-value window instead of percentiles")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--test-fraction", type=float, default=0.2, help="share of cases for the test set (0.2)")
    test.add_argument("--test-count", type=int, default=None, help="number of test cases (overrides the fraction)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the remaining cases held out for validation (0.1)")
    parser.add_argument("--seed", type=int, default=2025, help="split shuffle seed (paper: 2025)")
    parser.add_argument("--empty-ratio", type=float, default=0.1,
                        help="slices without teeth kept per slice with teeth (0.1)")
    parser.add_argument("--strict-labels", action="store_true",
                        help="stop on label values the label map does not cover (default: warn, use background)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or invalid cases (reported) instead of stopping")
    parser.add_argument("--no-yolo", action="store_true", help="do not export the Phase 1 YOLO dataset")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar")


def run(args: argparse.Namespace) -> int:
    from ._progress import command_progress

    with command_progress(args, COMMAND) as progress:
        manifest = _prepare(args, progress)
    if args.progress != "json":
        s = manifest["summary"]
        out = sys.stdout
        print(f"prepared {args.output}", file=out)
        for key in ("cases", "train", "val", "test", "slices", "slices_with_foreground", "boxes"):
            print(f"  {key.replace('_', ' ')}: {s[key]}", file=out)
        print(f"  training slices per budget: {json.dumps(s['training_slices'])}", file=out)
        for budget, rel in manifest["yolo"].items():
            print(f"  YOLO data ({budget}%): {args.output}/{rel}/data.yaml", file=out)
        for w in manifest["warnings"]:
            print(f"  warning: {w}", file=out)
        for sk in manifest["skipped"]:
            print(f"  skipped: {sk['file']}: {sk['reason']}", file=out)
    return 0


def _prepare(args: argparse.Namespace, progress) -> dict:
    from ..data.config import PreprocessConfig
    from ..data.labels import parse_label_map
    from ..data.prepared import PrepareOptions, prepare_dataset
    from ..errors import ConfigError

    cfg = PreprocessConfig(target_spacing=args.spacing)
    if args.window is not None:
        cfg.window_percentiles = (args.window[0], args.window[1])
    if args.fixed_window is not None:
        if args.fixed_window[1] <= args.fixed_window[0]:
            raise ConfigError("--fixed-window LOW HIGH needs LOW < HIGH")
        cfg.fixed_window = (args.fixed_window[0], args.fixed_window[1])
    if args.classes:
        cfg.class_names = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.label_map:
        cfg.label_map = parse_label_map(args.label_map)
    opts = PrepareOptions(kind=args.kind, test_fraction=args.test_fraction, test_count=args.test_count,
                          val_fraction=args.val_fraction, seed=args.seed, budgets=args.budget or [1.0],
                          empty_ratio=args.empty_ratio, strict_labels=args.strict_labels, skip_bad=args.skip_bad,
                          yolo=not args.no_yolo)
    return prepare_dataset(args.input, args.output, cfg, opts, progress)
