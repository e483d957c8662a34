"""Progress events: the one format that Phase 1, Phase 2, evaluation, inference and downloads report in.

With ``--progress json`` every event is one JSON object on its own line of standard output, marked by the key
``"ldfsam_event"`` (the format version), so that a reader (the Slicer modules, a script) can tell events from
any other text a library prints. Otherwise events drive a progress bar on standard error.

Event keys: ``kind`` (start | progress | log | done | error), ``phase`` (prepare, teacher, student, finetune,
evaluate, segment, download, ...), and where they apply ``step``, ``total``, ``epoch``, ``epochs``, ``loss``,
``val_dice``, ``eta_s``, ``fraction``, ``message``, plus any phase-specific numbers. Under ``ldfsam train``
every event also names its ``stage`` (prepare, phase1, phase2, evaluate).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import IO, Any, Dict, Optional

EVENT_VERSION = 1
KINDS = ("start", "progress", "log", "done", "error")


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: tensors/numpy scalars to floats, NaN/Inf to None."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def format_event(kind: str, phase: str, **fields: Any) -> str:
    """Return one event as a single JSON line (without the newline)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event = {"ldfsam_event": EVENT_VERSION, "kind": kind, "phase": phase, "time": round(time.time(), 3)}
    event.update({k: _clean(v) for k, v in fields.items() if v is not None})
    return json.dumps(event, separators=(",", ":"))


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """Return the event in one line of a process's output, or None when the line is not an event."""
    line = line.strip()
    if not line.startswith("{") or '"ldfsam_event"' not in line:
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("kind") not in KINDS or "phase" not in event:
        return None
    return event


class Progress:
    """Reports progress as JSON lines (``mode="json"``), a bar on stderr (``"bar"``) or not at all (``"none"``).

    ``update`` computes the ETA of the current phase from the time since its ``start``.
    """

    def __init__(self, mode: str = "bar", stream: Optional[IO[str]] = None):
        if mode not in ("json", "bar", "none"):
            raise ValueError(f"progress mode must be json, bar or none, not {mode!r}")
        self.mode = mode
        self.stream = stream
        self._t0: Dict[str, float] = {}
        self._bar = None
        self._bar_phase: Optional[str] = None
        # Fields added to every event (``ldfsam train`` sets ``stage``).
        self.context: Dict[str, Any] = {}
        self.reported_error = False  # an error event went out: whoever catches the exception need not send one
        self.phase: Optional[str] = None  # the phase started last and not done yet
        self._lock = threading.Lock()  # events may come from background threads (segmenting many volumes)

    # -- emitting -------------------------------------------------------------------------------------------
    def _emit(self, kind: str, phase: str, **fields: Any) -> None:
        fields = {**self.context, **fields}
        with self._lock:
            if self.mode == "json":
                out = self.stream or sys.stdout
                out.write(format_event(kind, phase, **fields) + "\n")
                out.flush()
            elif self.mode == "bar":
                self._bar_event(kind, phase, fields)

    def start(self, phase: str, total: Optional[int] = None, message: Optional[str] = None, **fields: Any) -> None:
        self._t0[phase] = time.monotonic()
        self.phase = phase
        self._emit("start", phase, total=total, message=message, **fields)

    def update(self, phase: str, step: int, total: Optional[int] = None, **fields: Any) -> None:
        t0 = self._t0.setdefault(phase, time.monotonic())
        eta = fraction = None
        if total:
            fraction = min(1.0, step / total)
            elapsed = time.monotonic() - t0
            if step > 0:
                eta = round(elapsed * (total - step) / step, 1)
        self._emit("progress", phase, step=step, total=total, fraction=fraction, eta_s=eta, **fields)

    def log(self, phase: str, message: str, level: str = "info", **fields: Any) -> None:
        self._emit("log", phase, message=message, level=level, **fields)

    def done(self, phase: str, message: Optional[str] = None, **fields: Any) -> None:
        t0 = self._t0.pop(phase, None)
        if self.phase == phase:
            self.phase = None
        elapsed = None if t0 is None else round(time.monotonic() - t0, 3)
        self._emit("done", phase, message=message, elapsed_s=elapsed, **fields)

    def error(self, phase: str, message: str, **fields: Any) -> None:
        self.reported_error = True
        self._emit("error", phase, message=message, **fields)

    # -- the bar --------------------------------------------------------------------------------------------
    def _bar_event(self, kind: str, phase: str, fields: Dict[str, Any]) -> None:
        out = self.stream or sys.stderr
        if kind in ("start", "progress") and fields.get("total"):
            if self._bar is None or self._bar_phase != phase:
                self._close_bar()
                from tqdm import tqdm

                self._bar = tqdm(total=fields["total"], desc=phase, file=out, leave=True, dynamic_ncols=True)
                self._bar_phase = phase
            if kind == "progress":
                self._bar.n = fields.get("step", self._bar.n)
                shown = {k: fields[k] for k in ("epoch", "loss", "val_dice") if fields.get(k) is not None}
                if shown:
                    self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                          refresh=False)
                self._bar.refresh()
        elif kind in ("done", "error", "log"):
            if kind != "log" and self._bar_phase == phase:
                self._close_bar()
            message = fields.get("message")
            if message:
                prefix = "error: " if kind == "error" else "warning: " if fields.get("level") == "warning" else ""
                print(f"{prefix}{message}", file=out, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_phase = None

    def close(self) -> None:
        self._close_bar()
