"""Phase 1 configuration: teacher training and localization distillation of the student (sections 3.3, 4.2).

Defaults are the paper's: YOLOv8n student, 640 input, the YOLOv8 SGD recipe, LD temperature 10,
lambda_main = lambda_vlr = 1, and the LD paper's VLR band gamma = 0.25 on ATSS virtual anchors of side 8 * stride.
Like the paper, both networks start from pretrained weights where they are installed (``init`` "auto"): the student
from the COCO YOLOv8n, the teacher from the largest pretrained YOLOv8 available here (a YOLOv8s; the paper's
YOLOv8x has no offline weights), else the paper's YOLOv8x from random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..errors import ConfigError
from ..model.config import YoloScale

Scheme = Literal["none", "kd", "ld_main", "ld_main_vlr"]
SCHEMES = ("none", "kd", "ld_main", "ld_main_vlr")
TeacherScale = Literal["auto", "n", "s", "m", "l", "x"]
BNInit = Literal["reestimate", "frozen"]


@dataclass
class TrainRecipe:
    """The YOLOv8 optimisation recipe (SGD, linear LR decay, warm-up), passed to the ultralytics trainer."""

    epochs: int = 100
    batch: int = 16
    imgsz: int = 640
    optimizer: str = "SGD"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    # Mosaic is switched off for the final epochs, as in ultralytics' recipe.
    close_mosaic: int = 10
    mosaic: float = 1.0
    patience: int = 100
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    # Validate (mAP) after every epoch; the last epoch is always validated.
    val: bool = True


@dataclass
class LDConfig:
    """Localization Distillation on the DFL box-side distributions (and the KD baseline of Table 2)."""

    scheme: Scheme = "ld_main_vlr"
    temperature: float = 10.0
    lambda_main: float = 1.0
    lambda_vlr: float = 1.0
    # VLR band: gamma * alpha_pos <= DIoU < alpha_pos.
    vlr_gamma: float = 0.25
    # ATSS virtual anchors: squares of side anchor_scale * stride; candidates per level for alpha_pos.
    anchor_scale: float = 8.0
    atss_topk: int = 9
    # "kd" scheme: classification-logit distillation (binary, per class) with its own temperature and weight.
    kd_temperature: float = 1.0
    lambda_kd: float = 1.0


@dataclass
class DistillConfig:
    """Everything Phase 1 needs, saved in the run folder and in the student file's training record."""

    # "auto": "s" when the pretrained YOLOv8s is installed (and teacher_init is "auto"), else the paper's "x".
    teacher_scale: TeacherScale = "auto"
    student_scale: YoloScale = "n"
    teacher: TrainRecipe = field(default_factory=TrainRecipe)
    student: TrainRecipe = field(default_factory=TrainRecipe)
    ld: LDConfig = field(default_factory=LDConfig)
    # Weights to start teacher / student from: "auto" (the registry's pretrained weights of the scale where they are
    # installed, else random), "scratch" (random), a registry name (yolov8n-coco, yolov8s-fall) or a local file
    # (.safetensors prompt generator, ultralytics .pt). Nothing is downloaded. A run replaces "auto" by what it
    # used, so the distill.json and the training record of each file say which initialisation it had.
    teacher_init: Optional[str] = "auto"
    student_init: Optional[str] = "auto"
    # BatchNorm of pretrained weights whose BN was folded into the convolutions (the ONNX exports): "frozen" keeps
    # BN in eval mode throughout (fine-tuned better on Kvasir-SEG, docs/distillation.md); "reestimate" sets each
    # BN's statistics from the training images (and compensates its affine map) so that training-mode BN computes
    # what the pretrained network computes.
    pretrained_bn: BNInit = "frozen"

    def validate(self) -> DistillConfig:
        """Raise ConfigError on values no training can use."""
        if self.teacher_scale not in ("auto", "n", "s", "m", "l", "x"):
            raise ConfigError(f"teacher_scale: {self.teacher_scale!r} is not one of auto, n, s, m, l, x")
        if self.pretrained_bn not in ("reestimate", "frozen"):
            raise ConfigError(f"pretrained_bn: {self.pretrained_bn!r} is not one of reestimate, frozen")
        if self.ld.scheme not in SCHEMES:
            raise ConfigError(f"ld.scheme: {self.ld.scheme!r} is not one of {list(SCHEMES)}")
        if not self.ld.temperature > 0 or not self.ld.kd_temperature > 0:
            raise ConfigError("ld.temperature and ld.kd_temperature must be > 0")
        if not 0 < self.ld.vlr_gamma <= 1:
            raise ConfigError(f"ld.vlr_gamma: {self.ld.vlr_gamma} is not in (0, 1]")
        if min(self.ld.lambda_main, self.ld.lambda_vlr, self.ld.lambda_kd) < 0:
            raise ConfigError("ld.lambda_* must be >= 0")
        if self.ld.atss_topk < 1 or self.ld.anchor_scale <= 0:
            raise ConfigError("ld.atss_topk must be >= 1 and ld.anchor_scale > 0")
        for name in ("teacher", "student"):
            r: TrainRecipe = getattr(self, name)
            if r.epochs < 1 or r.batch < 1:
                raise ConfigError(f"{name}.epochs and {name}.batch must be >= 1")
            if "," in r.device:
                # ultralytics runs multi-GPU training in re-launched worker processes that cannot carry the teacher.
                raise ConfigError(f"{name}.device: {r.device!r}: Phase 1 trains on one device (cpu, 0, 1, ...)")
            if r.imgsz < 32 or r.imgsz % 32:
                raise ConfigError(f"{name}.imgsz: {r.imgsz} must be a multiple of 32 (the largest YOLO stride)")
        if self.teacher.imgsz != self.student.imgsz:
            raise ConfigError("teacher.imgsz and student.imgsz must match: LD compares predictions anchor by anchor")
        return self
