"""A ``torchrun`` rank of ``ldfsam segment INPUT... -o FOLDER`` that survives the death of its own work.

torchrun's agent stops every rank as soon as one rank's process fails, and it counts any non-zero exit as a
failure. So under torchrun each rank's process is a small **supervisor** that never loads the model: it runs the
segmentation in a **worker** child (the same command), and when the worker dies (killed, out of memory, a crash
in a native library) it records the volume the worker was segmenting as failed in the rank's manifest and
starts a new worker for the rest of the rank's share. The other ranks never notice.

The worker keeps ``.rank{r}.inflight.json`` in the output folder: its pid and the volumes it holds, each with its
stage (reading, predicting, writing) and output path. After a death the volume being predicted is blamed (the
model is where memory peaks), else the one being read, else the one being written; the others are simply not
done and the new worker takes them. Each death removes one volume from the share, so the restarts end.

**Exit status.** A rank whose share had failures must not exit non-zero while other ranks still work (torchrun
would stop them), yet the run's status must say whether anything failed. Ranks count themselves out on the
agent's key-value store (the ``TCPStore`` that torchrun hosts at MASTER_ADDR:MASTER_PORT for its workers): ranks
that finish early exit 0, and the last one exits 1 if any rank had a failure. Without that store (another
launcher) each rank reports its own share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..atomic import write_text_atomic

WORKER_ENV = "LDFSAM_RANK_WORKER"  # set in the worker's environment: JSON {"skip": [inputs that killed a worker]}
BLAME_ORDER = ("predicting", "reading", "writing")


def inflight_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f".rank{rank}.inflight.json"


@dataclass
class WorkerState:
    """The worker's side: the inputs it must not try (they killed an earlier worker of this rank) and the
    record of the volumes it holds, rewritten atomically at each change of stage."""

    skip: Set[str] = field(default_factory=set)
    path: Optional[Path] = None
    _volumes: Dict[str, Dict[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> Optional[WorkerState]:
        """The state of a supervised worker, or None in a process nobody supervises."""
        raw = os.environ.get(WORKER_ENV)
        if raw is None:
            return None
        _exit_with_parent()
        return cls(skip=set(json.loads(raw or "{}").get("skip", [])))

    def open(self, folder: Path, rank: int) -> None:
        self.path = inflight_path(folder, rank)
        self._write()

    def stage(self, volume: Path, output: Path, stage: Optional[str]) -> None:
        """``volume`` (to be written to ``output``) enters ``stage`` (None: it is finished and recorded)."""
        with self._lock:
            if stage is None:
                self._volumes.pop(str(volume.resolve()), None)
            else:
                self._volumes[str(volume.resolve())] = {"stage": stage, "output": str(output)}
            self._write()

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps({"pid": os.getpid(), "volumes": self._volumes}) + "\n")


def _exit_with_parent() -> None:
    """A worker whose supervisor is gone (killed with SIGKILL: torchrun's last resort) cancels itself instead of
    running on as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ldfsam-parent-watch", daemon=True).start()


def blamed_volume(folder: Path, rank: int) -> Optional[Tuple[str, str]]:
    """(input, output) of the volume a dead worker of ``rank`` was most likely segmenting, from its in-flight
    record; None if it held none."""
    try:
        volumes = json.loads(inflight_path(folder, rank).read_text(encoding="utf-8")).get("volumes", {})
    except (OSError, ValueError):
        return None
    for stage in BLAME_ORDER:
        for volume, held in volumes.items():
            if held.get("stage") == stage:
                return volume, held.get("output", "")
    return None


def _death(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def supervise(command: Sequence[str], folder: Path, rank: int, world_size: int) -> int:
    """Run ``command`` (this rank's ``ldfsam segment``, writing into ``folder``) as a worker until the rank's
    share is finished; returns this rank's exit status (see the module docstring)."""
    from .manifest import ManifestWriter

    skip: List[str] = []
    while True:
        env = {**os.environ, WORKER_ENV: json.dumps({"skip": skip})}
        code = _wait_forwarding_signals(subprocess.Popen(list(command), env=env))
        if code in (0, 1):
            inflight_path(folder, rank).unlink(missing_ok=True)
            return finish(failed=code == 1 or bool(skip), rank=rank, world_size=world_size)
        if code in (2, 130, 143) or code == -signal.SIGTERM or code == -signal.SIGINT:
            return code if code >= 0 else 128 - code  # bad input (every rank sees it), or cancelled
        blamed = blamed_volume(folder, rank)
        if blamed is None or blamed[0] in skip:  # died holding nothing: nothing to take out, so stop for real
            print(f"ldfsam segment: rank {rank}: the worker died ({_death(code)}) holding no volume",
                  file=sys.stderr, flush=True)
            return code if code > 0 else 128 - code
        error = (f"the process segmenting this volume died ({_death(code)}; out of memory?); rank {rank} went on "
                 "without it")
        volume, output = blamed
        ManifestWriter(folder, rank, world_size).record(Path(volume), Path(output), "failed", 0.0, error)
        print(f"ldfsam segment: rank {rank}: {volume}: {error}", file=sys.stderr, flush=True)
        skip.append(volume)
        inflight_path(folder, rank).unlink(missing_ok=True)


def _wait_forwarding_signals(proc: subprocess.Popen) -> int:
    """Wait for the worker; a cancel (SIGTERM/Ctrl-C, raised here as KeyboardInterrupt) is passed on to it, and
    it finishes the write under way before it exits."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def finish(failed: bool, rank: int, world_size: int, env: Optional[Dict[str, str]] = None,
           timeout_s: float = 30.0) -> int:
    """This rank's exit status: 0 while other ranks may still work; the last rank out reports the whole run.
    ``timeout_s``: how long to try to reach the store (torchrun's agent, alive while any rank runs)."""
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" or world_size <= 1:
        return 1 if failed else 0
    try:
        from datetime import timedelta

        from torch.distributed import TCPStore

        store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=timeout_s))
        prefix = f"ldfsam/segment/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        store.add(f"{prefix}/failed", int(failed))  # before counting out, so the last rank sees every failure
        if store.add(f"{prefix}/finished", 1) < world_size:
            if failed:
                print(f"ldfsam segment: rank {rank}: finished with failures (see the manifest); the last rank to "
                      "finish gives the run's exit status", file=sys.stderr, flush=True)
            return 0
        return 1 if store.add(f"{prefix}/failed", 0) else 0
    except Exception as e:  # noqa: BLE001 - no store to count on: report this rank's share
        print(f"ldfsam segment: rank {rank}: no torchrun store ({e}); exit status for this rank only",
              file=sys.stderr, flush=True)
        return 1 if failed else 0
