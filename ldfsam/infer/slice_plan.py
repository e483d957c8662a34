"""Planning the model slices of a volume: reorient (only volumes not stored axially), window, and the axial
slices about one model pixel apart, kept as grey values so that the volume itself can go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..progress import Progress
from .orientation import IDENTITY, Reorientation, reorientation_for
from .slice_sampling import SliceSpacing, resolve_slice_spacing, slice_positions


@dataclass
class SlicePlan:
    """The model slices of one volume: their grey values and where they sit. Axes are the axial view's
    (z, y, x) = (S, P, L); ``orient`` maps the input's array to it and back."""

    name: str  # for messages: the input's file name
    source: Optional[Path]  # the input file, named in errors
    grid: Any  # the input grid (ldfsam.data.preprocess.Grid)
    orient: Reorientation
    shape: Tuple[int, int, int]  # (nz, ny, nx) of the axial view
    spacing: Tuple[float, float, float]  # (x, y, z) mm of the axial view
    positions: np.ndarray  # indices of the model slices along z
    slices: np.ndarray  # their grey values, len(positions)×ny×nx
    window: Tuple[float, float]  # intensity window for normalisation
    adaptive: bool  # coarse to fine ("auto")

    def release_slices(self) -> None:
        """Drop the grey values (the prediction is done with them), keeping the geometry."""
        self.slices = np.empty((0,) + self.slices.shape[1:], self.slices.dtype)


def plan_slices(image: sitk.Image, pre, slice_spacing: SliceSpacing = "auto", name: str = "volume",
                source: Optional[Path] = None, progress: Optional[Progress] = None) -> SlicePlan:
    """Choose the model slices of ``image`` for a model with preprocessing ``pre`` and keep their grey values:
    after this the volume itself is no longer needed (at 2.5 input slices per model slice, 60% of its memory
    can go before the model arrives)."""
    from ..data.preprocess import Grid, intensity_window, slice_axis

    orient = reorientation_for(image.GetDirection()) if slice_axis(image) != "S" else IDENTITY
    if not orient.identity and progress is not None:
        progress.log("segment", f"{name} is not stored in axial slices; segmenting its axial planes",
                     level="warning")
    view = orient.apply(sitk.GetArrayViewFromImage(image))  # (z, y, x) = (S, P, L), no copy
    nz, ny, nx = view.shape
    spacing = tuple(float(s) for s in orient.spacing(Grid.of(image).spacing))
    positions = slice_positions(nz, spacing[2], resolve_slice_spacing(slice_spacing, spacing, (nz, ny, nx),
                                                                       pre.sam_size))
    adaptive = str(slice_spacing).strip().lower() == "auto" and len(positions) > 2
    return SlicePlan(name, source, Grid.of(image), orient, (nz, ny, nx), spacing, positions,
                     np.ascontiguousarray(view[positions]), intensity_window(view, pre), adaptive)
