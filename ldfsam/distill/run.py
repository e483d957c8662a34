"""Phase 1 from start to finish: train the teacher, distil the student, save both as prompt generator files.

Run folder layout (``out``)::

    distill.json              the DistillConfig of the run (read back on resume)
    data.yaml                 the data set's data.yaml with every path made absolute (what ultralytics reads)
    teacher/, student/        ultralytics run folders (weights/last.pt for resume, results.csv, args.yaml)
    teacher/state.json        epochs done and the best epoch's metrics, written after every checkpoint
    teacher.safetensors       the trained teacher (prompt generator format), reusable with --teacher-weights
    student.safetensors       the distilled student: Phase 2's prompt generator

Each stage's product appears (atomically) only when its training has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple, Union

from ..atomic import atomic_path, make_folder, write_text_atomic
from ..config import load_json, save_json, to_dict
from ..errors import Arg, ConfigError, InputError
from ..model.config import PromptGeneratorConfig
from ..progress import Progress
from .config import DistillConfig, TrainRecipe
from .data import read_detection_data

PathLike = Union[str, Path]
STAGES = ("teacher", "student", "both")


@contextlib.contextmanager
def library_output_to(stream: IO[str]) -> Iterator[None]:
    """Send ultralytics' log lines and anything printed to ``stream`` (stdout stays free for JSON events)."""
    logger = logging.getLogger("ultralytics")
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    previous = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(stream)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        for h, s in zip(handlers, previous):
            h.setStream(s)


def _overrides(recipe: TrainRecipe, data_yaml: Path, out: Path, stage: str, model: str) -> Dict[str, Any]:
    on_cpu = recipe.device.lower() in ("cpu", "")
    return dict(
        # Absolute save_dir: ultralytics would put a relative project under its global runs folder.
        model=model, data=str(data_yaml), project=str(out.resolve()), name=stage, exist_ok=True, task="detect",
        save_dir=str((out / stage).resolve()),
        epochs=recipe.epochs, batch=recipe.batch, imgsz=recipe.imgsz, optimizer=recipe.optimizer, lr0=recipe.lr0,
        lrf=recipe.lrf, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
        warmup_epochs=recipe.warmup_epochs, warmup_momentum=recipe.warmup_momentum,
        warmup_bias_lr=recipe.warmup_bias_lr, close_mosaic=recipe.close_mosaic, mosaic=recipe.mosaic,
        patience=recipe.patience, seed=recipe.seed, workers=recipe.workers, device=recipe.device, val=recipe.val,
        pretrained=False, plots=False, amp=not on_cpu, verbose=False, save=True, cache=False,
    )


