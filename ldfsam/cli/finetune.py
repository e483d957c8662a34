"""``ldfsam finetune``: Phase 2 segmentation fine-tuning (one process, or many under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

COMMAND = "finetune"
HELP = "Phase 2: fine-tune SAM with feature prompts from a frozen prompt generator (resumable, torchrun-ready)."

# Command-line option -> FinetuneConfig field (None: keep the default or the --config file's value).
_FIELDS = {
    "format": "dataset_format", "splits": "splits", "split_seed": "split_seed", "val_fraction": "val_fraction",
    "test_fraction": "test_fraction", "budget": "budget", "max_train_items": "max_train_items",
    "max_val_items": "max_val_items", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "alpha_lr_scale": "alpha_lr_scale", "grad_clip": "grad_clip",
    "max_steps": "max_steps", "seed": "seed",
    "precision": "precision", "workers": "num_workers", "checkpoint_every": "checkpoint_every_steps",
    "validate_every": "validate_every_epochs", "early_stop": "early_stop_patience", "box_prompts": "box_prompts",
    "box_conf": "box_conf", "flip_augment": "flip_augment",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="prepared dataset folder (ldfsam prepare) or a 2D image/mask dataset folder")
    p.add_argument("--out", required=True, type=Path, help="run folder (new, or the run to resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--config", type=Path, help="FinetuneConfig JSON; options given here override it")
    p.add_argument("--format", choices=["auto", "slices", "images"], help="dataset kind (default: auto)")
    p.add_argument("--splits", help="splits file (default: the prepared folder's, or the paper protocol for 2D)")
    p.add_argument("--split-seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--budget", type=float, help="fraction of training cases used (annotation budget), e.g. 0.1")
    p.add_argument("--max-train-items", type=int)
    p.add_argument("--max-val-items", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--model-config", type=Path, help="ModelConfig JSON (default: the --preset's)")
    g.add_argument("--preset", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "small", "lite"],
                   help="SAM size: vit_b (paper), vit_l, vit_h, small (CPU tests and demos), or lite (the "
                        "pretrained LiteMedSAM encoder, frozen; its embeddings are cached)")
    g.add_argument("--prompt-mode", choices=["box", "zero-shot", "none", "dense", "sparse", "dense+sparse"],
                   help="dense+sparse (the paper's), dense, sparse, box (detected boxes), zero-shot (the pretrained "
                        "decoder unchanged), none (the decoder fine-tuned with no prompt: an ablation)")
    g.add_argument("--box-prompts", choices=["detected", "ground_truth"],
                   help="box mode: the detector's boxes (default) or the reference masks' boxes (oracle baseline)")
    g.add_argument("--box-conf", choices=["auto", "model"],
                   help="the detection confidence and boxes per image saved in the model: auto (default: chosen on "
                        "the validation images) or model (the model configuration's, 0.25 and 32)")
    g.add_argument("--prompt-generator", type=Path, help="Phase 1 prompt generator .safetensors (frozen)")
    g.add_argument("--sam-checkpoint", type=Path, help="official SAM checkpoint (.pth) for the image encoder")
    g.add_argument("--sam-size", type=int, help="SAM input size for 2D datasets (default 256)")
    g.add_argument("--yolo-size", type=int, help="prompt generator input size for 2D datasets")
    g.add_argument("--class-names", help="comma-separated class names for 2D datasets (default: the model's)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="per process (the paper: 16 per GPU)")
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--alpha-lr-scale", type=float,
                   help="the dense prompt's α learns at this multiple of --lr (default: FinetuneConfig's)")
    t.add_argument("--grad-clip", type=float)
    t.add_argument("--flip-augment", choices=["none", "h", "hv"],
                   help="one-class models: each epoch shows every training item as itself or a flip (h: horizontal, "
                        "hv: also vertical and both), each flip encoded once (default none)")
    t.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    t.add_argument("--workers", type=int, help="data loader processes")
    t.add_argument("--checkpoint-every", type=int, help="also save the training state every N steps")
    t.add_argument("--validate-every", type=int, help="validate every N epochs")
    t.add_argument("--early-stop", type=int, help="stop after N validations without improvement")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")


def _configs(args):
    from ..config import from_dict, load_json, to_dict
    from ..errors import InputError
    from ..finetune.config import FinetuneConfig
    from ..model.config import ModelConfig
    from ..model.presets import model_config

    cfg = load_json(FinetuneConfig, args.config) if args.config else FinetuneConfig()
    if not args.data:
        raise InputError("--data is needed for a new run (or pass --resume)")
    updates = {"data": str(Path(args.data).resolve())}
    for opt, field in _FIELDS.items():
        value = getattr(args, opt)
        if value is not None:
            updates[field] = value
    if updates.get("splits"):
        updates["splits"] = str(Path(updates["splits"]).resolve())
    cfg = dataclasses.replace(cfg, **updates)
    model_cfg = load_json(ModelConfig, args.model_config) if args.model_config else model_config(args.preset)
    if args.prompt_mode:
        model_cfg.prompt_mode = args.prompt_mode
    if args.sam_size:
        model_cfg.sam.image_size = args.sam_size
    if args.yolo_size:
        model_cfg.prompt_generator.image_size = args.yolo_size
    if args.class_names:
        model_cfg.class_names = [c.strip() for c in args.class_names.split(",") if c.strip()]
    if args.prompt_generator:
        if not args.prompt_generator.is_file():
            raise InputError("no such prompt generator file", args.prompt_generator)
        from ..model.prompt_generator import load_prompt_generator_weights

        _, pg_cfg, _ = load_prompt_generator_weights(args.prompt_generator)
        model_cfg.prompt_generator = dataclasses.replace(pg_cfg, image_size=model_cfg.prompt_generator.image_size,
                                                         init_weights=str(args.prompt_generator.resolve()))
    # A round trip through the checked loader catches bad values from the command line.
    return cfg, from_dict(ModelConfig, to_dict(model_cfg), "model")


def run(args: argparse.Namespace) -> int:
    from ._progress import command_progress

    with command_progress(args, COMMAND) as progress:
        return _run(args, progress)


def _run(args: argparse.Namespace, progress) -> int:
    from ..finetune.run import finetune

    if args.resume:
        cfg = model_cfg = None
    else:
        cfg, model_cfg = _configs(args)
        if model_cfg.prompt_generator.init_weights is None:
            progress.log("finetune", "no --prompt-generator: the YOLO prompt generator is randomly initialised "
                                     "(fine for tests; train one with Phase 1 for real use)", level="warning")
        if args.sam_checkpoint is None:
            progress.log("finetune", "no --sam-checkpoint: SAM's image encoder, prompt encoder and mask decoder "
                                     "are randomly initialised, not pretrained as in the paper (fine for tests; "
                                     "pass the official SAM checkpoint of the preset for real use)",
                         level="warning")
    sam_ckpt = str(args.sam_checkpoint.resolve()) if args.sam_checkpoint else None
    result = finetune(cfg, model_cfg, args.out, resume=args.resume, sam_checkpoint=sam_ckpt, device=args.device,
                      progress=progress)
    if result.model_path is None:
        return 1
    return 0
