"""``ldfsam train``: prepare -> Phase 1 -> Phase 2 -> evaluation, in one run folder, resumable at any point.

Run folder layout (``run``)::

    train.json      the TrainConfig (read back on resume)
    stages.json     the finished stages with their wall time, rewritten after each stage
    splits.json     the case splits of the run (format ``ldfsam-splits``)
    prepared/       ``ldfsam prepare``'s output (absent when the data folder is prepared already)
    phase1/         ``ldfsam distill``'s run folder: teacher, student, student.safetensors
    phase2/         ``ldfsam finetune``'s run folder: log.csv, state.safetensors, model.safetensors
    evaluation/     ``ldfsam evaluate``'s output (per_case.csv, summary.json) and predictions/
    report.html     the report (``ldfsam report RUN`` rebuilds it)

Each stage is one of the four commands' own functions, so a stage folder is what that command would have
written and each stage resumes the way that command does: a finished stage is skipped, an unfinished one
continues from its last saved state (prepare reuses its cache, Phase 1 its ultralytics checkpoint, Phase 2
its training state); the evaluation is recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .. import __version__
from ..atomic import write_text_atomic
from ..config import from_dict, to_dict
from ..errors import ConfigError, InputError
from ..progress import Progress
from .config import TrainConfig

PathLike = Union[str, Path]
RUN_FORMAT = "ldfsam-train-run"
CONFIG_FILE = "train.json"
STAGES_FILE = "stages.json"
STAGES = ("prepare", "phase1", "phase2", "evaluate")
PHASE = "train"


class RunFolder:
    """The paths of a training run folder and its record of finished stages."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.stages = self.root / STAGES_FILE
        self.splits = self.root / "splits.json"
        self.prepared = self.root / "prepared"
        self.phase1 = self.root / "phase1"
        self.prompt_generator = self.phase1 / "student.safetensors"
        self.phase2 = self.root / "phase2"
        self.model = self.phase2 / "model.safetensors"
        self.evaluation = self.root / "evaluation"
        self.predictions = self.evaluation / "predictions"
        self.report = self.root / "report.html"

    def read_config(self) -> TrainConfig:
        try:
            doc = json.loads(self.config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"is not a training run folder (no {CONFIG_FILE})", self.root) from None
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot be read ({e})", self.config) from None
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
            raise InputError("is not an ldfsam training run configuration", self.config)
        return from_dict(TrainConfig, doc.get("config"), "config").validate()

    def write_config(self, cfg: TrainConfig) -> None:
        doc = {"format": RUN_FORMAT, "version": 1, "package_version": __version__, "config": to_dict(cfg)}
        write_text_atomic(self.config, json.dumps(doc, indent=2) + "\n")

    def read_stages(self) -> Dict[str, Dict[str, Any]]:
        try:
            return dict(json.loads(self.stages.read_text(encoding="utf-8")).get("stages", {}))
        except (OSError, json.JSONDecodeError, AttributeError):
            return {}

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        stages = self.read_stages()
        from .machine import machine_info

        stages[stage] = {"finished": round(time.time(), 3), "seconds": round(seconds, 3), **info,
                         "machine": machine_info()}
        write_text_atomic(self.stages, json.dumps({"stages": stages}, indent=2) + "\n")

    def prepared_dir(self, cfg: TrainConfig) -> Path:
        """The prepared data: the data folder itself when ``ldfsam prepare`` wrote it, else ``prepared/``."""
        from ..finetune.slices import is_prepared

        return Path(cfg.data) if is_prepared(Path(cfg.data)) else self.prepared


