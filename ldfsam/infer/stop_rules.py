"""Where a propagated structure ends, and following a root where SAM's mask leaves it: the stop rules of
``propagate.Propagator`` (``StopRules``, a mixin; ``PropagationConfig`` holds the numbers).

- Stop rules (``stop_rules``; SAM finds something in any box, so without them a box on one slice runs through
  the air, soft tissue and the other jaw). On a slice without include points the structure ends where its mask
  has lost its contrast (mean grey inside minus that of a ring of ``ring_mm`` around it, below ``min_contrast``
  of the primary slice's, for a primary contrast of at least ``min_primary_contrast``): a tooth is brighter
  than what surrounds it, air, soft tissue and bone beyond the apex are not. It also ends where less than
  ``min_on_previous`` of the mask lies on the previous slice's mask: it jumped to something beside it. SAM's
  predicted IoU was measured too and does not separate a tooth from air on the real CT (0.57-0.90 on both), so
  no rule uses it. What each slice measured is in ``StructureResult.trace`` (docs/segmentation.md).
- Following a root (``follow``). Below a crown SAM's mask, prompted with the previous slice's box, leaves the root
  for the bone around it and loses its contrast. Where a rule fires (or SAM's mask is mostly darker than dentin)
  and SAM's mask is not darker than its ring (a darker mask lies in a gap: the tooth ended), the slice keeps the
  part that continues the previous mask instead: its pixels near that mask that are closer to the tooth's grey
  than to the surroundings' (``StopRules.follow``). The root ends where no such part is left.
- The root's side (``root_grey``, ``root_sections``, ``root_bone``, ``root_bone_max``). The gap guard above is
  lifted once the last sections held no enamel (their mean grey below ``root_grey`` of the prompted crown's) or lay
  in bone (the median grey of the ring around them between ``root_bone`` and ``root_bone_max`` of the crown's:
  darker is soft tissue or air, brighter is neighbouring teeth; where a window saturates dentin like enamel, as on
  the real head CT, only this tells the jaw): the structure is then in the jaw, where a SAM mask darker than its
  ring lies on the bone or the ligament between roots; near the enamel, at a crown's occlusal end where the other
  row may touch it, the guard stays. With ``gap_in_bone`` the guard is also lifted on a slice whose SAM mask itself
  lies in bone (a gap between the rows is ringed by air or soft tissue): a root prompted at its neck is followed
  from the next slice. With ``follow_vanished`` (off by default) the root is also followed there where SAM's mask
  vanishes or is too small, if the followed section lies in bone.
- The root's tip (``follow_tip``, off by default). Root following needs a section that overlaps the previous one
  and is not too small; at an apex the last section is a few voxels, or lies a voxel beside the previous one. Where
  the structure would end on its root's side, that last section is kept if it is narrower than the previous one,
  bright, passes the contrast rule and lies in bone (``StopRules.tip``), and the structure ends after it. Off: on
  phantoms a structure that crossed the occlusal contact into the other row gets that tooth's apex the same way.
- With a prior (``context_prompts.PriorPropagator``): where CPD's prior and carried prompts stop agreeing, the slice
  is prompted as without a prior and kept where its section lies in bone (``past_prior_in_bone``; a prior silent
  inside the jaw is no evidence against a root, its veto stands in air, soft tissue and among other crowns) or where
  the prior itself sees most of it (``past_prior_seen``: towards a crown's occlusal end the section shrinks to a cusp
  beside the carried centreline points; the prior's map, not its points, says whether it is tooth), and where the
  prior is blind to a section off the root's side that continues a box-prompted crown's enamel (``past_prior_unseen``:
  as bright as the brightest section so far, ``unseen_brightest``; ``unseen_box_only``); on the root's side the
  slices are prompted as without a prior (``image_on_root``). Where these rules decode the slice past CPD's stop and
  keep no section, the stop reason says what each found against it (``StopRules.past_prior_verdict``).
"""

from __future__ import annotations

from typing import Dict, Optional, Protocol, Tuple

import numpy as np
from scipy import ndimage

from ..data.preprocess import normalize

# Logit given to voxels a cut removes (never part of the mask).
OFF = -20.0
# Why a structure ends where CPD stops (``context_prompts``) and no rule decodes past it; where one does and keeps no
# section, the reason goes on to say why (``StopRules.past_prior_verdict``).
CPD_STOP = "the prior and the carried prompts stop agreeing"


