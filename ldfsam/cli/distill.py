"""``ldfsam distill``: Phase 1, train the YOLOv8 teacher and distil the YOLOv8n prompt generator from it."""

from __future__ import annotations

import argparse
import dataclasses

COMMAND = "distill"
HELP = "Phase 1: train the YOLOv8 teacher, then the prompt generator with localization distillation."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder written by `ldfsam prepare`, or a YOLO data.yaml (or the folder holding it)")
    p.add_argument("-o", "--out", required=True, help="run folder (checkpoints, logs, teacher/student .safetensors)")
    p.add_argument("--stage", choices=("teacher", "student", "both"), default="both",
                   help="train the teacher, the student, or both in turn (default both)")
    p.add_argument("--teacher-weights", help="trained teacher (.safetensors) for the student stage")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--budget", type=float, default=100.0, metavar="PERCENT",
                   help="annotation budget of a prepared dataset, in percent of its training cases (default 100)")
    p.add_argument("--config", help="DistillConfig JSON file; the options below override it")
    p.add_argument("--scheme", choices=("none", "kd", "ld_main", "ld_main_vlr"),
                   help="distillation scheme of the student (default ld_main_vlr)")
    p.add_argument("--teacher-scale", choices=("auto",) + tuple("nsmlx"),
                   help="teacher YOLOv8 scale (default auto: s with the pretrained YOLOv8s where it is installed, "
                        "else the paper's x)")
    p.add_argument("--student-scale", choices=tuple("nsmlx"), help="student YOLOv8 scale (default n)")
    p.add_argument("--epochs", type=int, help="epochs of both stages (default 100)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher stage")
    p.add_argument("--student-epochs", type=int, help="epochs of the student stage")
    p.add_argument("--batch", type=int, help="batch size (default 16)")
    p.add_argument("--imgsz", type=int, help="input size, a multiple of 32 (default 640)")
    p.add_argument("--device", help="torch device for ultralytics: cpu (default), 0, 1, ..., or auto (the first "
                                    "GPU when there is one, else the CPU)")
    p.add_argument("--temperature", type=float, help="LD temperature tau (default 10)")
    p.add_argument("--lambda-main", type=float, help="weight of LD on the main region (default 1)")
    p.add_argument("--lambda-vlr", type=float, help="weight of LD on the VLR (default 1)")
    p.add_argument("--vlr-gamma", type=float, help="VLR band: gamma * alpha_pos <= DIoU < alpha_pos (default 0.25)")
    p.add_argument("--teacher-init", metavar="auto|scratch|NAME|FILE",
                   help="weights to start the teacher from: auto (default: the pretrained yolov8s-fall where "
                        "installed, else random), scratch (random), a registry name (`ldfsam models list`, kind "
                        "prompt-generator) or a local .safetensors / ultralytics .pt. The pretrained YOLOv8 weights "
                        "are Ultralytics', licensed AGPL-3.0")
    p.add_argument("--student-init", metavar="auto|scratch|NAME|FILE",
                   help="weights to start the student from: auto (default: the COCO-pretrained yolov8n-coco where "
                        "installed, else random), scratch, a registry name or a local file (AGPL-3.0 weights, as "
                        "for --teacher-init)")
    p.add_argument("--pretrained-bn", choices=("reestimate", "frozen"),
                   help="BatchNorm of pretrained weights exported with BN folded into the convolutions: keep it "
                        "frozen in eval mode (default) or re-estimate its statistics on the training images")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress output (default bar)")


def build_config(args: argparse.Namespace):
    """The DistillConfig of a command line: --config file (or defaults), then the options given."""
    from ..config import load_json
    from ..distill.config import DistillConfig

    cfg = load_json(DistillConfig, args.config) if args.config else DistillConfig()
    device = _ultralytics_device(args.device) if args.device is not None else None
    recipe = {k: v for k, v in (("batch", args.batch), ("imgsz", args.imgsz), ("device", device)) if v is not None}
    cfg.teacher = dataclasses.replace(cfg.teacher, **recipe)
    cfg.student = dataclasses.replace(cfg.student, **recipe)
    epochs = {"teacher": args.teacher_epochs or args.epochs, "student": args.student_epochs or args.epochs}
    for name, n in epochs.items():
        if n is not None:
            setattr(cfg, name, dataclasses.replace(getattr(cfg, name), epochs=n))
    ld = {k: v for k, v in (("scheme", args.scheme), ("temperature", args.temperature),
                            ("lambda_main", args.lambda_main), ("lambda_vlr", args.lambda_vlr),
                            ("vlr_gamma", args.vlr_gamma)) if v is not None}
    cfg.ld = dataclasses.replace(cfg.ld, **ld)
    for key in ("teacher_scale", "student_scale", "teacher_init", "student_init", "pretrained_bn"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    return cfg.validate()


def _ultralytics_device(device: str) -> str:
    """``auto`` resolved here, in the process that trains (the Slicer modules never import torch themselves)."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    import sys

    from ..distill.run import best_scores, run_distillation
    from ..distill.trainer import format_scores
    from ..errors import ConfigError
    from ._progress import command_progress

    with command_progress(args, "student" if args.stage == "student" else "teacher") as progress:
        if not 0 < args.budget <= 100:
            raise ConfigError(f"--budget {args.budget} must be in (0, 100]")
        cfg = build_config(args)
        made = run_distillation(args.data, args.out, cfg, stage=args.stage, teacher_weights=args.teacher_weights,
                                resume=args.resume, progress=progress, budget=args.budget / 100.0)
    out = sys.stderr if args.progress == "json" else sys.stdout
    for role, path in made.items():
        print(f"{role}: {path}", file=out)
    for role, best in best_scores(args.out).items():
        print(f"{role} validation (best epoch {best.get('best_epoch', '-')}): {format_scores(best)}", file=out)
    return 0
