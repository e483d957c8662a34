"""``ldfsam train``: prepare, Phase 1, Phase 2 and the test evaluation in one run folder, with a report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

COMMAND = "train"
HELP = ("The whole training in one run folder: prepare (when needed), Phase 1, Phase 2, evaluation on the test "
        "split, and report.html; resumable with --resume.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="dataset folder (as `ldfsam prepare` takes it) or a prepared folder")
    p.add_argument("-o", "--out", required=True, type=Path, help="run folder (new, or the run to resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out; finished stages are skipped")
    p.add_argument("--config", type=Path, help="TrainConfig JSON; the options below override it")
    p.add_argument("--preset", choices=["vit_b", "vit_l", "vit_h", "small"], help="SAM size (default vit_b)")
    p.add_argument("--prompt-mode", choices=["box", "none", "dense", "sparse", "dense+sparse"])
    p.add_argument("--budget", type=float, metavar="PERCENT", help="annotation budget in percent (default 100)")
    p.add_argument("--epochs", type=int, help="epochs of every training stage (teacher, student, Phase 2)")
    p.add_argument("--phase1-epochs", type=int, help="epochs of the teacher and of the student (with --from: "
                                                     "0, the default, keeps the model's prompt generator)")
    p.add_argument("--phase2-epochs", type=int, help="epochs of Phase 2")
    p.add_argument("--batch", type=int, help="batch size of both phases")
    p.add_argument("--imgsz", type=int, help="prompt generator input size (Phase 1 and 2; multiple of 32)")
    p.add_argument("--sam-size", type=int, help="SAM input size (default: the preset's)")
    p.add_argument("--teacher-scale", choices=("auto",) + tuple("nsmlx"),
                   help="YOLOv8 teacher scale (default auto: s with the pretrained YOLOv8s where it is installed, "
                        "else the paper's x)")
    p.add_argument("--student-scale", choices=tuple("nsmlx"), help="YOLOv8 student scale (default n)")
    p.add_argument("--scheme", choices=("none", "kd", "ld_main", "ld_main_vlr"), help="distillation scheme")
    p.add_argument("--sam-checkpoint", type=Path, help="official SAM checkpoint (.pth) for the image encoder")
    p.add_argument("--seed", type=int, help="split, training and bootstrap seed (default 2025)")
    p.add_argument("--workers", type=int, help="data loader processes of both phases")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--from", dest="from_model", metavar="MODEL",
                   help="improve this installed model (name or .safetensors file) instead of training from scratch: "
                        "its preprocessing, prompt generator and weights, a short schedule")
    p.add_argument("--mix-phantoms", type=int, metavar="N",
                   help="with --from: add N augmented phantoms of the bundled model's training data to the training "
                        "split, so that what the model knew is not forgotten")
    p.add_argument("--name", dest="model_name", metavar="NAME",
                   help="install the new model under NAME in the model manager (an installed name is never "
                        "overwritten)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")


def build_config(args: argparse.Namespace):
    """The TrainConfig of a command line: --config file (or defaults), then the options given."""
    from ..config import load_json
    from ..errors import ConfigError
    from ..train.config import TrainConfig

    cfg = load_json(TrainConfig, args.config) if args.config else TrainConfig()
    if args.data:
        cfg.data = str(Path(args.data).resolve())
    if args.budget is not None:
        if not 0 < args.budget <= 100:
            raise ConfigError(f"--budget {args.budget} must be in (0, 100]")
        cfg.budget = args.budget / 100.0
    for opt, key in (("preset", "preset"), ("prompt_mode", "prompt_mode"), ("sam_size", "sam_size"),
                     ("seed", "seed"), ("device", "device")):
        if getattr(args, opt) is not None:
            setattr(cfg, key, getattr(args, opt))
    if args.sam_checkpoint:
        cfg.sam_checkpoint = str(args.sam_checkpoint.resolve())
    d = cfg.distill
    recipe = {k: v for k, v in (("batch", args.batch), ("imgsz", args.imgsz), ("workers", args.workers),
                                ("epochs", args.phase1_epochs or args.epochs)) if v is not None}
    if args.seed is not None:
        recipe["seed"] = args.seed
    d.teacher, d.student = dataclasses.replace(d.teacher, **recipe), dataclasses.replace(d.student, **recipe)
    for opt in ("teacher_scale", "student_scale"):
        if getattr(args, opt) is not None:
            setattr(d, opt, getattr(args, opt))
    if args.scheme:
        d.ld = dataclasses.replace(d.ld, scheme=args.scheme)
    ft = {k: v for k, v in (("batch_size", args.batch), ("num_workers", args.workers),
                            ("epochs", args.phase2_epochs or args.epochs)) if v is not None}
    cfg.finetune = dataclasses.replace(cfg.finetune, **ft)
    if args.mix_phantoms is not None:
        cfg.mix_phantoms = args.mix_phantoms
    if args.model_name:
        from ..models.registry import check_name

        cfg.model_name = check_name(args.model_name, "--name")
    if args.from_model:
        from ..train import from_model

        given = {k: getattr(args, k) for k in ("epochs", "phase1_epochs", "phase2_epochs", "batch")}
        if args.config:  # what the file sets wins over the short schedule, whatever its value (options win over both)
            in_file = json.loads(Path(args.config).read_text(encoding="utf-8")).get("finetune") or {}
            for key, name in (("lr", "lr"), ("epochs", "phase2_epochs")):
                if key in in_file and given.get(name) is None:
                    given[name] = getattr(cfg.finetune, key)  # as load_json read and checked it
        if args.phase1_epochs is None and args.epochs is not None:
            given["phase1_epochs"] = 0  # --epochs sets Phase 2's; Phase 1 trains on only when asked to
        from_model.configure(cfg, args.from_model, {k: v for k, v in given.items() if v is not None})
    elif cfg.mix_phantoms:
        raise ConfigError("--mix-phantoms needs --from MODEL: phantoms keep what a model knew while it learns")
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..progress import Progress
    from ..train.run import run_training

    if not args.resume and not args.data:
        raise InputError("give the dataset folder (or pass --resume to continue the run in --out)")
    cfg = build_config(args) if args.data or args.config else None
    progress = Progress(args.progress, stream=sys.stdout if args.progress == "json" else None)
    saved_stdout = sys.stdout
    if args.progress == "json":
        sys.stdout = sys.stderr  # library chatter must not mix with the events on stdout
    try:
        report = run_training(cfg, args.out, resume=args.resume, progress=progress)
    finally:
        sys.stdout = saved_stdout
        progress.close()
    if args.progress != "bar":  # the bar's last line says it already
        print(f"report: {report}", file=sys.stderr if args.progress == "json" else sys.stdout)
    return 0
