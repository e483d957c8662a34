"""A batch's slices side by side on the CPU's cores: each of a few threads runs its share of the rows with its own
intra-op threads, instead of every operator splitting each image across all cores.

The student encoder, the prompt generator and the decoder split their small tensors poorly across threads (each
operator waits for its slowest thread, and the student's first stage runs one image at a time), so on the 2-core
Zen 4 both with and without native bf16 two threads of one intra-op thread each, one slice apiece, beat one batch on
two threads (docs/segmentation.md, "Slices side by side on the cores"). Every row's result is the same function
of that row alone (the model holds no batch statistics at inference), so the split changes nothing but float
rounding."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ContextManager, List, Optional, Sequence

import torch

_local = threading.local()


def _cut(value: Any, a: int, b: int) -> Any:
    """Rows a:b of an argument: a tensor (dim 0), a tuple of tensors, a list (one entry per row) or None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[a:b]
    if isinstance(value, tuple):
        return tuple(_cut(v, a, b) for v in value)
    if isinstance(value, list):
        return value[a:b]
    raise TypeError(f"cannot split {type(value).__name__} by rows")


def _join(parts: List[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(_join([p[k] for p in parts]) for k in range(len(first)))
    raise TypeError(f"cannot join {type(first).__name__} by rows")


class RowThreads:
    """Runs a function on a batch's rows in up to ``threads`` groups at once, each group on its own thread with
    ``threads // groups`` intra-op threads, and joins the results along dim 0 (a tensor, or a tuple or list of
    them). Rows beyond a multiple of the groups run afterwards on the caller's own threads. ``threads`` 0: the
    caller's intra-op thread count (``torch.get_num_threads()``) at each call; 1 (or a single row) runs the
    function as it is, on the caller's threads (and in the caller's thread-local state).

    ``context`` makes each worker's thread-local state (inference mode, autocast): torch keeps those per thread.
    """

    def __init__(self, threads: int, context: Optional[Callable[[], ContextManager]] = None) -> None:
        self._threads = max(0, int(threads))
        self.context = context or contextlib.nullcontext
        self._pool: Optional[ThreadPoolExecutor] = None

    @property
    def threads(self) -> int:
        return self._threads or torch.get_num_threads()

    def __call__(self, fn: Callable[..., Any], rows: int, *args: Any) -> Any:
        threads = self.threads
        groups = max(1, min(threads, rows))
        if groups < 2:
            return fn(*args)
        caller = torch.get_num_threads()
        # Equal groups only: with one thread per group, a group one row longer keeps the others' cores idle for a
        # whole row, so the rows left over (fewer than the groups) run after them on all the caller's threads.
        even = rows - rows % groups
        if self._pool is None or self._pool._max_workers < groups:
            self.close()
            self._pool = ThreadPoolExecutor(groups, thread_name_prefix="ldfsam-rows")
        bounds = [even * g // groups for g in range(groups + 1)]
        intra = max(1, threads // groups)
        futures = [self._pool.submit(self._run, intra, fn, [_cut(v, a, b) for v in args])
                   for a, b in zip(bounds, bounds[1:])]
        parts = [f.result() for f in futures]
        if even < rows:
            parts.append(fn(*[_cut(v, even, rows) for v in args]))
        # A worker's torch.set_num_threads also sets the process-wide count that threads started later begin with:
        # give that back the caller's, so that such a thread is not left at one intra-op thread.
        torch.set_num_threads(caller)
        return _join(parts)

    def _run(self, intra: int, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        # Thread-local: OpenMP's and MKL's thread counts are the calling thread's (the caller's stay as they are).
        if getattr(_local, "intra", None) != intra:
            torch.set_num_threads(intra)
            _local.intra = intra
        with torch.inference_mode(), self.context():
            return fn(*args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
