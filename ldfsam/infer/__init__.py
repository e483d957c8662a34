"""Inference: segment the teeth of a whole CBCT volume (``ldfsam segment``, :func:`segment_volume`)."""

from .pipeline import SegmentationResult, segment_volume

__all__ = ["SegmentationResult", "segment_volume"]
