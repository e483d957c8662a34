""""Run all" (``ldfsam train``): its command line (new or resumed run), one progress bar over the four stages,
and the figures of the run's report.

The core names the stage of every event (``stage``: prepare, phase1, phase2, evaluate) and the fraction of the
phase running in it; :func:`overall_percent` turns that into one bar. The report (``RUN/report.html``) embeds its
figures as base64 PNG: :func:`report_figures` returns them for the module to show, :func:`report_url` the link.
A new run needs a new or empty output folder (the core refuses any other): :func:`run_all_argv` says so before any
process starts, with a folder to use instead.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .commands import TrainSettings, can_resume_all, train_argv

STAGES = ("prepare", "phase1", "phase2", "evaluate")
STAGE_TITLES = {"prepare": "Prepare", "phase1": "Phase 1", "phase2": "Phase 2", "evaluate": "Evaluate"}
_IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def run_all_argv(s: TrainSettings, python: Optional[str] = None) -> Tuple[List[str], bool]:
    """(``ldfsam train`` command line, resumed?): resumes the run in the output folder when there is one, else
    starts a new run; ValueError naming the folder (and a new one to choose) when that folder holds other files."""
    s.check()
    if can_resume_all(s):
        return train_argv(s, resume=True, python=python), True
    refusal = not_empty_message(Path(s.output))
    if refusal:
        raise ValueError(refusal)
    return train_argv(s, python=python), False


def not_empty_message(folder: Path) -> Optional[str]:
    """Why "Run all" cannot start a new run in ``folder`` (None when it is new or empty)."""
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return f"the output folder {folder} is a file; choose a folder for the run"
    except OSError as e:
        return f"cannot read the output folder {folder}: {e.strerror or e}"
    if not entries:
        return None
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"the output folder {folder} is not empty ({shown}): Run all starts a new run in a new or empty "
            f"folder, so nothing there is overwritten. Choose a new output folder, for example {free_sibling(folder)}"
            f", or continue these files with the step buttons.")


def free_sibling(folder: Path) -> Path:
    """A folder beside ``folder`` that does not exist yet: ``NAME-all``, ``NAME-all-2``, ..."""
    base = folder.parent / f"{folder.name}-all"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def overall_percent(event: Dict[str, Any]) -> Optional[int]:
    """0-100 over the whole run from an event of ``ldfsam train`` (None when the event says nothing new).

    Each stage counts a quarter; inside a stage, the fraction of the running phase (Phase 1's teacher and
    student each count half of theirs).
    """
    stage, phase, kind = event.get("stage"), event.get("phase"), event.get("kind")
    if phase == "train":
        # The run's own events: its progress counts finished stages.
        if kind == "done":
            return 100
        return None if event.get("fraction") is None else int(round(100 * float(event["fraction"])))
    if stage not in STAGES:
        return None
    index = STAGES.index(stage)
    fraction = 1.0 if kind == "done" else event.get("fraction")
    if fraction is None:
        if kind != "start":
            return None  # a log line says nothing about how far the stage is
        fraction = 0.0
    fraction = max(0.0, min(1.0, float(fraction)))
    if stage == "phase1":
        fraction = (0.5 if phase == "student" else 0.0) + fraction / 2
    return int(round(100 * (index + fraction) / len(STAGES)))


def report_figures(report: Path) -> List[Tuple[str, bytes]]:
    """(title, PNG bytes) of every figure in a report.html, in page order; empty when there is no report."""
    try:
        page = Path(report).read_text(encoding="utf-8")
    except OSError:
        return []
    return [(html.unescape(alt), base64.b64decode(data)) for alt, data in _IMG.findall(page)]


def report_url(report: Path) -> str:
    """The report as a file:// URL (for ``qt.QDesktopServices.openUrl(qt.QUrl(url))``)."""
    return Path(report).resolve().as_uri()
