"""Which axial slices the model sees, and how the label map between them is filled.

The model works on S×S slices (S = 256), so in-plane it resolves the field of view in S pixels, and its masks
are finer still only through interpolation (SAM's decoder predicts at S/4). Running it on every slice of a thin-
sliced CBCT (0.2-0.3 mm) spends most of the work on slices that are closer together than anything it resolves
in-plane. The model therefore runs on candidate slices about one model pixel apart (``"1px"``), and the
logits of every input slice in between are interpolated linearly along z from the two nearest model slices:
with the bilinear in-plane resize this is trilinear interpolation of the logits onto the input grid. Model
slices are input slices (no interpolation of grey values), the first and the last included, so the result on
them is exactly what the model says; ``"native"`` runs the model on every slice. The default ``"auto"`` runs on
the same candidates coarse to fine, skipping those that interpolation recovers (``adaptive_slices``).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import Arg, ConfigError
from .predictor import EMPTY_LOGIT

SliceSpacing = Union[str, float, None]


def parse_slice_spacing(option: SliceSpacing) -> Optional[Tuple[float, str]]:
    """``option`` as (value, "px" or "mm"), None for "native"; a ConfigError naming ``slice_spacing`` when it is
    none of "auto", "native", "Npx" or a distance in mm."""
    if option is None or option == "native":
        return None
    text = str(option).strip().lower()
    if text == "auto":
        text = "1px"
    try:
        value = float(text[:-2]) if text.endswith("px") else float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError("{}: give 'auto', 'native', a number of model pixels such as '2px', or a distance in mm",
                          arguments=[Arg("slice_spacing", option)])
    return value, "px" if text.endswith("px") else "mm"


def resolve_slice_spacing(option: SliceSpacing, spacing_xyz: Sequence[float], shape_zyx: Sequence[int],
                          sam_size: int) -> Optional[float]:
    """The largest mean distance (mm) between candidate slices. "auto" and "1px": one model pixel, the field of
    view over ``sam_size`` (the finer of x and y); "Npx": N model pixels; "native" or None: every slice (None);
    a number: that many mm."""
    parsed = parse_slice_spacing(option)
    if parsed is None:
        return None
    value, unit = parsed
    if unit == "px":
        _, ny, nx = shape_zyx
        return value * min(nx * spacing_xyz[0], ny * spacing_xyz[1]) / sam_size
    return value


def slice_positions(nz: int, z_spacing: float, max_spacing: Optional[float]) -> np.ndarray:
    """Indices of the slices the model runs on: first and last included, evenly spread with a mean gap of at
    most ``max_spacing`` mm (each gap is that mean rounded to whole slices); every slice when None or when the
    slices are already that far apart."""
    if max_spacing is None or max_spacing <= z_spacing or nz <= 2:
        return np.arange(nz)
    count = math.ceil((nz - 1) * z_spacing / max_spacing) + 1
    return np.unique(np.rint(np.linspace(0, nz - 1, count)).astype(np.int64))


class SliceFiller:
    """Streams model slices, in increasing z, into the label map (and probabilities) of every input slice.

    ``labels`` (z×y×x uint8, zero on entry) is written in place; ``probabilities`` likewise when given. Model
    slices without teeth count as logit ``EMPTY_LOGIT`` everywhere. Input slices up to the latest model slice
    are final once ``add`` returns, so the caller may reuse their grey values' memory.
    """

    def __init__(self, labels: np.ndarray, cut: float, num_classes: int,
                 probabilities: Optional[np.ndarray] = None) -> None:
        self.labels, self.probs, self.cut, self.classes = labels, probabilities, cut, num_classes
        _, self.ny, self.nx = labels.shape
        self.empty = torch.full((num_classes, self.ny, self.nx), EMPTY_LOGIT)
        self.last: Optional[int] = None
        self.last_logits: Optional[torch.Tensor] = None  # None: the last model slice had no teeth

    def add(self, positions: Sequence[int], logits: torch.Tensor, has_teeth: torch.Tensor) -> None:
        """``logits`` B×C×S×S for the model slices at ``positions`` (B, increasing); ``has_teeth`` B bool."""
        for j, (z, h) in enumerate(zip(positions, has_teeth.tolist())):
            self.add_slice(int(z), logits[j] if h else None)

    def add_slice(self, position: int, logits: Optional[torch.Tensor]) -> None:
        """One model slice: ``logits`` C×S×S, or None when it holds no teeth."""
        current = None
        if logits is not None:
            # Back onto the slice grid: bilinear on the logits.
            current = torch.nn.functional.interpolate(logits[None], size=(self.ny, self.nx), mode="bilinear",
                                                      align_corners=False)[0]
        if self.last is not None:
            self._fill(self.last, position, self.last_logits, current)
        self.last, self.last_logits = position, current

    def finish(self) -> None:
        """Write the last model slice itself."""
        if self.last is not None:
            self._fill(self.last, self.last + 1, self.last_logits, None)
            self.last = None

    def _fill(self, z0: int, z1: int, a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> None:
        """Input slices z0 (the model slice with logits ``a``) up to z1 (exclusive; the next one, ``b``)."""
        if a is None and b is None:
            return  # no teeth on either side: the zeros already there
        for z in range(z0, z1):
            w = (z - z0) / (z1 - z0)
            if w == 0.0:
                if a is None:
                    continue
                value = a
            else:
                value = torch.lerp(a if a is not None else self.empty, b if b is not None else self.empty, w)
            self._write(z, value)

    def _write(self, z: int, value: torch.Tensor) -> None:
        labels, best = threshold_logits(value, self.cut)
        self.labels[z] = labels.numpy()
        if self.probs is not None:
            self.probs[z] = torch.sigmoid(best).numpy()


class _ProbabilityFiller(SliceFiller):
    """A SliceFiller that writes only the sigmoid of one-channel logits (its ``labels`` array is the output)."""

    def _write(self, z: int, value: torch.Tensor) -> None:
        self.probs[z] = torch.sigmoid(value[0]).numpy()


def fill_probabilities(logits: Dict[int, Optional[torch.Tensor]], shape: Tuple[int, int, int]) -> np.ndarray:
    """One-channel logits (1×G×G, None: nothing there) of model slices keyed by z -> probabilities on every slice
    (z×y×x float32): bilinear onto each slice, linear along z between model slices, as ``SliceFiller`` does."""
    out = np.zeros(shape, dtype=np.float32)
    filler = _ProbabilityFiller(out, 0.0, 1, out)
    for z in sorted(logits):
        filler.add_slice(z, logits[z])
    filler.finish()
    return out


def threshold_logits(logits: torch.Tensor, cut: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """C×H×W logits -> (H×W uint8 labels, 0 background: the best class where its logit is above ``cut``;
    H×W best logit)."""
    if logits.shape[0] == 1:
        best = logits[0]
        return (best > cut).to(torch.uint8), best
    best, arg = logits.max(dim=0)
    return (arg.to(torch.uint8) + 1) * (best > cut), best
