"""What propagating one structure produces (``propagate.Propagator``): each decoded slice's section with the
stop rules' chains up to it (``SliceResult``), and the structure's mask with where and why it ended
(``StructureResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np


@dataclass
class SliceResult:
    """One decoded slice's section, and how far each rule's chain of sections reaches up to it (what the rules of
    ``stop_rules.StopRules`` read of the previous slice)."""

    logits: np.ndarray  # on the propagator's view (vy×vx), not the whole slice
    low: object  # torch 1×1×S×S, SAM's own logits (the next slice's mask prompt)
    iou: float = 1.0  # SAM's predicted IoU of this mask
    narrowest: float = np.inf  # where the mask was followed (``Propagator.follow``): the least area of that chain
    dentin: int = 0  # how many sections up to this one in a row are the root's side (``root_grey``, ``root_bone``)
    # this section and every one from the prompted slice to it lay in bone (``in_bone``; the prompted one itself
    # only without ``chain_skips_prompt``)
    in_bone: bool = False
    # ... or held no enamel (``StopRules.in_jaw``, ``chain_dentin``): the chain of ``past_prior_in_bone``
    in_jaw: bool = False
    # this section and every one from the prompted slice to it held the crown's enamel (``StopRules.on_crown``): the
    # chain of ``past_prior_unseen``; ``crown_grey``: the grey its enamel test is against (``unseen_brightest``)
    on_crown: bool = False
    crown_grey: float = 0.0
    # a root's tip (``StopRules.tip``, ``PropagationConfig.follow_tip``): the structure ends after this section, why
    ended: str = ""

    @property
    def mask(self) -> np.ndarray:
        return self.logits > 0


@dataclass
class StructureResult:
    """The structure's mask, the slices it was decoded on and the anchors (prompted slices).

    ``crop`` holds the mask inside the region that propagation worked on (the decoded slices × the encoder's
    view), starting at voxel ``offset`` (z, y, x) of the volume of ``shape`` (z, y, x); ``mask`` is the same on the
    whole volume (made on first use: 177 MB for a 420×650×650 CBCT, where a tooth's crop is a few MB)."""

    crop: np.ndarray
    offset: Tuple[int, int, int]
    shape: Tuple[int, int, int]
    slices: List[int]
    anchors: List[int]
    stopped: Dict[int, str] = field(default_factory=dict)  # direction (+1/-1) -> why propagation stopped
    # slice -> what the stop rules measured there (``Propagator.measure``), including the slice that stopped it
    trace: Dict[int, Dict[str, float]] = field(default_factory=dict)
    # With a prior: what prompt validation did with each click and the box (``prompt_validation.Decision``)
    validation: List[Dict[str, object]] = field(default_factory=list)
    _mask: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    @property
    def region(self) -> Tuple[slice, slice, slice]:
        """Where ``crop`` lies in the volume (index with it: ``labels[result.region][result.crop] = value``)."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.crop.shape))

    @property
    def mask(self) -> np.ndarray:
        """z×y×x bool on the whole volume."""
        if self._mask is None:
            self._mask = np.zeros(self.shape, bool)
            self._mask[self.region] = self.crop
        return self._mask

    def block(self) -> Optional[Tuple[Tuple[int, int, int], np.ndarray]]:
        """(first voxel z, y, x; the mask inside it) of the smallest block holding the mask; None for an empty one."""
        if not self.crop.any():
            return None
        cut = []
        for axis in range(3):
            hit = np.nonzero(self.crop.any(tuple(a for a in range(3) if a != axis)))[0]
            cut.append(slice(int(hit[0]), int(hit[-1]) + 1))
        return tuple(o + c.start for o, c in zip(self.offset, cut)), self.crop[tuple(cut)]
