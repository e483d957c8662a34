"""Prompt, clean cancellation: SIGTERM (what the Slicer modules send on Cancel) behaves like Ctrl-C.

Both become ``KeyboardInterrupt`` in the main thread, so every ``with`` block unwinds: atomic writers delete
their temporary files and the command exits with status 130 without leaving partial output.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
