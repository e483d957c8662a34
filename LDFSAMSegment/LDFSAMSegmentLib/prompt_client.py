"""The Segment module's side of ``ldfsam prompt-worker`` (plain Python: no ``slicer``, no ``qt``).

The worker is started once and kept: it holds LiteMedSAM and the open volume's slice embeddings, so a click on a
slice already encoded costs only the decoder. Requests and answers are JSON lines (docs/segmentation.md,
"Interactive use"). :meth:`PromptWorker.send` never blocks and :meth:`PromptWorker.poll` returns the answer once
it is there, so the GUI polls from a timer; :meth:`PromptWorker.ask` waits (scripts and tests). Positions given
here are RAS (Slicer's); the worker's are LPS (the volume files').
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from .commands import ldfsam_argv
from .pipes import PipeReader
from .process import CREATE_NO_WINDOW, IS_WINDOWS
from .prompts import ras_to_lps

LABELS = ("include", "exclude")


class WorkerError(RuntimeError):
    """The worker refused a request (it keeps running) or is gone (``alive`` False)."""

    def __init__(self, message: str, alive: bool = True):
        super().__init__(message)
        self.alive = alive


def prompt_worker_argv(model: Optional[str] = None, python: Optional[str] = None,
                       prior: Optional[str] = None) -> List[str]:
    """``python -m ldfsam prompt-worker [--model MODEL] [--prior PRIOR]`` (no model: LiteMedSAM as published; no
    prior: the worker's default, "auto", the default model's saliency head when it has one; "none": no check)."""
    args = (["--model", model] if model else []) + (["--prior", prior] if prior else [])
    return ldfsam_argv("prompt-worker", *args, python=python)


def open_request(volume_path: str) -> Dict[str, Any]:
    return {"cmd": "open", "volume": str(volume_path)}


def segment_request(structure: Dict[str, Any], output_path: str) -> Dict[str, Any]:
    """``structure``: one entry from :func:`prompts.structure`; the mask is written to ``output_path``."""
    return {"cmd": "segment", "structure": structure, "output": str(output_path)}


def click_request(name: str, position_ras: Sequence[float], label: str, output_path: str) -> Dict[str, Any]:
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if len(position_ras) != 3:
        raise ValueError(f"a click position is three numbers (RAS, mm), got {list(position_ras)}")
    return {"cmd": "click", "name": name, "position": ras_to_lps(position_ras), "label": label,
            "output": str(output_path)}


def undo_request(name: str, output_path: str) -> Dict[str, Any]:
    return {"cmd": "undo", "name": name, "output": str(output_path)}


@dataclass
class Prompt:
    """What the worker has segmented a structure with: its prompts-file entry, and the RAS clicks in it.

    ``order``: the clicks as the worker holds them (the entry's points, then the clicks sent one by one), each as
    (label, index in ``include`` or ``exclude``): the worker's ``not_used`` report numbers clicks in that order."""

    name: str
    entry: Dict[str, Any]
    include: List[List[float]] = field(default_factory=list)
    exclude: List[List[float]] = field(default_factory=list)
    order: List[Tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.order:  # as a segment request sends them (``prompts.structure``: include, then exclude)
            self.order = [("include", i) for i in range(len(self.include))] + \
                [("exclude", i) for i in range(len(self.exclude))]


def requests_for(previous: Optional[Prompt], current: Prompt,
                 output_path: str) -> List[Tuple[Dict[str, Any], Prompt]]:
    """The requests that bring the worker from ``previous`` (what it last segmented for this name, or None) to
    ``current``, each with the state it leaves the structure in: one click per new point when only points were
    added (the embeddings and the structure's undo history are kept), else one segment request."""
    same_base = (previous is not None and previous.name == current.name
                 and previous.entry.get("box") == current.entry.get("box")
                 and previous.entry.get("line") == current.entry.get("line")
                 and current.include[:len(previous.include)] == previous.include
                 and current.exclude[:len(previous.exclude)] == previous.exclude)
    if not same_base:
        return [(segment_request(current.entry, output_path), current)]
    steps, state = [], previous
    for label in LABELS:
        for point in getattr(current, label)[len(getattr(previous, label)):]:
            include = state.include + [point] if label == "include" else state.include
            exclude = state.exclude + [point] if label == "exclude" else state.exclude
            order = state.order + [(label, len(getattr(state, label)))]
            state = Prompt(current.name, current.entry, include, exclude, order)
            steps.append((click_request(current.name, point, label, output_path), state))
    return steps or [(segment_request(current.entry, output_path), current)]


class History:
    """Per structure, the states the worker holds (newest last), kept in step with its answers."""

    def __init__(self) -> None:
        self.states: Dict[str, List[Prompt]] = {}

    def last(self, name: str) -> Optional[Prompt]:
        states = self.states.get(name)
        return states[-1] if states else None

    def answered(self, request: Dict[str, Any], state: Optional[Prompt]) -> None:
        """Record a request the worker carried out (``state``: what it leaves; None for undo)."""
        cmd = request.get("cmd")
        if cmd == "segment":
            self.states[state.name] = [state]
        elif cmd == "click":
            self.states.setdefault(state.name, []).append(state)
        elif cmd == "undo" and len(self.states.get(request["name"], [])) > 1:
            self.states[request["name"]].pop()
        elif cmd == "open":
            self.states.clear()


def parse_reply(line: str) -> Dict[str, Any]:
    """The answer of one line; WorkerError with the worker's message when it refused the request."""
    try:
        reply = json.loads(line)
    except json.JSONDecodeError:
        raise WorkerError(f"the prompt worker answered something that is not JSON: {line[:200]!r}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise WorkerError(f"the prompt worker answered something that is not an answer: {line[:200]!r}")
    if not reply["ok"]:
        raise WorkerError(str(reply.get("error") or "the request failed"))
    return reply


class PromptWorker:
    """One ``ldfsam prompt-worker`` process; at most one request in flight."""

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, tail_lines: int = 40):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self.pending: Optional[Dict[str, Any]] = None  # the request waiting for its answer
        self._answers: Deque[str] = collections.deque()
        self._stdout: Optional[PipeReader] = None
        self._stderr_reader: Optional[PipeReader] = None
        self._stderr: Deque[str] = collections.deque(maxlen=tail_lines)
        self._ready = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> PromptWorker:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs = {"creationflags": CREATE_NO_WINDOW} if IS_WINDOWS else {}
        self.process = subprocess.Popen(self.argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, **kwargs)
        # Read without threads by poll(), from the module's timer (see ``pipes``); requests are written whole.
        self._stdout, self._stderr_reader = PipeReader(self.process.stdout), PipeReader(self.process.stderr)
        self._ready = False
        self.pending = {"cmd": "start"}  # the worker's first line says it is ready
        return self

    def _read(self) -> None:
        """Take what the worker wrote since the last call (never waits)."""
        if self.process is None:
            return
        self._stderr.extend(line for line in self._stderr_reader.read_lines() if line.strip())
        self._answers.extend(line for line in self._stdout.read_lines() if line.strip())

    def stderr_tail(self) -> str:
        self._read()
        return "\n".join(self._stderr)

    def send(self, request: Dict[str, Any]) -> None:
        """Write one request; its answer comes from :meth:`poll`. WorkerError when busy or gone."""
        if self.pending is not None:
            raise WorkerError("the prompt worker is still answering the previous request")
        if not self.running:
            raise self._gone()
        self.process.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
        self.process.stdin.flush()
        self.pending = request

    def poll(self) -> Optional[Dict[str, Any]]:
        """The pending request's answer once it is there (None before); WorkerError when it was refused (the
        worker goes on) or the worker ended (``alive`` False, with the end of its error output)."""
        if self.pending is None:
            return None
        running = self.running  # before reading: once ended, this read takes its last lines
        self._read()
        if not self._answers:
            if running:
                return None
            self.pending = None
            raise self._gone()
        line = self._answers.popleft()
        self.pending = None
        reply = parse_reply(line)
        self._ready = self._ready or bool(reply.get("ready"))
        return reply

    def ask(self, request: Optional[Dict[str, Any]] = None, timeout: float = 600.0) -> Dict[str, Any]:
        """Send ``request`` (None: only wait for the pending one) and wait for its answer."""
        if request is not None:
            if self.pending is not None:
                self.ask(None, timeout)  # the start's "ready" first
            self.send(request)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.poll()
            if reply is not None:
                return reply
            if time.monotonic() > deadline:
                raise TimeoutError(f"the prompt worker did not answer {self.pending} within {timeout} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Ask the worker to quit (killed when it does not within ``timeout``); its exit status."""
        if self.process is None:
            return None
        if self.running:
            try:
                self.process.stdin.write((json.dumps({"cmd": "quit"}) + "\n").encode("utf-8"))
                self.process.stdin.flush()
                self.process.stdin.close()
                deadline = time.monotonic() + timeout
                while self.process.poll() is None:  # draining the pipes, so that its last words never block it
                    self._read()
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(self.argv, timeout)
                    time.sleep(0.02)
                self._read()
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.pending = None
        return self.process.returncode

    def _gone(self) -> WorkerError:
        code = None if self.process is None else self.process.poll()
        tail = self.stderr_tail()
        cause = next((line for line in reversed(tail.splitlines()) if ": error: " in line or "Error" in line), None)
        return WorkerError(f"the prompt worker ended (exit status {code})" + (f": {cause}" if cause else ""),
                           alive=False)
