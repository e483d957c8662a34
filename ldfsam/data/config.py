"""Preprocessing configuration: how a volume or image becomes model input (section 4.2).

Saved inside every checkpoint next to the model configuration, so inference prepares its input exactly as
training did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class PreprocessConfig:
    # Resampling target (mm, isotropic) before slicing; None keeps the input's spacing.
    target_spacing: Optional[float] = 0.25
    # CBCT grey values are not calibrated HU: a per-volume percentile window, then scaling to [0, 1].
    window_percentiles: Tuple[float, float] = (0.5, 99.5)
    # A fixed window (low, high) in the input's units overrides the percentiles when given.
    fixed_window: Optional[Tuple[float, float]] = None
    sam_size: int = 256
    yolo_size: int = 640
    # Label map value -> class index (1-based; 0 is background) of the model's classes. The default maps every
    # nonzero label to the single class "tooth"; a DentalSegmentator map uses {"3": 1, "4": 1}.
    label_map: Optional[Dict[str, int]] = None
    class_names: List[str] = field(default_factory=lambda: ["tooth"])
