"""A fine-tuning run from start to end: the run folder, its saved configuration, model building and resuming.

Run folder: ``config.json`` (FinetuneConfig, ModelConfig, initial weights), ``splits.json`` (ids used),
``log.csv``, ``tensorboard/``, ``state.safetensors`` (resumable state, rewritten atomically) and
``model.safetensors`` (the model selected by validation Dice, in the core's checkpoint format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from .. import __version__
from ..atomic import check_writable, write_text_atomic
from ..config import from_dict, to_dict
from ..data.splits import write_split_ids
from ..errors import Arg, ConfigError, InputError
from ..model.config import ModelConfig
from ..progress import Progress
from .config import FinetuneConfig

CONFIG_FILE = "config.json"
RUN_FORMAT = "ldfsam-finetune-run"


def read_run_config(run_dir: Path):
    """(FinetuneConfig, ModelConfig, init dict) saved in a run folder."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("is not a fine-tuning run folder (no config.json)", run_dir) from None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot be read ({e})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise InputError("is not a fine-tuning run configuration", path)
    try:
        return (from_dict(FinetuneConfig, doc["finetune"], "finetune"), from_dict(ModelConfig, doc["model"], "model"),
                doc.get("init", {}))
    except (ConfigError, KeyError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _build(model_cfg: ModelConfig, sam_checkpoint: Optional[str], seed: int, load_init: bool = True,
           init_model: Optional[str] = None):
    """The model with Phase 2's trainable parameters; ``load_init=False`` (resuming: the saved state has every
    tensor) skips reading the prompt generator and SAM files. ``init_model``: an LDFSAM model file to start from
    (all but its prompt generator; ``finetune/from_model.py``)."""
    import torch

    from ..model.build import build_model
    from ..model.trainable import configure_phase2

    if model_cfg.prompt_mode == "auto":
        from ..errors import ConfigError

        raise ConfigError("prompt mode 'auto' is not trained itself: train a 'dense+sparse' and a 'box' model, then "
                          "join them with `ldfsam models combine` (docs/training.md)")
    # Same seed on every rank: randomly initialised parts are identical before DDP broadcasts them anyway.
    torch.manual_seed(seed)
    model = build_model(model_cfg, load_prompt_generator=load_init)
    if load_init:
        from ..model.pretrained import load_pretrained_sam

        load_pretrained_sam(model, sam_checkpoint)
        if init_model:
            from .from_model import load_starting_model

            load_starting_model(model, init_model)
    names = configure_phase2(model)
    return model, names


def finetune(cfg: Optional[FinetuneConfig], model_cfg: Optional[ModelConfig], run_dir: Path, resume: bool = False,
             sam_checkpoint: Optional[str] = None, device: str = "auto", progress: Optional[Progress] = None,
             init_model: Optional[str] = None):
    """Start a new run in ``run_dir`` (which must not hold one) or resume the one there (``resume=True``).

    For a new run ``model_cfg.prompt_generator.init_weights`` names the Phase 1 prompt generator file (None:
    random initialisation, for tests) and ``sam_checkpoint`` an official SAM checkpoint for the encoder.
    """
    from . import distributed
    from .data import load_data
    from .trainer import MODEL_FILE, STATE_FILE, Trainer

    run_dir = Path(run_dir)
    if resume:
        cfg, model_cfg, init = read_run_config(run_dir)
        sam_checkpoint = init.get("sam_checkpoint")
        if not (run_dir / STATE_FILE).is_file():
            raise InputError(f"has no {STATE_FILE} to resume from (the run never saved a state)", run_dir)
    else:
        if (run_dir / CONFIG_FILE).exists() and ((run_dir / STATE_FILE).exists() or (run_dir / MODEL_FILE).exists()):
            raise InputError("holds a fine-tuning run already; pass {} to continue it or choose a new folder",
                             run_dir, arguments=[Arg("resume", True)])
        if cfg is None or model_cfg is None:
            raise ConfigError("a new run needs a FinetuneConfig and a ModelConfig")
        check_writable(run_dir / CONFIG_FILE)  # before minutes of loading data and building the model
        init = {"prompt_generator": model_cfg.prompt_generator.init_weights, "sam_checkpoint": sam_checkpoint}
        if init_model:
            init["model"] = str(init_model)
    cfg.validate()
    env = distributed.setup(device)
    # Every rank has checked the folder above before rank 0 writes into it below.
    distributed.barrier(env)
    try:
        data = load_data(cfg, model_cfg.sam.image_size, model_cfg.prompt_generator.image_size,
                         list(model_cfg.class_names))
        if list(data.preprocess.class_names) != list(model_cfg.class_names):
            model_cfg.class_names = list(data.preprocess.class_names)
        model_cfg.sam.image_size = data.preprocess.sam_size
        model_cfg.prompt_generator.image_size = data.preprocess.yolo_size
        if sam_checkpoint:
            model_cfg.sam.init_checkpoint = str(sam_checkpoint)
        model, names = _build(model_cfg, sam_checkpoint, cfg.seed, load_init=not resume,
                              init_model=init.get("model"))
        if not resume:
            from .box_conf import choose_for_run

            # Before config.json is written: a resumed run keeps the choice (its model config and init say it).
            chosen = choose_for_run(cfg, model, data)
            if chosen is not None:
                init["box_conf"] = chosen
        # Written once data and model are known to work: a failed start leaves no run to "resume".
        if not resume and env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            doc = {"format": RUN_FORMAT, "package_version": __version__, "finetune": to_dict(cfg),
                   "model": to_dict(model_cfg), "init": init}
            write_text_atomic(run_dir / CONFIG_FILE, json.dumps(doc, indent=2) + "\n")
            write_split_ids(data.splits, run_dir / "splits.json", used_by="finetune", budget=cfg.budget)
        distributed.barrier(env)
        provenance: Dict[str, Any] = {
            "dataset": str(Path(cfg.data).resolve()), "dataset_format": data.info.get("format"),
            "splits_file": cfg.splits, "splits_sha256": data.splits_sha256(),
            "split_counts": {k: len(v) for k, v in data.splits.items()}, "budget": cfg.budget,
            "epochs": cfg.epochs, "seed": cfg.seed, "prompt_generator": init.get("prompt_generator"),
            "sam_checkpoint": sam_checkpoint, "trainable_parameters": len(names),
            "box_conf": init.get("box_conf", "model"),
        }
        if init.get("model"):
            provenance["init_model"] = init["model"]
        trainer = Trainer(cfg, model, model_cfg, data, run_dir, env, progress, provenance)
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        distributed.teardown(env)