def run_training(cfg: Optional[TrainConfig], run: PathLike, resume: bool = False,
                 progress: Optional[Progress] = None) -> Path:
    """Run (or with ``resume`` continue) the whole training in the folder ``run``; returns the report's path.

    A new run needs ``cfg`` and a folder without a run; resuming reads the run's own ``train.json`` (a ``cfg``
    that differs is reported and ignored).
    """
    folder = RunFolder(run)
    progress = progress or Progress("none")
    if resume:
        saved = folder.read_config()
        if cfg is not None and to_dict(cfg) != to_dict(saved):
            progress.log(PHASE, f"resuming with the run's own settings from {folder.config}", level="warning")
        cfg = saved
    else:
        if cfg is None:
            raise ConfigError("a new training run needs a TrainConfig")
        cfg = cfg.validate()
        if folder.config.exists():
            raise InputError("holds a training run already: pass --resume to continue it, or choose another "
                             "output folder", folder.root)
        if folder.root.exists() and any(folder.root.iterdir()):
            raise InputError("is not empty: a new training run needs a new or empty folder", folder.root)
        if not Path(cfg.data).is_dir():
            raise InputError("no such dataset folder", cfg.data)
        if cfg.model_name:  # a taken name fails now, not after the training
            from ..models.lineage import check_new_name

            check_new_name(cfg.model_name)
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.write_config(cfg)
    done = folder.read_stages()
    steps = {"prepare": _prepare, "phase1": _phase1, "phase2": _phase2, "evaluate": _evaluate}
    progress.start(PHASE, total=len(STAGES), message=f"training in {folder.root}: {', '.join(STAGES)}",
                   stages=list(STAGES))
    try:
        for i, stage in enumerate(STAGES):
            progress.context["stage"] = stage
            if stage in done:
                progress.log(PHASE, f"stage {i + 1}/{len(STAGES)} {stage}: finished before, skipped")
                continue
            progress.log(PHASE, f"stage {i + 1}/{len(STAGES)}: {stage}")
            t0 = time.monotonic()
            info = steps[stage](cfg, folder, progress) or {}
            folder.finish(stage, time.monotonic() - t0, **info)
            progress.update(PHASE, i + 1, len(STAGES))
        progress.context.pop("stage", None)
        from .report import write_report

        report = write_report(folder.root)
        if cfg.model_name:
            from ..models.lineage import install_version

            installed = install_version(folder.root, cfg.model_name)
            progress.log(PHASE, f"installed the new model as '{cfg.model_name}': {installed}")
    except Exception as e:
        progress.error(PHASE, str(e))
        raise
    finally:
        progress.context.pop("stage", None)
    progress.done(PHASE, message=f"report: {report}", report=str(report), model=str(folder.model))
    return report


# -- the stages ------------------------------------------------------------------------------------------------
def _prepare(cfg: TrainConfig, folder: RunFolder, progress: Progress) -> Dict[str, Any]:
    from ..data.splits import read_splits, write_splits

    prepared = folder.prepared_dir(cfg)
    if prepared != folder.prepared:
        progress.log(PHASE, f"{prepared} is prepared already; using it as it is")
    else:
        from ..data.config import PreprocessConfig
        from ..data.labels import parse_label_map
        from ..data.prepared import PrepareOptions, prepare_dataset

        p = cfg.prepare
        pre = PreprocessConfig(target_spacing=p.spacing)
        if p.class_names:
            pre.class_names = list(p.class_names)
        if p.label_map:
            pre.label_map = parse_label_map(p.label_map)
        opts = PrepareOptions(test_fraction=p.test_fraction, val_fraction=p.val_fraction, seed=cfg.seed,
                              budgets=[cfg.budget], empty_ratio=p.empty_ratio)
        source = Path(cfg.data)
        if cfg.init_model:  # --from MODEL: its preprocessing, and the phantoms mixed in (train/from_model.py)
            from . import from_model

            pre = from_model.preprocess(cfg)
            opts.yolo = False  # exported on the run's own splits, below
            if cfg.mix_phantoms:
                source = from_model.build_sources(cfg, folder.root, progress)
        prepare_dataset(source, prepared, pre, opts, progress)
        if cfg.init_model:
            from_model.phantoms_to_training(prepared, cfg)
            from_model.warn_if_no_background(prepared, cfg, progress)
    write_splits(read_splits(prepared / "splits.json"), folder.splits)
    return {"prepared": str(prepared)}


def _phase1(cfg: TrainConfig, folder: RunFolder, progress: Progress) -> Dict[str, Any]:
    from ..data.prepared import PreparedData
    from ..distill.run import best_scores, run_distillation

    if cfg.init_model and cfg.keep_prompt_generator:
        from .from_model import keep_prompt_generator

        progress.log(PHASE, "keeping the starting model's prompt generator (pass --phase1-epochs N to train it on)")
        return keep_prompt_generator(cfg, folder)
    data_yaml = PreparedData(folder.prepared_dir(cfg)).yolo_data_yaml(cfg.budget)
    distill = dataclasses.replace(cfg.distill)
    device = _phase1_device(cfg.device)
    distill.teacher = dataclasses.replace(distill.teacher, device=device)
    distill.student = dataclasses.replace(distill.student, device=device)
    if cfg.init_model:
        from .from_model import start_prompt_generator

        distill.student_init = str(start_prompt_generator(cfg, folder.root))
    run_distillation(data_yaml, folder.phase1, distill, resume=folder.phase1.exists(), progress=progress)
    return {"best": best_scores(folder.phase1)}


