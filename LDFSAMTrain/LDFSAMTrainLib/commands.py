"""The ``ldfsam`` command lines of the Train module: prepare, Phase 1 (distill), Phase 2 (finetune), evaluate,
all four at once (``ldfsam train``, "Run all"), and installing the result for segmentation. All files of a training
run live in one output folder (layout below, the same for the single steps and ``ldfsam train``), so each step
finds the previous step's output and a stopped step resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from LDFSAMSegmentLib.commands import device_arg, ldfsam_argv

SCALES = ("n", "s", "m", "l", "x")
# "auto": the pretrained YOLOv8s teacher where its weights are installed, else the paper's x (ldfsam distill).
TEACHER_SCALES = ("auto",) + SCALES
SAM_PRESETS = ("vit_b", "vit_l", "vit_h", "small")
STEPS = ("prepare", "distill", "finetune", "evaluate")


@dataclass
class TrainSettings:
    """What the Train module's parameter node holds, as plain values (paper defaults)."""

    dataset: str
    output: str
    budget_percent: int = 100
    teacher_scale: str = "auto"
    student_scale: str = "n"
    sam_preset: str = "vit_b"
    sam_checkpoint: Optional[str] = None
    distill_epochs: int = 100
    finetune_epochs: int = 200
    batch_size: int = 16
    device: str = "auto"
    seed: int = 2025

    def check(self) -> None:
        """ValueError naming the setting when one is out of range (before any process starts)."""
        if not self.dataset:
            raise ValueError("choose a dataset folder")
        if not self.output:
            raise ValueError("choose an output folder")
        if not 1 <= int(self.budget_percent) <= 100:
            raise ValueError(f"annotation budget must be 1-100 %, not {self.budget_percent}")
        for name, allowed in (("teacher_scale", TEACHER_SCALES), ("student_scale", SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}")
        if self.sam_preset not in SAM_PRESETS:
            raise ValueError(f"SAM preset must be one of {', '.join(SAM_PRESETS)}")
        for name in ("distill_epochs", "finetune_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        device_arg(self.device)


@dataclass(frozen=True)
class RunLayout:
    """Where each step writes inside the output folder."""

    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def splits(self) -> Path:
        return self.prepared / "splits.json"

    @property
    def phase1(self) -> Path:
        return self.root / "phase1"

    @property
    def prompt_generator(self) -> Path:
        return self.phase1 / "student.safetensors"

    @property
    def phase2(self) -> Path:
        return self.root / "phase2"

    @property
    def model(self) -> Path:
        return self.phase2 / "model.safetensors"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def evaluation_csv(self) -> Path:
        return self.evaluation / "per_case.csv"

    @property
    def train_config(self) -> Path:
        """Written by ``ldfsam train`` when it starts: its presence means "Run all" can resume here."""
        return self.root / "train.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def yolo_data(self, budget_percent: int) -> Path:
        """Phase 1's data.yaml for a budget, as recorded by ``ldfsam prepare`` in prepared.json."""
        manifest = self.prepared / "prepared.json"
        if not manifest.is_file():
            raise ValueError(f"{manifest}: no prepared data yet; run Prepare first")
        entries = json.loads(manifest.read_text(encoding="utf-8")).get("yolo", {})
        rel = entries.get(f"{budget_percent:g}")
        if not rel or not (self.prepared / rel / "data.yaml").is_file():
            raise ValueError(f"{manifest}: no Phase 1 data for a {budget_percent} % budget; run Prepare again")
        return self.prepared / rel / "data.yaml"


def settings_from(p: object) -> TrainSettings:
    """The settings held by the Train module's parameter node (any object with its field names), as plain values.

    Paths are strings; an empty one (or the "." an old scene stored for an empty ``Path``) means "not chosen".
    """
    from LDFSAMSegmentLib.bindings import path_text

    return TrainSettings(
        dataset=path_text(p.datasetFolder), output=path_text(p.outputFolder), budget_percent=int(p.annotationBudget),
        teacher_scale=p.teacherScale, student_scale=p.studentScale, sam_preset=p.samPreset,
        sam_checkpoint=path_text(p.samCheckpoint) or None, distill_epochs=int(p.distillEpochs),
        finetune_epochs=int(p.finetuneEpochs), batch_size=int(p.batchSize), device=p.device)


def layout(settings: TrainSettings) -> RunLayout:
    return RunLayout(Path(settings.output))


def prepare_argv(s: TrainSettings, python: Optional[str] = None) -> List[str]:
    out = layout(s)
    return ldfsam_argv("prepare", s.dataset, out.prepared, "--budget", s.budget_percent, "--seed", s.seed,
                       "--progress", "json", python=python)


def distill_argv(s: TrainSettings, resume: bool = False, python: Optional[str] = None) -> List[str]:
    """Phase 1: the teacher, then the student with localization distillation (ultralytics device names; the
    child resolves ``auto``, so that Slicer's own process never imports torch)."""
    out = layout(s)
    device = device_arg(s.device)
    if device == "cuda":
        device = "0"
    args: List[object] = ["distill", out.yolo_data(s.budget_percent), "-o", out.phase1,
                          "--teacher-scale", s.teacher_scale, "--student-scale", s.student_scale,
                          "--epochs", s.distill_epochs, "--batch", s.batch_size, "--device", device,
                          "--progress", "json"]
    if resume:
        args.append("--resume")
    return ldfsam_argv(*args, python=python)


def finetune_argv(s: TrainSettings, resume: bool = False, python: Optional[str] = None) -> List[str]:
    """Phase 2: SAM fine-tuned with the frozen student's feature prompts; a resumed run reads its own config."""
    out = layout(s)
    if resume:
        args: List[object] = ["finetune", "--out", out.phase2, "--resume", "--device", device_arg(s.device),
                              "--progress", "json"]
        return ldfsam_argv(*args, python=python)
    args = ["finetune", "--data", out.prepared, "--out", out.phase2, "--prompt-generator", out.prompt_generator,
            "--preset", s.sam_preset, "--budget", f"{s.budget_percent / 100:g}", "--epochs", s.finetune_epochs,
            "--batch-size", s.batch_size, "--seed", s.seed, "--device", device_arg(s.device), "--progress", "json"]
    if s.sam_checkpoint:
        args += ["--sam-checkpoint", s.sam_checkpoint]
    return ldfsam_argv(*args, python=python)


def evaluate_argv(s: TrainSettings, python: Optional[str] = None) -> List[str]:
    """The fine-tuned model on the test cases of the prepared split; writes per_case.csv and summary.json."""
    out = layout(s)
    return ldfsam_argv("evaluate", "--model", out.model, "--data", s.dataset, "--splits", out.splits,
                       "--split", "test", "--out", out.evaluation, "--device", device_arg(s.device),
                       "--progress", "json", python=python)


def train_argv(s: TrainSettings, resume: bool = False, python: Optional[str] = None) -> List[str]:
    """"Run all": prepare, Phase 1, Phase 2 and the test evaluation in one process, writing report.html.

    A new run needs an output folder that is new or empty; ``resume`` continues the run there with its own saved
    settings (finished stages are skipped).
    """
    out = layout(s)
    if resume:
        return ldfsam_argv("train", "-o", out.root, "--resume", "--progress", "json", python=python)
    args: List[object] = ["train", s.dataset, "-o", out.root, "--preset", s.sam_preset,
                          "--budget", s.budget_percent, "--teacher-scale", s.teacher_scale,
                          "--student-scale", s.student_scale, "--phase1-epochs", s.distill_epochs,
                          "--phase2-epochs", s.finetune_epochs, "--batch", s.batch_size, "--seed", s.seed,
                          "--device", device_arg(s.device), "--progress", "json"]
    if s.sam_checkpoint:
        args += ["--sam-checkpoint", s.sam_checkpoint]
    return ldfsam_argv(*args, python=python)


def can_resume_all(s: TrainSettings) -> bool:
    """True when the output folder holds an ``ldfsam train`` run (Run all then continues it with --resume)."""
    return layout(s).train_config.is_file()


def step_argv(step: str, s: TrainSettings, resume: bool = False, python: Optional[str] = None) -> List[str]:
    """The command line of one step by name (one of STEPS)."""
    if step == "prepare":
        return prepare_argv(s, python=python)
    if step == "distill":
        return distill_argv(s, resume=resume, python=python)
    if step == "finetune":
        return finetune_argv(s, resume=resume, python=python)
    if step == "evaluate":
        return evaluate_argv(s, python=python)
    raise ValueError(f"unknown step {step!r} (one of {', '.join(STEPS)})")


def import_argv(s: TrainSettings, name: str, python: Optional[str] = None) -> List[str]:
    """Install the fine-tuned model in the model cache under ``name`` (replacing an earlier one)."""
    from LDFSAMSegmentLib.commands import models_import_argv

    return models_import_argv(str(layout(s).model), name=name, force=True, python=python)
