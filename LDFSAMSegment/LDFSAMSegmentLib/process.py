"""A background ``ldfsam`` process that Slicer polls from a timer, and that Cancel stops with all its children.

The process starts in its own session (POSIX) or process group (Windows), so that Cancel reaches every process
it started (data loader workers, torchrun workers): SIGTERM to the whole group first, which the core turns
into a clean exit (status 130, no partial files), then SIGKILL once the grace period has passed. On Windows,
``taskkill /T /F`` ends the tree. The pipes are non-blocking and read by :meth:`poll` itself (``pipes``), which
the module calls from a ``qt.QTimer``: no Python thread (Slicer's Python runs none while the GUI is idle), and
the GUI is never held.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence

from ldfsam.progress import parse_event

from .pipes import PipeReader

IS_WINDOWS = sys.platform == "win32"
# Windows process creation flags (subprocess defines them on Windows only): no console window of its own, and a
# process group of its own (so that taskkill /T reaches the whole tree).
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)


def taskkill(pid: int) -> subprocess.CompletedProcess:
    """End a Windows process tree; CREATE_NO_WINDOW, or Slicer (a GUI application) flashes a console each time."""
    return subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False,
                          creationflags=CREATE_NO_WINDOW)


@dataclass
class Output:
    """What a process printed since the last poll: events, other stdout lines, stderr lines."""

    events: List[dict] = field(default_factory=list)
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


class BackgroundProcess:
    """Runs one command line without blocking: ``start``, then ``poll`` until ``returncode`` is not None."""

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                 grace_s: float = 10.0, tail_lines: int = 40):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.grace_s = grace_s
        self.process: Optional[subprocess.Popen] = None
        self.cancelled = False
        self._kill_at: Optional[float] = None
        self._stdout: Optional[PipeReader] = None
        self._stderr: Optional[PipeReader] = None
        self._stderr_tail: Deque[str] = collections.deque(maxlen=tail_lines)

    # -- life cycle -----------------------------------------------------------------------------------------
    def start(self) -> BackgroundProcess:
        kwargs = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0, **kwargs)
        self._stdout, self._stderr = PipeReader(self.process.stdout), PipeReader(self.process.stderr)
        return self

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> Optional[int]:
        """The exit status of the process once it has ended; None while it runs."""
        return None if self.process is None else self.process.poll()

    @property
    def finished(self) -> bool:
        """The process has ended and no process of its group is left behind: the next :meth:`poll` returns the
        last of its output (every writer of the pipes is gone)."""
        if self.returncode is None:
            return False
        if self.group_alive():
            # Strays that outlived the main process (after Cancel or not) get the same SIGTERM-then-SIGKILL.
            if self._kill_at is None:
                self._signal_tree(kill=False)
                self._kill_at = time.monotonic() + self.grace_s
            return False
        return True

    def poll(self) -> Output:
        """New output since the last call; also escalates a pending Cancel to SIGKILL once the grace is over."""
        out = Output()
        if self.process is None:
            return out
        for line in self._stderr.read_lines():
            out.stderr.append(line)
            if line.strip():
                self._stderr_tail.append(line)
        for line in self._stdout.read_lines():
            event = parse_event(line)
            if event is not None:
                out.events.append(event)
            else:
                out.stdout.append(line)
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            self._signal_tree(kill=True)
        return out

    def cancel(self) -> None:
        """Ask the whole process tree to stop now; anything still alive after ``grace_s`` is killed by ``poll``."""
        if self.process is None:
            return
        self.cancelled = True
        self._signal_tree(kill=IS_WINDOWS)
        self._kill_at = time.monotonic() + self.grace_s

    def wait(self, timeout: Optional[float] = None, poll_s: float = 0.05) -> Output:
        """Block until the process has ended (for scripts and tests); returns everything it printed."""
        collected = Output()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = self.finished  # before the poll: once finished, this poll reads the last lines
            out = self.poll()
            collected.events += out.events
            collected.stdout += out.stdout
            collected.stderr += out.stderr
            if finished:
                return collected
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[:4]} still running after {timeout} s")
            time.sleep(poll_s)

    def stderr_tail(self) -> str:
        """The last non-empty lines the process wrote to stderr: the real cause of a failure."""
        return "\n".join(self._stderr_tail)

    # -- signalling -----------------------------------------------------------------------------------------
    def _signal_tree(self, kill: bool) -> None:
        pid = self.process.pid
        if IS_WINDOWS:
            # taskkill /T also reaches children that outlived their parent's console group.
            taskkill(pid)
            return
        try:
            # The session leader's pid is the group id, valid while any member lives (even after the leader died).
            os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        """Whether any process of the group still exists (POSIX); the process itself on Windows."""
        if self.process is None:
            return False
        if IS_WINDOWS or self.process.poll() is None:
            return self.process.poll() is None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def kill_pending(self) -> bool:
        return self._kill_at is not None
