"""The one configuration of ``ldfsam train``: every stage's settings, saved in the run folder (``train.json``).

Settings that must agree between the stages live here once: the annotation budget (prepare, Phase 1 and Phase 2
train on the same cases), the prompt generator's input size (Phase 1 ``imgsz`` is Phase 2's YOLO input), the
seed and the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from ..distill.config import DistillConfig
from ..errors import ConfigError
from ..finetune.config import FinetuneConfig

Preset = Literal["vit_b", "vit_l", "vit_h", "small"]
PromptMode = Literal["box", "none", "dense", "sparse", "dense+sparse"]


@dataclass
class PrepareSettings:
    """``ldfsam prepare``'s options, used when the data folder is not prepared yet."""

    spacing: Optional[float] = 0.25
    # A label map spec as ``ldfsam prepare --label-map`` takes it (None: every nonzero label is a tooth).
    label_map: Optional[str] = None
    class_names: Optional[List[str]] = None
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    empty_ratio: float = 0.1


@dataclass
class EvaluateSettings:
    """The evaluation of the final model on the test split."""

    split: Literal["train", "val", "test"] = "test"
    tolerance_mm: float = 1.0
    bootstrap: int = 1000
    threshold: float = 0.5
    # Best and worst cases shown as pictures in the report (each).
    cases_shown: int = 2


@dataclass
class TrainConfig:
    """Prepare -> Phase 1 -> Phase 2 -> evaluation, in one run folder."""

    data: str = ""
    preset: Preset = "vit_b"
    prompt_mode: PromptMode = "dense+sparse"
    # Annotation budget: the fraction of training cases both phases use (nested: 0.1 within 0.2 ...).
    budget: float = 1.0
    seed: int = 2025
    # auto (CUDA when available), cpu, cuda or mps; Phase 1 gets ultralytics' name for it.
    device: str = "auto"
    # SAM's input size; None: the preset's. The prompt generator's input is ``distill.student.imgsz``.
    sam_size: Optional[int] = None
    sam_checkpoint: Optional[str] = None
    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # ``data``, ``budget`` and ``seed`` of this part are set from the fields above.
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    # ``--from MODEL``: the model file to start from (resolved) and the name it was given by (train/from_model.py).
    init_model: Optional[str] = None
    init_model_name: Optional[str] = None
    # Augmented phantoms of the bundled model's training distribution added to the training split (``--from``).
    mix_phantoms: int = 0
    # ``--from``: keep the starting model's prompt generator as it is instead of training it on (Phase 1 skipped).
    keep_prompt_generator: bool = False
    # Install the new model under this name in the model manager when the run ends (models/lineage.py).
    model_name: Optional[str] = None

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the setting that no run can use."""
        if not self.data:
            raise ConfigError("TrainConfig.data: the dataset folder is not set")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"TrainConfig.budget: {self.budget} is not in (0, 1]")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"TrainConfig.device: {self.device!r} is not auto, cpu, cuda or mps")
        if self.sam_size is not None and (self.sam_size < 32 or self.sam_size % 16):
            raise ConfigError(f"TrainConfig.sam_size: {self.sam_size} must be a multiple of 16, at least 32")
        if self.evaluate.bootstrap < 1 or self.evaluate.cases_shown < 0 or self.evaluate.tolerance_mm < 0:
            raise ConfigError("TrainConfig.evaluate: bootstrap >= 1, cases_shown >= 0 and tolerance_mm >= 0")
        if self.mix_phantoms and not self.init_model:
            raise ConfigError("TrainConfig.mix_phantoms: phantoms are mixed in only when starting from a model "
                              "(init_model, --from)")
        if self.mix_phantoms < 0:
            raise ConfigError(f"TrainConfig.mix_phantoms: {self.mix_phantoms} is below 0")
        self.distill.validate()
        self.finetune.validate()
        return self
