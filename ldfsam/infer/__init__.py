"""Inference: segment the teeth of a whole CBCT volume (``ldfsam segment``, :func:`segment_volume`).

:func:`segment_volume` goes from a file to files; to segment many volumes with one model, load it once
(:func:`load_model`) and pass each volume (:func:`read_input`) to :func:`segment_image`.
"""

from .pipeline import (
           SegmentationResult,
           SegmentOptions,
           load_model,
           read_input,
           segment_image,
           segment_volume,
           write_outputs,
)

__all__ = ["SegmentOptions", "SegmentationResult", "load_model", "read_input", "segment_image", "segment_volume",
           "write_outputs"]