def _phase1_device(device: str) -> str:
    if device == "auto":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return {"cuda": "0"}.get(device, device)


def _phase2(cfg: TrainConfig, folder: RunFolder, progress: Progress) -> Dict[str, Any]:
    from ..finetune.run import finetune
    from ..finetune.trainer import STATE_FILE

    if (folder.phase2 / STATE_FILE).is_file():
        progress.log(PHASE, f"resuming Phase 2 from {folder.phase2 / STATE_FILE}")
        result = finetune(None, None, folder.phase2, resume=True, device=cfg.device, progress=progress)
    else:
        ft_cfg, model_cfg = phase2_configs(cfg, folder)
        result = finetune(ft_cfg, model_cfg, folder.phase2, sam_checkpoint=cfg.sam_checkpoint, device=cfg.device,
                          progress=progress, init_model=cfg.init_model)
    if result.model_path is None:
        raise InputError("Phase 2 ended without a model", folder.phase2)
    return {"best_val_dice": result.best_val_dice, "epochs": result.epochs_done, "steps": result.global_step}


def phase2_configs(cfg: TrainConfig, folder: RunFolder):
    """(FinetuneConfig, ModelConfig) of Phase 2: the prepared data at the run's budget and seed, the preset's
    model with the Phase 1 student as its frozen prompt generator at Phase 1's input size."""
    from ..model.presets import model_config
    from ..model.prompt_generator import load_prompt_generator_weights

    ft_cfg = dataclasses.replace(cfg.finetune, data=str(folder.prepared_dir(cfg).resolve()), budget=cfg.budget,
                                 seed=cfg.seed, splits=None)
    if cfg.init_model:
        from . import from_model

        if not folder.prompt_generator.is_file():
            raise InputError("no prompt generator: Phase 1 has not finished", folder.prompt_generator)
        return ft_cfg, from_model.model_config(cfg, folder.prompt_generator)
    model_cfg = model_config(cfg.preset, prompt_mode=cfg.prompt_mode)
    if cfg.sam_size:
        model_cfg.sam.image_size = cfg.sam_size
    if not folder.prompt_generator.is_file():
        raise InputError("no prompt generator: Phase 1 has not finished", folder.prompt_generator)
    _, pg_cfg, _ = load_prompt_generator_weights(folder.prompt_generator)
    model_cfg.prompt_generator = dataclasses.replace(pg_cfg, image_size=cfg.distill.student.imgsz,
                                                     init_weights=str(folder.prompt_generator.resolve()))
    return ft_cfg, model_cfg


def _evaluate(cfg: TrainConfig, folder: RunFolder, progress: Progress) -> Dict[str, Any]:
    from ..data.prepared import PreparedData
    from ..data.splits import read_splits
    from ..evaluate.model_eval import evaluate_model
    from ..evaluate.report import summarize, write_report

    e = cfg.evaluate
    cases = read_splits(folder.splits).of(e.split)
    if not cases:
        progress.log(PHASE, f"the {e.split} split is empty: nothing to evaluate", level="warning")
        return {"cases": 0}
    source = Path(PreparedData(folder.prepared_dir(cfg)).manifest["source"])
    rows = evaluate_model(str(folder.model), source, str(folder.splits), e.split, e.tolerance_mm,
                          device=cfg.device, threshold=e.threshold, save_dir=folder.predictions, progress=progress)
    summary = summarize(rows, resamples=e.bootstrap, seed=cfg.seed, tolerance_mm=e.tolerance_mm)
    paths = write_report(folder.evaluation, rows, summary)
    progress.done("evaluate", message=f"per-case metrics: {paths['per_case']}; summary: {paths['summary']}",
                  cases=summary["cases"])
    if cfg.init_model:  # the same held-out cases through the model this run started from, for the report
        from .from_model import evaluate_starting_model

        evaluate_starting_model(cfg, folder, source, progress)
    return {"cases": summary["cases"], "split": e.split}
