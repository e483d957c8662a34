"""What segmenting a volume produced (:class:`SegmentationResult`) and writing it to files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ..errors import Arg, ConfigError
from . import outputs as out_io

PathLike = Union[str, Path]


@dataclass
class SegmentationResult:
    """What :func:`segment_volume` produced. ``labels`` is z×y×x on the input grid (0 background), ``grid`` that
    grid (size, spacing, origin, direction)."""

    labels: np.ndarray
    grid: Any
    segment_names: list
    probabilities: Optional[np.ndarray] = None
    saliency: Optional[np.ndarray] = None  # SPD's tooth saliency map (z×y×x float32 on the input grid), if asked
    slices: int = 0
    slices_with_teeth: int = 0  # model slices on which the prompt generator found teeth
    model_slices: int = 0  # slices the model ran on (all of them with slice_spacing="native")
    # Of the slices with teeth, those through the image encoder (the others: SegmentOptions.interpolate_embeddings).
    encoded_slices: int = 0
    batch: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)


def write_outputs(result: SegmentationResult, output: Optional[PathLike], probabilities: Optional[PathLike],
                  force: bool = False) -> Dict[str, str]:
    """Write the label map (.nii.gz etc. or .seg.nrrd, by suffix) and the probability map, each atomically."""
    written: Dict[str, str] = {}
    if output is not None:
        if out_io.output_kind(Path(output)) == "seg":
            out_io.write_segmentation(Path(output), result.labels, result.grid, names=result.segment_names,
                                      overwrite=force)
        else:
            out_io.write_label_map(Path(output), result.labels, result.grid, overwrite=force)
        written["output"] = str(output)
    if probabilities is not None:
        if result.probabilities is None:
            raise ConfigError("{}: the result holds no probabilities (segment with SegmentOptions.probabilities)",
                              arguments=[Arg("probabilities", str(probabilities))])
        out_io.write_probabilities(Path(probabilities), result.probabilities, result.grid, overwrite=force)
        written["probabilities"] = str(probabilities)
    return written
