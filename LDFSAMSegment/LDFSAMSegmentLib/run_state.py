"""What the progress bar, status line, log and curves show, computed from the core's progress events.

The Slicer modules feed every event of a background process to :meth:`RunState.feed` and copy the result into
their widgets; nothing here needs Qt, so the mapping is tested with real core output outside Slicer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

PHASE_TITLES = {
    "prepare": "Preparing data",
    "teacher": "Phase 1: teacher",
    "student": "Phase 1: student (localization distillation)",
    "finetune": "Phase 2: SAM fine-tuning",
    "evaluate": "Evaluating",
    "segment": "Segmenting",
    "cohort": "Segmenting volumes",
    "download": "Downloading",
    "train": "Run all",
}


@dataclass
class CurvePoint:
    """One training measurement: loss and/or validation Dice at an epoch of a phase."""

    phase: str
    epoch: float
    loss: Optional[float] = None
    val_dice: Optional[float] = None


@dataclass
class RunState:
    phase: Optional[str] = None
    percent: int = 0
    status: str = ""
    error: Optional[str] = None
    done_phases: List[str] = field(default_factory=list)
    log: List[str] = field(default_factory=list)
    curve: List[CurvePoint] = field(default_factory=list)
    last_event: Dict[str, Any] = field(default_factory=dict)

    def feed(self, event: Dict[str, Any]) -> None:
        """Update the state from one event (as returned by ``ldfsam.progress.parse_event``)."""
        kind, phase = event.get("kind"), str(event.get("phase", ""))
        self.last_event = event
        title = PHASE_TITLES.get(phase, phase)
        message = event.get("message")
        if kind == "start":
            self.phase, self.percent = phase, 0
            self.status = f"{title}: {message}" if message else f"{title}..."
            self.log.append(f"[{phase}] started" + (f": {message}" if message else ""))
        elif kind == "progress":
            self.phase = phase
            if event.get("fraction") is not None:
                self.percent = max(0, min(100, int(round(100 * float(event["fraction"])))))
            self.status = self._progress_text(title, event)
            self._add_curve_point(phase, event)
        elif kind == "log":
            level = event.get("level", "info")
            self.log.append(f"[{phase}] {level}: {message}" if level != "info" else f"[{phase}] {message}")
            self._add_curve_point(phase, event)
        elif kind == "done":
            self.percent = 100
            self.done_phases.append(phase)
            elapsed = event.get("elapsed_s")
            self.status = f"{title}: done" + (f" in {elapsed:.1f} s" if isinstance(elapsed, (int, float)) else "")
            self.log.append(f"[{phase}] done" + (f": {message}" if message else ""))
            self._add_curve_point(phase, event)
        elif kind == "error":
            self.error = str(message or "failed")
            self.status = f"{title}: error: {self.error}"
            self.log.append(f"[{phase}] error: {self.error}")

    @staticmethod
    def _progress_text(title: str, event: Dict[str, Any]) -> str:
        parts = [title]
        if event.get("epoch") is not None:
            epochs = event.get("epochs")
            parts.append(f"epoch {event['epoch']}" + (f"/{epochs}" if epochs else ""))
        if event.get("step") is not None and event.get("total"):
            parts.append(f"{event['step']}/{event['total']}")
        if event.get("loss") is not None:
            parts.append(f"loss {float(event['loss']):.4g}")
        if event.get("val_dice") is not None:
            parts.append(f"val Dice {float(event['val_dice']):.3f}")
        if event.get("eta_s") is not None:
            parts.append(f"ETA {format_seconds(float(event['eta_s']))}")
        return ", ".join(parts)

    def _add_curve_point(self, phase: str, event: Dict[str, Any]) -> None:
        loss, dice = event.get("loss"), event.get("val_dice")
        if event.get("epoch") is None or (loss is None and dice is None):
            return
        epoch = float(event["epoch"])
        last = self.curve[-1] if self.curve else None
        if last is not None and last.phase == phase and last.epoch == epoch:
            # Several events per epoch (per-batch loss, then validation): keep the latest of each value.
            last.loss = float(loss) if loss is not None else last.loss
            last.val_dice = float(dice) if dice is not None else last.val_dice
        else:
            self.curve.append(CurvePoint(phase, epoch, None if loss is None else float(loss),
                                         None if dice is None else float(dice)))


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# What the CTK application launcher (PythonSlicer, Slicer) prints when the program it started crashed or was killed
# (ctkAppLauncher.cpp: "[python-real] exit abnormally - Report the problem.", then it exits with status 1).
LAUNCHER_CRASH = re.compile(r"\] exit abnormally")


def failure_message(returncode: Optional[int], state: RunState, stderr_tail: str, cancelled: bool) -> Optional[str]:
    """None when the run succeeded; otherwise the message to show, with the real cause from the process.

    A cancelled run is "Cancelled." whatever its exit status: the core exits with 130, but in Slicer the child is
    the PythonSlicer launcher, which has no signal handler (-15 on SIGTERM) and on Windows ends with taskkill's 1.
    """
    if returncode == 0 and not cancelled:
        return None
    if cancelled or returncode == 130:
        return "Cancelled."
    if returncode is not None and returncode < 0:
        hint = " (out of memory?)" if returncode == -9 else ""
        return f"Failed: the process was killed by signal {-returncode}{hint}."
    lines = [line for line in stderr_tail.splitlines() if line.strip()]
    if any(LAUNCHER_CRASH.search(line) for line in lines):
        return "Failed: the process was killed or crashed (out of memory?)."
    # The core prints "ldfsam CMD: error: PATH: message" as its last line for every user error.
    cause = next((line for line in reversed(lines) if ": error: " in line), None)
    cause = cause or state.error or (lines[-1] if lines else None)
    return f"Failed (exit status {returncode}): {cause}" if cause else f"Failed (exit status {returncode})."
