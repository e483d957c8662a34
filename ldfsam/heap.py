"""Returning freed heap memory to the operating system."""

from __future__ import annotations

import sys


def release_free_memory() -> None:
    """Hand freed heap back to the system: glibc keeps freed blocks below its mmap threshold (32 MB at most)
    for reuse, so after a model or its read buffers are freed the process would keep their size. A no-op
    outside Linux."""
    import ctypes

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
