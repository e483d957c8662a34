"""Phase 2 training configuration (section 4.2), saved in every run folder and model file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

DatasetFormat = Literal["auto", "slices", "images"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
BoxPrompts = Literal["detected", "ground_truth"]
EmbeddingCacheMode = Literal["auto", "off"]
BoxConfMode = Literal["auto", "model"]
PscMode = Literal["auto", "on", "off"]
FlipAugment = Literal["none", "h", "hv"]


@dataclass
class FinetuneConfig:
    """Segmentation fine-tuning: AdamW 1e-4, cosine schedule, Dice + BCE, 200 epochs, batch 16 per process."""

    # -- data --------------------------------------------------------------------------------------------------
    # A prepared Phase 2 dataset folder (slices) or a 2D image/mask dataset (Kvasir-SEG, ISIC 2018, MMOTU layouts).
    data: str = ""
    dataset_format: DatasetFormat = "auto"
    # Splits file (JSON with "train", "val", "test" id lists); None: the prepared folder's own, or for 2D
    # datasets the paper protocol (sorted ids, one shuffle with split_seed, test_fraction, then val_fraction).
    splits: Optional[str] = None
    split_seed: int = 2025
    test_fraction: float = 0.0
    val_fraction: float = 0.1
    # Annotation budget: the fraction of training cases used (10/20/50/100 % in section 4.5), drawn with split_seed.
    budget: float = 1.0
    # Use at most this many training / validation items (for quick runs); None: all.
    max_train_items: Optional[int] = None
    max_val_items: Optional[int] = None
    # -- optimisation ------------------------------------------------------------------------------------------
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01
    # The dense prompt's α (one scalar starting at 0) trains in its own AdamW group: this multiple of the learning
    # rate, this weight decay (finetune/optim.py; docs/training.md, "Why α stayed at 0").
    alpha_lr_scale: float = 20.0
    alpha_weight_decay: float = 0.0
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    # SPD (finetune/spd.py): weight of the saliency head's Dice + BCE (models with a head); the pairwise slice
    # consistency term, "auto": on for prepared volume datasets, off for 2D images; its weight.
    saliency_weight: float = 1.0
    psc: PscMode = "auto"
    psc_weight: float = 0.1
    # Clip the gradient norm (0: off); the norm is also how a non-finite step is detected and skipped.
    grad_clip: float = 0.0
    # Flip augmentation (finetune/flip_augment.py): each epoch shows every training item once, as itself or one of
    # its flips ("h": horizontal; "hv": also vertical and both), each flip encoded and cached once as an image of
    # its own. One-class models only. "none" as the paper (section 4.2 names no augmentation); measured on
    # Kvasir-SEG in docs/training.md, "Fifth series".
    flip_augment: FlipAugment = "none"
    # Stop after this many optimiser steps in total (None: train all epochs).
    max_steps: Optional[int] = None
    seed: int = 2025
    precision: Precision = "auto"
    num_workers: int = 2
    # -- checkpoints and validation ----------------------------------------------------------------------------
    # Training state is saved at every epoch end and, when > 0, every this many optimiser steps.
    checkpoint_every_steps: int = 0
    validate_every_epochs: int = 1
    # Stop when validation Dice has not improved for this many validations (0: never).
    early_stop_patience: int = 0
    threshold: float = 0.5
    # Box mode only: prompt with the detector's boxes (the paper's baseline) or with the tight boxes of the
    # reference masks' connected components (an oracle baseline independent of the detector).
    box_prompts: BoxPrompts = "detected"
    # The prompt generator's detection confidence and boxes per image saved in the model (box mode's prompts; the
    # empty-image check of every mode): "auto" chooses them on the validation images before training
    # (finetune/box_conf.py), "model" keeps the ModelConfig's (box_conf 0.25, max_boxes 32 by default).
    box_conf: BoxConfMode = "auto"
    # "auto": when the image encoder has no trainable parameter (the lite preset), encode every image once and
    # train on the cached embeddings (finetune/embedding_cache.py); "off": encode in every step.
    embedding_cache: EmbeddingCacheMode = "auto"
    # "auto": with cached embeddings and a frozen prompt generator, compute each image's YOLO features once and
    # train on them (finetune/feature_cache.py); "off": run the prompt generator in every step.
    feature_cache: EmbeddingCacheMode = "auto"

    def validate(self) -> None:
        from ..errors import ConfigError

        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.alpha_lr_scale > 0, "alpha_lr_scale must be positive"),
            (self.alpha_weight_decay >= 0, "alpha_weight_decay must be 0 or more"),
            (0 < self.budget <= 1, "budget must be in (0, 1]"),
            (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
             and self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be below 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.checkpoint_every_steps >= 0, "checkpoint_every_steps must be 0 or more"),
            (self.validate_every_epochs >= 1, "validate_every_epochs must be at least 1"),
            (self.num_workers >= 0, "num_workers must be 0 or more"),
            (0 < self.threshold < 1, "threshold must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"FinetuneConfig: {message}")