class _Stage:
    """Files of one stage (teacher or student) inside the run folder."""

    def __init__(self, out: Path, role: str):
        self.role = role
        self.dir = out / role
        self.product = out / f"{role}.safetensors"
        self.staging = self.dir / "best.safetensors"
        self.state = self.dir / "state.json"
        self.last = self.dir / "weights" / "last.pt"

    def read_state(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None


def _train_stage(stage: _Stage, scale: str, recipe: TrainRecipe, data_yaml: Path, num_classes: int,
                 progress: Progress, resume: bool, training_meta: Dict[str, Any], teacher=None, ld=None,
                 init: Optional[str] = None, pretrained_bn: str = "reestimate") -> Tuple[Path, Dict[str, Any]]:
    from ..model.prompt_generator import save_prompt_generator
    from .trainer import Phase1Trainer, format_scores, map_fields, weights_only_checkpoints
    from .weights import has_folded_bn, load_init_source, yolo_yaml

    phase = stage.role
    if stage.product.exists():
        if resume:
            progress.log(phase, f"{stage.product} is finished; reusing it")
            return stage.product, {}
        raise InputError(f"exists already: this run's {phase} is trained (pass {{}} to reuse it, or choose "
                         "another output folder)", stage.product, arguments=[Arg("resume", True)])
    if stage.dir.exists() and any(stage.dir.iterdir()) and not resume:
        raise InputError(f"holds an unfinished {phase} run: pass {{}} to continue it, or choose another "
                         "output folder", stage.dir, arguments=[Arg("resume", True)])
    gen_cfg = PromptGeneratorConfig(scale=scale, image_size=recipe.imgsz, num_classes=num_classes)
    state = stage.read_state() if resume else None

    def finalize(metrics: Dict[str, Any]) -> Tuple[Path, Dict[str, Any]]:
        if not stage.staging.exists():
            raise InputError(f"{phase} training ended without a validated checkpoint", stage.dir)
        os.replace(stage.staging, stage.product)
        summary = f" (best epoch {metrics['best_epoch']}: {format_scores(metrics)})" if "best_epoch" in metrics else ""
        progress.done(phase, message=f"{phase} saved to {stage.product}{summary}", path=str(stage.product),
                      **metrics)
        return stage.product, metrics

    if state and state.get("epoch", 0) >= state.get("epochs", 1) and stage.staging.exists():
        progress.log(phase, f"{phase} training had finished before the interruption; saving it")
        return finalize(state.get("best", {}))

    def on_save(trainer: Phase1Trainer, is_best: bool) -> None:
        record = stage.read_state() or {}
        if is_best or not stage.staging.exists():
            metrics = {k: v for k, v in map_fields(trainer.metrics).items() if v is not None}
            meta = {**training_meta, "epoch": trainer.epoch + 1, "epochs": trainer.epochs, "metrics": metrics}
            with atomic_path(stage.staging) as tmp:
                save_prompt_generator(tmp, trainer.ema.ema, gen_cfg, training=meta)
            record["best"] = {**metrics, "best_epoch": trainer.epoch + 1}
        # One row per epoch; rows past a resumed epoch (from the interrupted attempt) are replaced.
        losses = {k: float(v) for k, v in (trainer.tloss or {}).items()}
        row = {"epoch": trainer.epoch + 1, "loss": sum(losses.values()), **losses, **map_fields(trainer.metrics)}
        record["history"] = [h for h in record.get("history", []) if h["epoch"] < row["epoch"]] + [row]
        record.update(epoch=trainer.epoch + 1, epochs=trainer.epochs)
        write_text_atomic(stage.state, json.dumps(record, indent=2) + "\n")
        write_text_atomic(stage.dir / "metrics.csv", history_csv(record["history"]))

    overrides = _overrides(recipe, data_yaml, stage.dir.parent, stage.role, yolo_yaml(scale))
    if resume and stage.last.exists():
        overrides.update(resume=str(stage.last), model=str(stage.last))
        progress.log(phase, f"resuming {phase} from {stage.last}")
    # A resumed run takes its weights from last.pt, but its BatchNorm is handled as when it started: frozen (the
    # layers the init weights cover) or re-estimated once at the start; never left to normalise pretrained layers.
    pretrained = init not in (None, "scratch", "auto")
    init_source = load_init_source(init) if pretrained else None
    bn_mode = pretrained_bn if pretrained and has_folded_bn(init) else None
    try:
        with weights_only_checkpoints():
            trainer = Phase1Trainer(overrides, phase, progress, on_save=on_save, teacher=teacher, ld=ld,
                                    init_source=init_source, pretrained_bn=bn_mode)
            trainer.train()
    except AssertionError as e:
        # Interrupted after the last epoch's checkpoint but before its state record: nothing is left to train.
        if "nothing to resume" not in str(e):
            raise
        progress.log(phase, f"{phase} training had finished before the interruption; saving it")
    best = (stage.read_state() or {}).get("best", {})
    final = {k: v for k, v in map_fields(trainer.final_metrics).items() if v is not None}
    return finalize({**best, **final})


def history_csv(rows: List[Dict[str, Any]]) -> str:
    """A stage's per-epoch record (state.json "history") as CSV: epoch, losses, validation metrics."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                              else str(row[c]) for c in columns))
    return "\n".join(lines) + "\n"


def read_history(stage_dir: PathLike) -> List[Dict[str, Any]]:
    """The per-epoch rows of a stage folder (``RUN/teacher`` or ``RUN/student``), empty when none was saved."""
    record = _Stage(Path(stage_dir).parent, Path(stage_dir).name).read_state() or {}
    return list(record.get("history", []))


def best_scores(out: PathLike) -> Dict[str, Dict[str, Any]]:
    """The best epoch's validation scores of each stage trained in the run folder ``out``, by role."""
    found = {}
    for role in ("teacher", "student"):
        best = (_Stage(Path(out), role).read_state() or {}).get("best")
        if best:
            found[role] = best
    return found


def _run_config(out: Path, cfg: DistillConfig, resume: bool, progress: Progress) -> DistillConfig:
    saved = out / "distill.json"
    if resume and saved.exists():
        stored = load_json(DistillConfig, saved)
        if to_dict(stored) != to_dict(cfg):
            progress.log("teacher", f"resuming with the run's own settings from {saved}", level="warning")
        return stored.validate()
    save_json(cfg, saved)
    return cfg


def run_distillation(data: PathLike, out: PathLike, cfg: Optional[DistillConfig] = None, stage: str = "both",
                     teacher_weights: Optional[PathLike] = None, resume: bool = False,
                     progress: Optional[Progress] = None, budget: float = 1.0) -> Dict[str, Path]:
    """Run Phase 1 (``stage`` teacher, student or both) into the run folder ``out``; returns the files made.

    data: a YOLO data.yaml, or a prepared dataset folder (``budget``: share of its training cases).
    teacher_weights: a trained teacher (prompt generator ``.safetensors``) for the student stage instead of this
    run's own. resume: continue the stages of an interrupted run (finished stages are reused).
    """
    cfg = (cfg or DistillConfig()).validate()
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    progress = progress or Progress("none")
    if progress.mode == "json" and progress.stream is None:
        progress.stream = sys.stdout  # before the redirection below: events keep the real stdout
    phase = ["student" if stage == "student" else "teacher"]  # the stage running, updated by _run
    try:
        return _run(Path(data), Path(out), cfg, stage, teacher_weights, resume, progress, budget, phase)
    except Exception:
        progress.phase = phase[0]  # the stage that failed, for the command line's error event
        raise


def _run(data: Path, out: Path, cfg: DistillConfig, stage: str, teacher_weights: Optional[PathLike], resume: bool,
         progress: Progress, budget: float, phase: List[str]) -> Dict[str, Path]:
    imgsz = cfg.student.imgsz
    data_set = read_detection_data(data, budget, imgsz=imgsz)
    names = data_set.names
    need_teacher = cfg.ld.scheme != "none"
    train_teacher = stage == "teacher" or (stage == "both" and need_teacher and teacher_weights is None)
    teacher_path = Path(teacher_weights) if teacher_weights else out / "teacher.safetensors"
    if stage == "student" and need_teacher and not teacher_path.is_file():
        raise InputError("no trained teacher here: train one ({}) or pass {}", teacher_path,
                         arguments=[Arg("stage", "teacher"), Arg("teacher_weights")])
    make_folder(out)
    data_yaml = data_set.write(out / "data.yaml")
    if not (resume and (out / "distill.json").exists()):
        cfg = _resolve_inits(cfg, train_teacher, stage in ("student", "both"), progress)
    cfg = _run_config(out, cfg, resume, progress)
    if resume and cfg.student.imgsz != imgsz:
        # A resumed run keeps its own input size, so a prepared folder's export at that size.
        data_set = read_detection_data(data, budget, imgsz=cfg.student.imgsz)
        data_yaml = data_set.write(out / "data.yaml")
    made: Dict[str, Path] = {}
    base_meta = {"phase": 1, "data": str(data_set.source), "class_names": [names[k] for k in sorted(names)],
                 "distill": to_dict(cfg)}
    with library_output_to(sys.stderr):
        if train_teacher:
            made["teacher"], _ = _train_stage(
                _Stage(out, "teacher"), cfg.teacher_scale, cfg.teacher, data_yaml, len(names), progress, resume,
                {**base_meta, "role": "teacher"}, init=cfg.teacher_init, pretrained_bn=cfg.pretrained_bn)
        if stage in ("student", "both"):
            phase[0] = "student"
            teacher, teacher_meta = None, {}
            if need_teacher:
                teacher, teacher_meta = _load_teacher(made.get("teacher", teacher_path), len(names), progress)
            made["student"], _ = _train_stage(
                _Stage(out, "student"), cfg.student_scale, cfg.student, data_yaml, len(names), progress, resume,
                {**base_meta, "role": "student", "scheme": cfg.ld.scheme, "teacher": teacher_meta},
                teacher=teacher, ld=cfg.ld, init=cfg.student_init, pretrained_bn=cfg.pretrained_bn)
    return made


def _resolve_inits(cfg: DistillConfig, teacher: bool, student: bool, progress: Progress) -> DistillConfig:
    """The run's config with "auto" scales and initialisations replaced by what this run uses (and said so)."""
    from .weights import resolve_init, resolve_teacher_scale

    cfg = dataclasses.replace(cfg)
    if teacher:
        cfg.teacher_scale = resolve_teacher_scale(cfg.teacher_scale, cfg.teacher_init)
        cfg.teacher_init = resolve_init("teacher", cfg.teacher_init, cfg.teacher_scale, progress)
    if student:
        cfg.student_init = resolve_init("student", cfg.student_init, cfg.student_scale, progress)
    return cfg


def _load_teacher(path: Path, num_classes: int, progress: Progress):
    from .criterion import FrozenTeacher
    from .weights import load_generator_file

    if not path.is_file():
        raise InputError("no trained teacher here: train one ({}) or pass {}", path,
                         arguments=[Arg("stage", "teacher"), Arg("teacher_weights")])
    model, gen_cfg, _ = load_generator_file(path)
    if gen_cfg.num_classes != num_classes:
        raise InputError(f"teacher has {gen_cfg.num_classes} classes but the data set has {num_classes}", path)
    progress.log("student", f"distilling from YOLOv8{gen_cfg.scale} teacher {path}")
    return FrozenTeacher(model), {"path": str(path), "config": to_dict(gen_cfg)}