class Section(Protocol):
    """What the rules read of the previous slice's result (``structure_result.SliceResult``)."""

    mask: np.ndarray  # on the propagator's view
    narrowest: float
    dentin: int
    in_jaw: bool
    on_crown: bool
    crown_grey: float


class StopRules:
    """The stop rules and root following of ``propagate.Propagator``, which provides ``cfg``
    (``PropagationConfig``), ``sam``, ``view``, ``ring`` and ``follow_px`` (voxels), ``min_area``, its prompt ``p``,
    and from its primary slice ``primary_area`` and ``primary_stats`` (``measure``)."""

    def measure(self, z: int, mask: np.ndarray, prev: Optional[np.ndarray], iou: float) -> Dict[str, float]:
        """What the stop rules look at on slice z: the mask's area (voxels), SAM's predicted IoU, the mean
        windowed grey inside the mask and its contrast against a ring around it, and the share of the mask
        that lies on the previous slice's mask."""
        area = int(np.count_nonzero(mask))
        prev_area = None if prev is None else float(np.count_nonzero(prev))
        if area == 0:
            return {"area": 0.0, "iou": float(iou), "grey": 0.0, "contrast": 0.0, "on_previous": 0.0,
                    "area_ratio": 0.0}
        # Only the mask's bounding box grown by the ring: a few per cent of the view.
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        r = self.ring + 1
        cy, cx = slice(max(0, ys[0] - r), ys[-1] + r + 1), slice(max(0, xs[0] - r), xs[-1] + r + 1)
        mask = mask[cy, cx]
        prev = None if prev is None else prev[cy, cx]
        y0, x0 = self.view[0], self.view[2]
        grey = self.sam.volume[z, y0 + cy.start:y0 + cy.start + mask.shape[0],
                               x0 + cx.start:x0 + cx.start + mask.shape[1]]
        grey = normalize(grey, self.sam.window) if self.sam.window is not None else np.asarray(grey, np.float32)
        ring = ndimage.binary_dilation(mask, iterations=self.ring) & ~mask
        inside = float(grey[mask].mean())
        around = float(grey[ring].mean()) if ring.any() else inside
        out = {"area": float(area), "iou": float(iou), "grey": inside, "contrast": inside - around,
               "ring_median": float(np.median(grey[ring])) if ring.any() else inside}
        if prev is not None:
            out["on_previous"] = float(np.count_nonzero(mask & prev)) / area
            out["area_ratio"] = area / max(1.0, prev_area)
        return out

    def _dentin(self, stats: Dict[str, float], before: int) -> int:
        """``SliceResult.dentin`` of a section measured as ``stats`` after ``before`` such sections: it counts where
        the section holds no enamel (``root_grey``) or lies in bone (``root_bone``)."""
        return before + 1 if stats["grey"] < self.cfg.root_grey * self.primary_stats["grey"] or self.in_bone(
            stats) else 0

    def in_bone(self, stats: Dict[str, float]) -> bool:
        """Whether a section measured as ``stats`` lies in bone: the median grey of its ring between ``root_bone``
        and ``root_bone_max`` of the prompted crown's (darker: soft tissue or air; brighter: neighbouring teeth)."""
        c, crown = self.cfg, self.primary_stats["grey"]
        ring = stats.get("ring_median", 0.0)
        return 0 < c.root_bone <= 1 and c.root_bone * crown <= ring <= c.root_bone_max * crown

    def in_jaw(self, stats: Dict[str, float]) -> bool:
        """Whether a section measured as ``stats`` continues the chain of ``past_prior_in_bone``
        (``SliceResult.in_jaw``): it lies in bone, or (``chain_dentin``) it holds no enamel and is not ringed by
        teeth."""
        if self.in_bone(stats):
            return True
        c, crown = self.cfg, self.primary_stats["grey"]
        return (c.chain_dentin and stats.get("ring_median", 0.0) <= c.root_bone_max * crown
                and stats["grey"] < c.root_grey * crown)

    def on_crown(self, stats: Dict[str, float], crown: float = 0.0) -> bool:
        """Whether a section measured as ``stats`` holds the crown's enamel (``past_prior_unseen``): its mean grey
        at least ``root_grey`` of the prompted crown's (the enamel test of ``_dentin``), or with
        ``unseen_brightest`` of ``crown``, the brightest section's of the chain so far."""
        return stats["grey"] >= self.cfg.root_grey * self._enamel(crown)

    def _enamel(self, crown: float) -> float:
        """The grey ``on_crown``'s enamel test is against, given the brightest section of the chain so far."""
        return max(crown, self.primary_stats["grey"]) if self.cfg.unseen_brightest else self.primary_stats["grey"]

    def past_prior_verdict(self, stats: Dict[str, float], prev: Section) -> str:
        """Where CPD stopped and the slice was prompted as without a prior, whether a rule keeps its section, measured
        as ``stats`` (with ``seen``, the share the prior sees) after ``prev``: "" where one does
        (``past_prior_in_bone``, ``past_prior_seen``, ``past_prior_unseen``), else what each of them that applies
        found against it, with the measures it went by."""
        c, seen = self.cfg, stats["seen"]
        share = f"the prior sees {seen * 100:.0f} % of it"
        against = []
        if c.past_prior_in_bone and prev.in_jaw:
            if self.in_jaw(stats):
                return ""
            against.append(f"past_prior_in_bone: it leaves the jaw (its ring {stats.get('ring_median', 0.0):.2f}, "
                           f"its grey {stats['grey']:.2f}, the prompted crown's {self.primary_stats['grey']:.2f})")
        if c.past_prior_seen:
            if seen >= c.seen_share:
                return ""
            against.append(f"past_prior_seen: {share}, less than {c.seen_share * 100:.0f} %")
        if c.past_prior_unseen:
            if not seen <= c.blind_share:
                against.append(f"past_prior_unseen: {share}, more than {c.blind_share * 100:.0f} %")
            elif not prev.on_crown:
                against.append("past_prior_unseen: a structure prompted without a box (unseen_box_only)"
                               if self.p.box is None and c.unseen_box_only else
                               "past_prior_unseen: not every section from the prompted one held the crown's enamel")
            elif self.on_root(prev):
                against.append("past_prior_unseen: on the root's side (the bone chain decides there)")
            elif not self.on_crown(stats, prev.crown_grey):
                enamel = self._enamel(prev.crown_grey)
                against.append(f"past_prior_unseen: its grey {stats['grey']:.2f} is below {c.root_grey * enamel:.2f} "
                               f"({c.root_grey:.2f} of the crown's enamel, {enamel:.2f})")
            else:
                return ""
        return "; ".join(against) or "no rule applies"

    def on_root(self, prev: Section) -> bool:
        """Whether the structure is on its root's side of the crown beyond ``prev``: the last ``root_sections``
        sections held no enamel (``PropagationConfig.root_grey``). There the gap guard (``follow_gap``) is lifted."""
        return self.cfg.root_sections > 0 and prev.dentin >= self.cfg.root_sections

    def follow(self, z: int, prev: Section, sam_grey: Optional[float] = None
               ) -> Optional[Tuple[np.ndarray, Dict[str, float]]]:
        """Where SAM's mask on slice z has left the structure (a stop rule fired; or, given its mean grey
        ``sam_grey``, it is not mostly the structure's grey), the part of z that continues the previous slice's
        mask: its pixels within ``follow_slope`` × the slice distance (at least a voxel) of that mask whose grey is
        at least ``follow_level`` of the way from the surroundings' (the median of a ring around them) to the
        structure's (the primary slice's mean), in the pieces touching the previous mask. (logits, measures) where
        that part passes the contrast rule, is at most ``follow_growth`` (or ``follow_growth_voxels``, whichever is
        more) larger than the narrowest section of the chain it continues (a root narrows towards its apex) and
        covers ``follow_keep`` of the previous mask or holds ``follow_whole`` of the bright region it belongs to;
        None where it does not (the root has ended) or where SAM's mask is mostly the structure's grey."""
        c = self.cfg
        cy, cx, grey, near, ring, around = self._around(z, prev)
        before = prev.mask[cy, cx]
        tooth = self.primary_stats["grey"]
        level = around + c.follow_level * (tooth - around)
        if tooth <= around or (sam_grey is not None and sam_grey >= level):
            return None
        bright = grey >= level
        pieces, n = ndimage.label(near & bright)
        if n == 0:
            return None
        keep = np.zeros(n + 1, bool)
        keep[np.unique(pieces[before])] = True
        keep[0] = False
        part = keep[pieces]
        # The bright region the part belongs to, beyond that distance too. A root's section either overlaps the
        # previous one well or, where a tilted root moves by about its width, is an island in the bone; a small
        # part cut out of a larger bright region (a neighbouring tooth, the cortex of the palate or the sinus floor)
        # is not the structure going on.
        whole, _ = ndimage.label(bright)
        region = np.isin(whole, np.unique(whole[part]))
        area, prev_area = int(part.sum()), int(before.sum())
        narrowest = min(prev_area, prev.narrowest)
        if (area < self.min_area or area < c.min_area_fraction * self.primary_area
                or area > narrowest + max(c.follow_growth * narrowest, c.follow_growth_voxels)
                or (np.count_nonzero(part & before) < c.follow_keep * min(area, prev_area)
                    and area < c.follow_whole * np.count_nonzero(region))):
            return None
        mask = np.zeros(prev.mask.shape, bool)
        mask[cy, cx] = part
        stats = self.measure(z, mask, prev.mask, 1.0)
        if self._ends(stats, jump=False):  # the tests above are the jump rule for a root that moves
            return None
        return np.where(mask, -OFF, OFF).astype(np.float32), stats

    def tip(self, z: int, prev: Section) -> Optional[Tuple[np.ndarray, Dict[str, float]]]:
        """Where the structure would end on slice z on its root's side (``follow_tip``), the root's last section
        there: the pixels within ``follow_slope`` × the slice distance of the previous section at least
        ``follow_level`` of the way from the surroundings' grey to the tooth's (as ``follow``), in any piece there
        (at an apex the last voxels can lie beside the previous section), of at least a voxel and fewer than the
        previous section's (a root narrows to its apex), passing the contrast rule and lying in bone
        (``in_bone``). (logits, measures), or None. The caller ends the structure after it."""
        c = self.cfg
        if not (c.follow_tip and c.stop_rules and c.follow and self.on_root(prev) and not self.p.points_on(z)):
            return None
        cy, cx, grey, near, ring, around = self._around(z, prev)
        tooth = self.primary_stats["grey"]
        if not ring.any() or tooth <= around:
            return None
        part = near & (grey >= around + c.follow_level * (tooth - around))
        if not 0 < np.count_nonzero(part) < np.count_nonzero(prev.mask):
            return None
        mask = np.zeros(prev.mask.shape, bool)
        mask[cy, cx] = part
        stats = self.measure(z, mask, prev.mask, 1.0)
        if self._ends(stats, jump=False) or not self.in_bone(stats):
            return None
        return np.where(mask, -OFF, OFF).astype(np.float32), stats

    def _around(self, z: int, prev: Section) -> Tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray, float]:
        """Slice z around the previous section, for ``follow`` and ``tip``: the region (cy, cx), its grey, the
        pixels within ``follow_px`` of the section (``near``), a ring of ``ring`` pixels around them and the grey of
        the surroundings (the ring's median; without a ring the mean outside ``near``)."""
        near = ndimage.binary_dilation(prev.mask, iterations=self.follow_px)
        ys, xs = np.nonzero(near.any(1))[0], np.nonzero(near.any(0))[0]
        r = self.ring + 1
        h, w = near.shape
        cy, cx = slice(max(0, ys[0] - r), min(h, ys[-1] + r + 1)), slice(max(0, xs[0] - r), min(w, xs[-1] + r + 1))
        grey = self._grey(z, cy, cx)
        near = near[cy, cx]
        ring = ndimage.binary_dilation(near, iterations=self.ring) & ~near
        around = float(np.median(grey[ring])) if ring.any() else float(grey[~near].mean()) if (~near).any() else 0.0
        return cy, cx, grey, near, ring, around

    def _grey(self, z: int, cy: slice, cx: slice) -> np.ndarray:
        """Slice z's windowed grey on the view's region (cy, cx)."""
        y0, x0 = self.view[0], self.view[2]
        grey = self.sam.volume[z, y0 + cy.start:y0 + cy.stop, x0 + cx.start:x0 + cx.stop]
        return normalize(grey, self.sam.window) if self.sam.window is not None else np.asarray(grey, np.float32)

    def _ends(self, stats: Dict[str, float], jump: bool = True) -> str:
        """Why the structure ends on a slice measured as ``stats`` ("" where it goes on)."""
        c, primary = self.cfg, self.primary_stats["contrast"]
        if abs(primary) >= c.min_primary_contrast and np.sign(primary) * stats["contrast"] < c.min_contrast * abs(
                primary):
            return "lost its contrast"
        if jump and stats.get("on_previous", 1.0) < c.min_on_previous:
            return "jumped to another structure"
        return ""
