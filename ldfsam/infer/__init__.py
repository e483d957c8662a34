"""Inference: segment the teeth of a whole CBCT volume (``ldfsam segment``, :func:`segment_volume`).

:func:`segment_volume` goes from a file to files; :func:`segment_many` segments folders and lists of volumes
with one model load (resumable, reading and writing in the background, split between torchrun ranks); to work
in memory, load the model once (:func:`load_model`) and pass each volume (:func:`read_input`) to
:func:`segment_image`.

The names below are imported on first use, so that the light modules of this package (the inputs and the
manifest of a cohort run) answer a command line's checks before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"CohortSummary": "cohort", "segment_many": "cohort", "SegmentationResult": "pipeline",
          "SegmentOptions": "pipeline", "load_model": "pipeline", "read_input": "pipeline",
          "segment_image": "pipeline", "segment_volume": "pipeline", "write_outputs": "pipeline"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
