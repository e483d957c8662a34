"""Prompt, clean cancellation: SIGTERM (what the Slicer modules send on Cancel) behaves like Ctrl-C.

Both become ``KeyboardInterrupt`` in the main thread, so every ``with`` block unwinds: atomic writers delete
their temporary files and the command exits with status 130 without leaving partial output.

A signal handler's exception is lost when the handler runs inside code whose exceptions Python only reports
("Exception ignored in ..."): the at-fork callbacks that run each time a data loader starts its workers, or a
``__del__``. Such a lost interrupt is raised again, so a cancelled training stops instead of running on until
the Slicer module's grace period ends and it is killed.

A signal that arrives while a module is being imported waits until the import has finished: raised inside it,
it would leave a half-initialised module behind (numpy's and scipy's lazy submodules then fail with
AttributeError or RecursionError instead of the interrupt, and the command exited 1 instead of 130). So does a
signal that arrives inside the ``logging`` module: raised in its at-fork callback between taking and releasing its
module lock, the interrupt was lost and the lock stayed taken, and the cancelled training hung at exit until it was
killed (status -9). Whatever exception still escapes a command after a SIGTERM is the cancel's doing:
``cancel_requested`` says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

# How long a lost interrupt waits before it is delivered again: long enough for the code that lost it (an
# at-fork callback, a finalizer) to have returned, so that it propagates from ordinary code.
REDELIVERY_DELAY_S = 0.01


class SignalInterrupt(KeyboardInterrupt):
    """The KeyboardInterrupt that SIGTERM raises (distinguishable from Ctrl-C where that matters)."""


_cancel_requested = False


def cancel_requested() -> bool:
    """Whether a SIGTERM has arrived inside the current :func:`interrupt_on_sigterm` block."""
    return _cancel_requested


def _must_not_raise_here(frame) -> bool:
    """Inside an import, inside the ``logging`` module (its locks), or inside the hook that re-delivers a lost
    interrupt (raised there, it is lost for good)."""
    while frame is not None:
        code = frame.f_code
        if (code.co_filename.startswith("<frozen importlib._bootstrap") or code.co_filename == _LOGGING_FILE
                or code is _HOOK_CODE):
            return True
        frame = frame.f_back
    return False


def _raise_interrupt(signum, frame):
    global _cancel_requested
    _cancel_requested = True
    if sys.platform != "win32" and _must_not_raise_here(frame):
        _deliver_later(signum)  # once the import or the hook has finished (an import takes seconds at most)
        return
    raise SignalInterrupt(f"signal {signum}")


def _deliver_later(signum: int) -> None:
    """Send ``signum`` to this process from another thread: the main thread handles it at its next opportunity,
    not inside the code that is running now (``os.kill`` from the main thread would run the handler at once)."""
    def deliver() -> None:
        time.sleep(REDELIVERY_DELAY_S)
        os.kill(os.getpid(), signum)

    threading.Thread(target=deliver, name="ldfsam-interrupt", daemon=True).start()


def _reraise_lost_interrupts(previous_hook):
    def hook(unraisable) -> None:
        previous_hook(unraisable)  # still reported, as Python would
        if isinstance(unraisable.exc_value, SignalInterrupt) and sys.platform != "win32":
            _deliver_later(signal.SIGTERM)  # lost again? this hook runs again and so does the delivery

    return hook


_HOOK_CODE = _reraise_lost_interrupts(None).__code__
_LOGGING_FILE = logging.__file__


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _cancel_requested
    _cancel_requested = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _reraise_lost_interrupts(previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
