"""Ultralytics' YOLOv8 detection trainer with LDFSAM's progress events, atomic checkpoints and the LD criterion.

One class serves both stages: the teacher trains with the plain detection loss; the student gets the
distillation criterion (``teacher`` set) once the EMA copy exists, so the teacher never enters it.
"""

from __future__ import annotations

import contextlib
import os
from copy import copy
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from ..evaluate.detection import ImageDetections, detection_scores
from ..offline import import_ultralytics
from ..progress import Progress
from .config import LDConfig
from .criterion import FrozenTeacher, make_distillation_loss

import_ultralytics()
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

# The project's own validation metrics (ldfsam.evaluate.detection), stored in ultralytics' metrics dict.
METRIC_KEYS = {"precision": "ldfsam/precision", "recall": "ldfsam/recall", "mAP50": "ldfsam/mAP50",
               "mAP50_95": "ldfsam/mAP50-95"}


@contextlib.contextmanager
def weights_only_checkpoints() -> Iterator[None]:
    """Within the block, ultralytics reads .pt checkpoints (resume's last.pt) with ``torch.load(weights_only=True)``
    against its allow-list of model classes instead of as a free pickle."""
    from ultralytics.nn import tasks

    previous = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        tasks.SAFE_LOAD = previous


def map_fields(metrics: Optional[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Validation precision, recall, mAP50 and mAP50-95 from a trainer's metrics dict, as event fields."""
    metrics = metrics or {}
    out = {}
    for name, key in METRIC_KEYS.items():
        value = metrics.get(key)
        out[name] = None if value is None or value != value else float(value)
    return out


def format_scores(scores: Dict[str, Optional[float]]) -> str:
    """"P 0.812 R 0.700 mAP50 0.750 mAP50-95 0.420" (missing values as -)."""
    labels = {"precision": "P", "recall": "R", "mAP50": "mAP50", "mAP50_95": "mAP50-95"}
    return " ".join(f"{label} {'-' if scores.get(k) is None else format(scores[k], '.3f')}"
                    for k, label in labels.items())


class ScoringValidator(DetectionValidator):
    """ultralytics' validator that also keeps every image's predictions and references and scores them with
    ``ldfsam.evaluate.detection``; its mAP50-95 is the fitness that selects the best checkpoint."""

    def init_metrics(self, model) -> None:
        super().init_metrics(model)
        self.images: List[ImageDetections] = []

    def update_metrics(self, preds, batch) -> None:
        for si, pred in enumerate(preds):
            # Both in the letterboxed input frame: IoU does not change under its uniform scale and shift.
            ref = self._prepare_batch(si, batch)
            pred = self._prepare_pred(dict(pred))
            self.images.append(ImageDetections(
                pred["bboxes"].detach().float().cpu().numpy(), pred["conf"].detach().float().cpu().numpy(),
                pred["cls"].detach().cpu().numpy(), ref["bboxes"].detach().float().cpu().numpy(),
                ref["cls"].detach().cpu().numpy()))
        super().update_metrics(preds, batch)

    def get_stats(self) -> Dict[str, Any]:
        stats = super().get_stats()
        scores = detection_scores(self.images)
        self.images = []
        for name, key in METRIC_KEYS.items():
            stats[key] = getattr(scores, name)
        stats["fitness"] = scores.mAP50_95 if scores.mAP50_95 == scores.mAP50_95 else 0.0
        return stats


class Phase1Trainer(DetectionTrainer):
    """DetectionTrainer reporting to ``progress`` under ``phase``; ``on_save(trainer, is_best)`` follows each save.

    teacher/ld: distil from this frozen teacher (student stage); init_source: a DetectionModel whose tensors of
    matching name and shape start the first epoch (on resume it only says which BatchNorm layers it covers).
    pretrained_bn: "reestimate" or "frozen" for init weights whose BatchNorm was folded (``ldfsam.distill.bn_init``),
    None otherwise.
    """

    BN_IMAGES = 256  # training images that re-estimate the BatchNorm statistics of folded pretrained weights

    def __init__(self, overrides: Dict[str, Any], phase: str, progress: Progress,
                 on_save: Optional[Callable[[Phase1Trainer, bool], None]] = None,
                 teacher: Optional[FrozenTeacher] = None, ld: Optional[LDConfig] = None, init_source: Any = None,
                 pretrained_bn: Optional[str] = None):
        self.phase = phase
        self.progress = progress
        self.on_save = on_save
        self.teacher = teacher
        self.ld = ld
        self.init_source = init_source
        self.pretrained_bn = pretrained_bn
        self._fresh_bn: List[str] = []  # BatchNorm layers the init weights do not cover (never frozen)
        self.final_metrics: Dict[str, Any] = {}
        self._in_final_eval = False
        self._batch = 0
        self._nb = 1
        # Ultralytics' select_device pins CPU training to cpu_count - 1 threads: one on a 2-core machine, which
        # halves Phase 1's speed there. Keep the thread count the process was given (OMP_NUM_THREADS, torch).
        self._threads = torch.get_num_threads()
        super().__init__(overrides=overrides)
        torch.set_num_threads(self._threads)
        self.add_callback("on_pretrain_routine_end", lambda t: self._prepare_batchnorm())
        self.add_callback("on_pretrain_routine_end", lambda t: self._install_criterion())
        self.add_callback("on_train_start", lambda t: self._on_train_start())
        self.add_callback("on_train_epoch_start", lambda t: setattr(self, "_batch", 0))
        self.add_callback("on_train_batch_end", lambda t: self._on_batch_end())
        self.add_callback("on_fit_epoch_end", lambda t: self._on_fit_epoch_end())
        self.add_callback("on_model_save", lambda t: self._on_model_save())

    def get_validator(self):
        return ScoringValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args),
                                _callbacks=self.callbacks)

    # -- model --------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose=True):
        model = super().get_model(cfg=cfg, weights=weights, verbose=False)
        if weights is None and self.init_source is not None and not self.resume:
            from .weights import transfer_weights

            done, total = transfer_weights(model, self.init_source)
            if done < total // 2:  # another scale: nothing but a few shapes would match
                from ..errors import ConfigError

                raise ConfigError(f"the initial weights of the {self.phase} fit only {done} of its {total} tensors: "
                                  f"they are of another YOLOv8 scale than {Path(str(cfg)).stem}")
            self.progress.log(self.phase, f"{self.phase}: {done} of {total} tensors from the initial weights (the "
                              "rest, the class branch of another class count, keep their fresh initialisation)")
        if self.init_source is not None:  # also on resume: the same layers stay frozen
            from .bn_init import fresh_batchnorms

            self._fresh_bn = fresh_batchnorms(model, self.init_source)
        return model

    def _prepare_batchnorm(self) -> None:
        if self.pretrained_bn != "reestimate" or self.resume or self.init_source is None:
            return
        from .bn_init import reestimate_bn

        def batches():
            for i, batch in enumerate(self.train_loader):
                if i * self.batch_size >= self.BN_IMAGES:
                    break
                yield self.preprocess_batch(batch)["img"]

        model = unwrap_model(self.model)
        layers, seen = reestimate_bn(model, batches())
        self.ema.ema.load_state_dict(model.state_dict())
        self.progress.log(self.phase, f"{self.phase}: BatchNorm statistics of the pretrained weights re-estimated on "
                          f"{seen} training images ({layers} layers)")

    def _model_train(self):
        super()._model_train()
        if self.pretrained_bn == "frozen":
            from .bn_init import freeze_bn

            # The fresh layers' BatchNorm normalises as usual: frozen at mean 0, variance 1 it would do nothing.
            freeze_bn(unwrap_model(self.model), skip=self._fresh_bn)

    def _install_criterion(self) -> None:
        # After the EMA copy and any resume: the criterion (and the teacher it holds) stays out of both.
        if self.teacher is None:
            return
        model = unwrap_model(self.model)
        self.teacher.model.to(self.device)
        model.criterion = make_distillation_loss(model, self.teacher, self.ld or LDConfig())

    # -- progress -----------------------------------------------------------------------------------------------
    def _on_train_start(self) -> None:
        torch.set_num_threads(self._threads)
        self._nb = len(self.train_loader)
        self.progress.start(self.phase, total=self.epochs * self._nb, epochs=self.epochs,
                            start_epoch=self.start_epoch + 1, message=f"{self.phase}: {self.epochs} epochs")

    def _on_batch_end(self) -> None:
        self._batch += 1
        losses = {k: float(v) for k, v in (self.tloss or {}).items()}
        self.progress.update(self.phase, step=self.epoch * self._nb + self._batch, total=self.epochs * self._nb,
                             epoch=self.epoch + 1, epochs=self.epochs, loss=sum(losses.values()), losses=losses)

    def _on_fit_epoch_end(self) -> None:
        if self._in_final_eval:
            self.final_metrics = dict(self.metrics or {})
            return
        losses = {k: float(v) for k, v in (self.tloss or {}).items()}
        scores = map_fields(self.metrics)
        self.progress.update(self.phase, step=(self.epoch + 1) * self._nb, total=self.epochs * self._nb,
                             epoch=self.epoch + 1, epochs=self.epochs, loss=sum(losses.values()), **scores)
        if scores["mAP50_95"] is not None:
            self.progress.log(self.phase, f"{self.phase} epoch {self.epoch + 1}/{self.epochs}: validation "
                              + format_scores(scores), epoch=self.epoch + 1, **scores)

    def final_eval(self):
        self._in_final_eval = True
        try:
            super().final_eval()
        finally:
            self._in_final_eval = False

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_model(self):
        # ultralytics writes last.pt/best.pt in place; write beside them and rename, so an interruption never
        # leaves a truncated checkpoint that resume would then fail on.
        last, best = self.last, self.best
        parts = {last: last.with_name(".last.pt.part"), best: best.with_name(".best.pt.part")}
        self.last, self.best = parts[last], parts[best]
        try:
            saved = super().save_model()
            for target, part in parts.items():
                if part.exists():
                    os.replace(part, target)
        finally:
            self.last, self.best = last, best
            for part in parts.values():
                with contextlib.suppress(FileNotFoundError):
                    Path(part).unlink()
        return saved

    def _on_model_save(self) -> None:
        if self.on_save is not None:
            self.on_save(self, self.best_fitness == self.fitness)
