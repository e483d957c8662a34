"""Axis bookkeeping for volumes not stored in axial slices, and the way back.

Training slices a volume in index space (``array[k]``), which for the usual CBCT acquisition is axial. A volume
whose slice-stacking axis is not the superior-inferior one (a sagittal or coronal acquisition) is brought to the
(S, P, L) array order by axis permutations and flips only, which are exact and invertible, so the result maps
back onto the input's own voxel grid without interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Reorientation:
    """Permutation and flips from an input array (z, y, x) to the model's (S, P, L) array order."""

    axes: Tuple[int, int, int]  # input array axis that becomes output axis 0, 1, 2
    flips: Tuple[bool, bool, bool]  # flip output axis i

    def apply(self, array: np.ndarray) -> np.ndarray:
        """A view (no copy) of ``array`` in the model's order."""
        out = np.transpose(array, self.axes)
        for i, f in enumerate(self.flips):
            if f:
                out = np.flip(out, axis=i)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """A view of a model-order ``array`` back in the input's order."""
        for i, f in enumerate(self.flips):
            if f:
                array = np.flip(array, axis=i)
        return np.transpose(array, np.argsort(self.axes))

    def spacing(self, spacing_xyz: Sequence[float]) -> Tuple[float, float, float]:
        """Voxel spacing (x, y, z) of the reoriented array."""
        zyx = tuple(spacing_xyz)[::-1]
        out_zyx = [zyx[a] for a in self.axes]
        return tuple(float(s) for s in out_zyx[::-1])

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)


def reorientation_for(direction: Sequence[float]) -> Reorientation:
    """The permutation/flips that best align an image with ``direction`` (SimpleITK's 9 values) to LPS.

    Each LPS axis takes the image axis closest to it (largest |cosine|), so an oblique volume is sliced along its
    most nearly axial axis.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # column c = physical direction of index axis c (x, y, z)
    remaining = [0, 1, 2]
    chosen = {}
    # Assign the most decisive axes first so that a 45° tie never takes an axis another LPS axis needs more.
    order = sorted(range(3), key=lambda r: -np.max(np.abs(d[r])))
    for row in order:
        col = max(remaining, key=lambda c: abs(d[row, c]))
        chosen[row] = col
        remaining.remove(col)
    # Output array axes are (z, y, x) = (S, P, L) = physical rows (2, 1, 0); array axis of index axis c is 2 - c.
    axes = tuple(2 - chosen[row] for row in (2, 1, 0))
    flips = tuple(bool(d[row, chosen[row]] < 0) for row in (2, 1, 0))
    return Reorientation(axes=axes, flips=flips)


IDENTITY = Reorientation(axes=(0, 1, 2), flips=(False, False, False))
