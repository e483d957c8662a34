"""Phase 2: segmentation fine-tuning (sections 3.4 and 4.2).

The YOLO prompt generator and SAM's original encoder weights stay frozen; adapters, the feature prompt
encoder, SAM's prompt encoder and the mask decoder train (``configure_phase2``) with AdamW and a per-step
cosine schedule on Dice + BCE. The same code runs in one process or under torchrun (DDP); rank 0 alone writes
the run folder: ``config.json``, ``splits.json``, ``log.csv``, ``tensorboard/``, the resumable
``state.safetensors`` and the selected model ``model.safetensors`` (best validation Dice).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import __version__
from ..config import to_dict
from ..errors import Arg, ConfigError, LDFSAMError
from ..progress import Progress
from . import distributed
from .config import FinetuneConfig
from .data import RunData
from .embedding_cache import EmbeddingCache, FromEmbeddings, encode_dataset, encoder_fingerprint, encoder_is_frozen
from .feature_cache import FeatureCache, ItemNotes, cache_features, features_cacheable, generator_fingerprint
from .flip_augment import FLIPS, FlipVariants, VariantBatchSampler, check_flips
from .gt_boxes import BoxPrompted, boxes_from_masks
from .loss import dice_bce_loss, hard_dice
from .optim import make_optimizer, set_lr
from .precision import autocast, make_scaler, resolve_precision
from .run_log import RunLog
from .sampler import ResumableBatchSampler, shard
from .spd import SpdNet, psc_enabled, spd_terms, with_psc_pairs
from .state import load_training_state, save_training_state

PHASE = "finetune"
STATE_FILE = "state.safetensors"
MODEL_FILE = "model.safetensors"
MAX_BAD_STEPS = 20


@dataclass
class FitResult:
    model_path: Optional[Path]
    global_step: int
    epochs_done: int
    best_val_dice: Optional[float]
    stopped_early: bool


def freeze_norm_statistics(model: torch.nn.Module) -> None:
    """Keep frozen BatchNorm layers (the YOLO prompt generator) in eval mode so their statistics stay fixed."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def cosine_lr(cfg: FinetuneConfig, step: int, total: int) -> float:
    t = min(step, total) / max(total, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def _forward(net, image: torch.Tensor, yolo, mask: torch.Tensor, gt_boxes: bool) -> torch.Tensor:
    """``image`` is the SAM image, or its cached embedding when ``net`` is a FromEmbeddings; ``yolo`` the YOLO
    image, or its cached features (P3, P4, P5) with a FromEmbeddings."""
    if not gt_boxes:
        return net(image, yolo)
    # The YOLO input's size: P3 has stride 8.
    yolo_size = yolo[0].shape[-1] * 8 if isinstance(yolo, (tuple, list)) else yolo.shape[-1]
    return net(image, yolo, boxes_from_masks(mask, yolo_size / mask.shape[-1]))


def _to_device(batch: Dict[str, Any], device: torch.device):
    image = batch["embedding"] if "embedding" in batch else batch["sam_image"]
    if "yolo_features" in batch:
        yolo = tuple(f.to(device, non_blocking=True) for f in batch["yolo_features"])
    else:
        yolo = batch["yolo_image"].to(device, non_blocking=True)
    return image.to(device, non_blocking=True), yolo, batch["mask"].to(device, non_blocking=True)


def _valid(batch: Dict[str, Any], device: torch.device) -> Optional[torch.Tensor]:
    """The pixels whose labels count (partly reviewed training cases), or None: all of them."""
    valid = batch.get("valid")
    return None if valid is None or bool(valid.min() > 0) else valid.to(device, non_blocking=True)


class Trainer:
    """Runs (or resumes) one fine-tuning run into ``run_dir``; ``model`` must have had ``configure_phase2``."""

    def __init__(self, cfg: FinetuneConfig, model: torch.nn.Module, model_cfg, data: RunData, run_dir: Path,
                 env: distributed.DistEnv, progress: Optional[Progress] = None, provenance: Optional[dict] = None):
        self.cfg, self.model_cfg, self.data, self.run_dir, self.env = cfg, model_cfg, data, Path(run_dir), env
        self.progress = progress if (progress is not None and env.is_main) else Progress("none")
        self.provenance = provenance or {}
        self.model = model.to(env.device)
        self.precision = distributed.agree(resolve_precision(cfg.precision, env.device), env)
        self.scaler = make_scaler(self.precision, env.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # A zero-shot model is the pretrained SAM prompted with detected boxes: nothing trains, it is validated
        # and written as it is.
        self.zero_shot = model_cfg.prompt_mode == "zero-shot"
        if not self.params and not self.zero_shot:
            raise LDFSAMError("the model has no trainable parameters (configure_phase2 was not applied?)")
        self.gt_boxes = cfg.box_prompts == "ground_truth"
        if self.gt_boxes and not model_cfg.uses_boxes:
            raise ConfigError("box_prompts 'ground_truth' needs a box prompt mode (box or zero-shot), not "
                              f"{model_cfg.prompt_mode!r}")
        # Flip augmentation: the flips are training items of their own, encoded and cached like the others.
        check_flips(cfg.flip_augment, list(model_cfg.class_names), psc_enabled(cfg, data))
        self.variants = 1 if self.zero_shot else len(FLIPS[cfg.flip_augment])
        if self.variants > 1:
            self.data.train = FlipVariants(self.data.train, cfg.flip_augment)
        self.cached = cfg.embedding_cache == "auto" and encoder_is_frozen(self.model)
        spd_wanted = psc_enabled(cfg, data) or getattr(self.model, "saliency_head", None) is not None
        # The frozen prompt generator's features, once per image (feature_cache.py); SPD's pairs keep their images.
        self.features_cached = (self.cached and not self.zero_shot and not spd_wanted
                                and cfg.feature_cache == "auto" and features_cacheable(self.model))
        # What the feature cache needs of each item, noted while the embeddings' pass reads them.
        notes = {"train": ItemNotes(), "val": ItemNotes()} if self.features_cached else {}
        if self.cached:
            self._cache_embeddings(notes)
        if self.features_cached:
            self._cache_features(notes)
        # SPD: the saliency head's loss (a model with a head) and PSC on pairs of adjacent slices.
        pairs = with_psc_pairs(self.data.train) if psc_enabled(cfg, data) else None
        self.psc = pairs is not None
        if pairs is not None:
            self.data.train = pairs
        self.spd = self.psc or getattr(self.model, "saliency_head", None) is not None
        self.provenance = {**self.provenance, "psc": self.psc}
        self.optimizer = make_optimizer(self.model, cfg) if self.params else None
        if self.variants > 1:
            self.sampler = VariantBatchSampler(len(data.train) // self.variants, self.variants, cfg.batch_size,
                                               env.rank, env.world_size, seed=cfg.seed)
        else:
            self.sampler = ResumableBatchSampler(len(data.train), cfg.batch_size, env.rank, env.world_size,
                                                 shuffle=True, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.state_path = self.run_dir / STATE_FILE
        self.model_path = self.run_dir / MODEL_FILE
        self.pos: Dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0,
                                    "loss_count": 0, "best_val_dice": None, "best_epoch": None, "bad_validations": 0,
                                    "skipped_steps": 0, "complete": False, "seconds": 0.0}

    def _cache_embeddings(self, notes: Dict[str, ItemNotes]) -> None:
        """Encode every training and validation image once (the encoder is frozen); see embedding_cache.py."""
        cache = EmbeddingCache(encoder_fingerprint(self.model), precision=self.precision)
        total = (0 if self.zero_shot else len(self.data.train)) + (len(self.data.val) if self.data.val else 0)
        self.progress.start("embeddings", total=total, message=f"image embeddings: {total} items, cache {cache.dir}")
        done = [0, 0]

        def report(offset: int):
            def on_progress(i: int, n: int, encoded: int) -> None:
                done[1] = offset + i
                self.progress.update("embeddings", done[1], total, encoded=done[0] + encoded)
            return on_progress

        start = time.monotonic()
        if not self.zero_shot:  # a zero-shot run only validates
            self.data.train = encode_dataset(self.model, self.data.train, cache, self.cfg.batch_size, report(0),
                                             self.precision, notes.get("train"))
        if self.data.val is not None and len(self.data.val):
            self.data.val = encode_dataset(self.model, self.data.val, cache, self.cfg.batch_size,
                                           report(0 if self.zero_shot else len(self.data.train)), self.precision,
                                           notes.get("val"))
        self.progress.done("embeddings", message=f"image embeddings ready in {time.monotonic() - start:.1f} s")

    def _cache_features(self, notes: Dict[str, ItemNotes]) -> None:
        """The frozen prompt generator's P3/P4/P5 of every training and validation image, once; feature_cache.py."""
        cache = FeatureCache(generator_fingerprint(self.model), precision=self.precision)
        sets = [s for s in (self.data.train, self.data.val) if s is not None and len(s)]
        total = sum(len(s) for s in sets)
        self.progress.start("features", total=total, message=f"YOLO features: {total} items, cache {cache.dir}")
        start, offset = time.monotonic(), 0
        for which in ("train", "val"):
            dataset = getattr(self.data, which)
            if dataset is None or not len(dataset):
                continue
            setattr(self.data, which, cache_features(
                self.model, dataset, cache, self.cfg.batch_size,
                lambda i, n, computed, base=offset: self.progress.update("features", base + i, total,
                                                                         computed=computed), self.precision,
                notes.get(which)))
            offset += len(dataset)
        self.progress.done("features", message=f"YOLO features ready in {time.monotonic() - start:.1f} s")

    def _net(self) -> torch.nn.Module:
        """What one step calls: the model, or a wrapper taking given boxes and/or cached embeddings."""
        if self.spd:
            return SpdNet(self.model, self.cached)
        if self.cached:
            return FromEmbeddings(self.model)
        return BoxPrompted(self.model) if self.gt_boxes else self.model

    # -- state --------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        if self.env.is_main:
            # A run killed while saving leaves the writer's temporary file beside the target.
            for tmp in self.run_dir.glob(".*.part*.safetensors"):
                tmp.unlink(missing_ok=True)
        self.pos.update(load_training_state(self.state_path, self.model, self.optimizer, self.scaler))

    def _save_state(self) -> None:
        if self.env.is_main:
            save_training_state(self.state_path, self.model, self.optimizer, dict(self.pos), self.scaler)
        distributed.barrier(self.env)

    def _save_model(self, path: Path, extra: Dict[str, Any]) -> None:
        from ..checkpoint import save_checkpoint

        training = {"phase": "finetune", "package_version": __version__, "config": to_dict(self.cfg),
                    "precision": self.precision, "world_size": self.env.world_size, **self.provenance, **extra}
        save_checkpoint(path, self.model, self.model_cfg, self.data.preprocess, training=training)

    # -- loops --------------------------------------------------------------------------------------------------
    def _loader(self, dataset, batch_sampler):
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.cfg.num_workers,
                                           pin_memory=self.env.device.type == "cuda")

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """Mean per-image Dice and loss over the validation set (all ranks together); None without one."""
        if self.data.val is None or len(self.data.val) == 0:
            return None
        net = self._net()
        net.eval()
        idx = shard(len(self.data.val), self.env.rank, self.env.world_size)
        batches = [idx[i: i + self.cfg.batch_size] for i in range(0, len(idx), self.cfg.batch_size)]
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in self._loader(self.data.val, batches):
            sam, yolo, mask = _to_device(batch, self.env.device)
            with autocast(self.precision, self.env.device):
                logits = _forward(net, sam, yolo, mask, self.gt_boxes)
            logits = logits[0] if isinstance(logits, tuple) else logits
            valid = _valid(batch, self.env.device)
            loss = dice_bce_loss(logits, mask, self.cfg.dice_weight, self.cfg.bce_weight, valid)
            dice = hard_dice(logits, mask, self.cfg.threshold, valid)
            sums += torch.tensor([dice.sum().item(), loss.item() * len(dice), len(dice)], dtype=torch.float64)
        sums = distributed.all_reduce_sum(self.env, sums)
        self.model.train()
        freeze_norm_statistics(self.model)
        return {"val_dice": float(sums[0] / sums[2]), "val_loss": float(sums[1] / sums[2])}

    def _train_step(self, net, batch) -> Optional[float]:
        """One optimiser step; returns the loss, or None when the step was skipped (non-finite gradients)."""
        cfg = self.cfg
        sam, yolo, mask = _to_device(batch, self.env.device)
        lr = cosine_lr(cfg, self.pos["global_step"], self.total_steps)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, self.env.device):
            logits = _forward(net, sam, yolo, mask, self.gt_boxes)
            logits, spd_loss = spd_terms(lambda *a: _forward(net, *a, self.gt_boxes), logits, batch, mask, cfg)
        loss = dice_bce_loss(logits, mask, cfg.dice_weight, cfg.bce_weight, _valid(batch, self.env.device))
        if spd_loss is not None:
            loss = loss + spd_loss
        if not loss.requires_grad:
            # Box mode on a batch without detections: constant logits. A zero-weighted term keeps the backward
            # (and DDP's gradient exchange, which every rank must join) well defined with zero gradients.
            loss = loss + 0.0 * sum(p.sum() for p in self.params)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN and lowers the scale
            self.scaler.update()
            return loss.item() if torch.isfinite(norm) else None
        # Gradients are averaged across ranks already, so every rank takes the same decision here.
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        return loss.item()

    def _fit_zero_shot(self) -> FitResult:
        metrics = self.validate()
        val_dice = None if metrics is None else metrics["val_dice"]
        if self.env.is_main:
            self._save_model(self.model_path, {"epochs_done": 0, "global_step": 0, "selected": "zero-shot",
                                               "val_dice": val_dice})
        distributed.barrier(self.env)
        text = "" if val_dice is None else f", validation Dice {val_dice:.4f}"
        self.progress.done(PHASE, message=f"zero-shot model: {self.model_path} (nothing trained{text})", step=0,
                           best_val_dice=val_dice, model=str(self.model_path))
        return FitResult(self.model_path, 0, 0, val_dice, False)

    def fit(self) -> FitResult:
        cfg, env, pos = self.cfg, self.env, self.pos
        if self.zero_shot:
            return self._fit_zero_shot()
        if pos["complete"]:
            self.progress.done(PHASE, message=f"the run in {self.run_dir} is complete already", step=pos["global_step"])
            return FitResult(self.model_path if self.model_path.exists() else None, pos["global_step"], pos["epoch"],
                             pos["best_val_dice"], False)
        net = self._net()
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Some trainable modules are unused in a given prompt mode (e.g. the sparse head with "dense").
            net = DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda"
                                          else None, find_unused_parameters=True)
        limit = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        log = RunLog(self.run_dir, resume_step=pos["global_step"]) if env.is_main else None
        flips = f" ({self.variants} flip variants each)" if self.variants > 1 else ""
        self.progress.start(PHASE, total=limit, epochs=cfg.epochs, message=(
            f"fine-tuning: {self.sampler.size} training items{flips}, {self.steps_per_epoch} steps/epoch x "
            f"{cfg.epochs} epochs, {env.world_size} process(es), {self.precision}"), step=pos["global_step"])
        chosen = self.provenance.get("box_conf")
        if isinstance(chosen, dict) and pos["global_step"] == 0:
            self.progress.log(PHASE, f"box prompts: confidence {chosen['conf']}, at most {chosen['max_boxes']} per "
                                     f"image, chosen on {chosen['images']} validation images (box-cover Dice "
                                     f"{chosen['box_cover_dice']:.3f})")
        self.model.train()
        freeze_norm_statistics(self.model)
        stopped_early = False
        bad_in_a_row = 0
        t_start = time.monotonic() - pos["seconds"]
        try:
            while pos["epoch"] < cfg.epochs and pos["global_step"] < limit:
                epoch = pos["epoch"]
                self.sampler.set_position(epoch, pos["step_in_epoch"])
                for batch in self._loader(self.data.train, self.sampler):
                    loss = self._train_step(net, batch)
                    pos["global_step"] += 1
                    pos["step_in_epoch"] += 1
                    if loss is None:
                        pos["skipped_steps"] += 1
                        bad_in_a_row += 1
                        self.progress.log(PHASE, f"step {pos['global_step']}: non-finite loss or gradients, "
                                                 f"step skipped", level="warning")
                        if bad_in_a_row >= MAX_BAD_STEPS:
                            raise LDFSAMError(f"{bad_in_a_row} steps in a row had non-finite loss or gradients "
                                              f"(precision {self.precision}); try {{}} or a lower {{}}",
                                              arguments=[Arg("precision", "fp32"), Arg("lr")])
                    else:
                        bad_in_a_row = 0
                        pos["loss_sum"] += loss
                        pos["loss_count"] += 1
                    pos["seconds"] = time.monotonic() - t_start
                    mean = pos["loss_sum"] / max(pos["loss_count"], 1)
                    self.progress.update(PHASE, pos["global_step"], limit, epoch=epoch + 1, epochs=cfg.epochs,
                                         loss=mean)
                    if log is not None and loss is not None:
                        log.scalar("step/loss", loss, pos["global_step"])
                    if pos["global_step"] >= limit:
                        break
                    if cfg.checkpoint_every_steps and pos["global_step"] % cfg.checkpoint_every_steps == 0 \
                            and pos["step_in_epoch"] < self.steps_per_epoch:
                        self._save_state()
                epoch_done = pos["step_in_epoch"] >= self.steps_per_epoch
                stopped_early = self._end_of_epoch(log, epoch_done)
                if stopped_early:
                    break
        finally:
            if log is not None:
                log.close()
        pos["complete"] = True
        if not self.model_path.exists() or self.data.val is None or len(self.data.val) == 0:
            if env.is_main:
                self._save_model(self.model_path, {"epochs_done": pos["epoch"], "global_step": pos["global_step"],
                                                   "selected": "last"})
        self._save_state()
        best = "" if pos["best_val_dice"] is None else f", best validation Dice {pos['best_val_dice']:.4f}"
        self.progress.done(PHASE, message=f"model: {self.model_path} ({pos['global_step']} steps{best})",
                           step=pos["global_step"],
                           best_val_dice=pos["best_val_dice"], model=str(self.model_path))
        return FitResult(self.model_path, pos["global_step"], pos["epoch"], pos["best_val_dice"], stopped_early)

    def _end_of_epoch(self, log: Optional[RunLog], epoch_done: bool) -> bool:
        """Validate, log, keep the best model and save the state; returns True to stop early."""
        cfg, pos = self.cfg, self.pos
        epoch = pos["epoch"]
        train_loss = pos["loss_sum"] / pos["loss_count"] if pos["loss_count"] else None
        metrics = None
        if epoch_done and ((epoch + 1) % cfg.validate_every_epochs == 0 or epoch + 1 == cfg.epochs):
            metrics = self.validate()
        elif not epoch_done:  # max_steps reached mid-epoch: validate what we have
            metrics = self.validate()
        stop = False
        if metrics is not None:
            improved = pos["best_val_dice"] is None or metrics["val_dice"] > pos["best_val_dice"]
            if improved:
                pos["best_val_dice"], pos["best_epoch"], pos["bad_validations"] = metrics["val_dice"], epoch + 1, 0
                if self.env.is_main:
                    self._save_model(self.model_path, {"epochs_done": epoch + 1, "global_step": pos["global_step"],
                                                       "selected": "best_val_dice",
                                                       "val_dice": metrics["val_dice"]})
            else:
                pos["bad_validations"] += 1
            stop = bool(cfg.early_stop_patience) and pos["bad_validations"] >= cfg.early_stop_patience
        if log is not None:
            log.epoch({"epoch": epoch + 1, "global_step": pos["global_step"], "train_loss": train_loss,
                       "val_dice": None if metrics is None else metrics["val_dice"],
                       "val_loss": None if metrics is None else metrics["val_loss"],
                       "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(pos["seconds"], 2),
                       "skipped_steps": pos["skipped_steps"]})
        self.progress.update(PHASE, pos["global_step"], None, epoch=epoch + 1, epochs=cfg.epochs, loss=train_loss,
                             val_dice=None if metrics is None else metrics["val_dice"])
        loss_text = "n/a" if train_loss is None else f"{train_loss:.4f}"
        val_text = "" if metrics is None else f", val Dice {metrics['val_dice']:.4f}"
        self.progress.log(PHASE, f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_text}{val_text}", epoch=epoch + 1)
        if epoch_done:
            pos.update(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, loss_count=0)
        self._save_state()
        return stop
