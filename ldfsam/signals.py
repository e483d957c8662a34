"""Prompt, clean cancellation: SIGTERM (what the Slicer modules send on Cancel) behaves like Ctrl-C.

Both become ``KeyboardInterrupt`` in the main thread, so every ``with`` block unwinds: atomic writers delete
their temporary files and the command exits with status 130 without leaving partial output.

A signal handler's exception is lost when the handler runs inside code whose exceptions Python only reports
("Exception ignored in ..."): the at-fork callbacks that run each time a data loader starts its workers, or a
``__del__``. Such a lost interrupt is raised again, so a cancelled training stops instead of running on until
the Slicer module's grace period ends and it is killed.
"""

from __future__ import annotations

import contextlib
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


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
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


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _reraise_lost_interrupts(previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
