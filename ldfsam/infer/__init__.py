"""Inference: segment the teeth of a whole CBCT volume (``ldfsam segment``, :func:`segment_volume`).

:func:`segment_volume` goes from a file to files; :func:`segment_many` segments folders and lists of volumes
with one model load (resumable, reading and writing in the background, split between torchrun ranks); to work
in memory, load the model once (:func:`load_model`) and pass each volume (:func:`read_input`) to
:func:`segment_image`.
"""

from .cohort import CohortSummary, segment_many
from .pipeline import (
           SegmentationResult,
           SegmentOptions,
           load_model,
           read_input,
           segment_image,
           segment_volume,
           write_outputs,
)

__all__ = ["CohortSummary", "SegmentOptions", "SegmentationResult", "load_model", "read_input", "segment_image",
           "segment_many", "segment_volume", "write_outputs"]
