"""One structure from its prompts: SAM on the prompted slices, then slice by slice through the volume.

Rules (``PropagationConfig`` holds the numbers):

- The *primary* slice is the box's slice (a 3D box: its middle slice), else the first slice with an include point.
  It is decoded with the box (a 3D box: its in-plane rectangle) and the points on it.
- From there, in both directions, each next slice is prompted with the bounding box of the previous slice's mask
  grown by a margin (within a 3D box's rectangle), the points on that slice, and, with ``mask_prompt``, the
  previous slice's low-resolution logits. The mask is cut to that prompt box and keeps only the pieces touching
  the previous mask (grown by one voxel) or an include point.
- Propagation stops when the mask vanishes, when its area falls below ``min_area_mm2`` or below
  ``min_area_fraction`` of the primary slice's, when less than ``inside_fraction`` of SAM's mask lies in the
  3D box's rectangle, and never goes past the 3D box's (or the ``slices``) range. A slice with include points
  beyond a stop starts propagation afresh there (prompted by its points and the 3D box's rectangle, if any).
- Where the structure ends (``stop_rules``: contrast against a ring, a jump off the previous mask) and following a
  root through the bone where SAM's mask leaves it (``follow``, with the gap guard lifted on the root's side, and
  its last section, ``follow_tip``, off by default): ``stop_rules.StopRules``, whose docstring has the rules.
- Cross-slice consistency: every prompted slice is an anchor. Between two consecutive anchors a and b on one side,
  the slices are propagated from a towards b and from b back towards a, and the two logits are blended linearly
  by distance (weight |z − a| / |b − a| for b's), so each slice agrees with the nearer prompt and the result
  changes smoothly between them. The backward chain stops at the first slice where its mask agrees with the
  forward one (IoU >= ``agree_iou``): from there on both prompts say the same, and a click costs decoder passes
  only as far as it changes something. A correcting click on slice c changes c, the slices beyond it, and the
  slices between c and the previous anchor; nothing on the far side of the primary slice.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from .prompts import VoxelPrompt
from .propagation_config import PropagationConfig
from .slice_sam import SliceSAM, View
from .stop_rules import CPD_STOP, OFF, StopRules
from .structure_result import SliceResult, StructureResult

Box = Tuple[float, float, float, float]  # (y0, y1, x0, x1) inclusive voxel coordinates


class Propagator(StopRules):
    """Segments ``prompt`` on ``sam``'s volume (``run``: a ``structure_result.StructureResult``). ``spacing``:
    (x, y, z) mm."""

    def __init__(self, sam: SliceSAM, prompt: VoxelPrompt, spacing: Tuple[float, float, float],
                 cfg: Optional[PropagationConfig] = None) -> None:
        self.sam, self.p, self.cfg = sam, prompt, cfg or PropagationConfig()
        self.spacing = spacing
        self.shape = sam.volume.shape
        self.rect: Optional[Box] = None
        if prompt.box is not None:
            _, _, y0, y1, x0, x1 = prompt.box
            self.rect = (float(y0), float(y1), float(x0), float(x1))
        self.min_area = max(1.0, self.cfg.min_area_mm2 / (spacing[0] * spacing[1]))
        self.ring = max(1, int(round(self.cfg.ring_mm / min(spacing[0], spacing[1]))))
        self.follow_px = max(1, int(round(self.cfg.follow_slope * spacing[2] / min(spacing[0], spacing[1]))))
        self.trace: Dict[int, Dict[str, float]] = {}
        # Every array here is on the view (SAM's logits, masks); prompts and boxes stay in slice coordinates.
        self.view: View = self._view() or sam.full_view()
        self.oy, self.ox = self.view[0], self.view[2]

    def _view(self) -> Optional[View]:
        """The square around the box the encoder sees (None: the whole slice)."""
        if self.rect is None or self.cfg.view_context <= 0:
            return None
        ny, nx = self.shape[1:]
        y0, y1, x0, x1 = self.rect
        side = int(round(max(self.cfg.view_context * max(y1 - y0 + 1, x1 - x0 + 1), self.cfg.min_view)))
        if side >= max(ny, nx):
            return None
        out = []
        for lo, hi, n in ((y0, y1, ny), (x0, x1, nx)):
            s = min(side, n)
            start = int(round((lo + hi + 1) / 2 - s / 2))
            start = min(max(0, start), n - s)
            out += [start, start + s]
        return tuple(out)

    # -- one slice ------------------------------------------------------------------------------------------------

    def _grow(self, mask: np.ndarray) -> Box:
        """The bounding box of ``mask`` (on the view) in slice coordinates, grown by the margin."""
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        y0, y1 = float(ys[0] + self.oy), float(ys[-1] + self.oy)
        x0, x1 = float(xs[0] + self.ox), float(xs[-1] + self.ox)
        my = max(self.cfg.margin_mm / self.spacing[1], self.cfg.margin_fraction * (y1 - y0 + 1))
        mx = max(self.cfg.margin_mm / self.spacing[0], self.cfg.margin_fraction * (x1 - x0 + 1))
        ny, nx = self.shape[1:]
        box = (max(0.0, y0 - my), min(ny - 1.0, y1 + my), max(0.0, x0 - mx), min(nx - 1.0, x1 + mx))
        if self.rect is not None:
            r = self.rect
            box = (max(box[0], r[0]), min(box[1], r[1]), max(box[2], r[2]), min(box[3], r[3]))
            if box[0] > box[1] or box[2] > box[3]:
                box = r
        view = self.view
        box = (max(box[0], view[0]), min(box[1], view[1] - 1), max(box[2], view[2]), min(box[3], view[3] - 1))
        return tuple(float(round(v)) for v in box)

    def _local(self, box: Box) -> Tuple[int, int, int, int]:
        """A slice-coordinate box (inclusive) as index bounds on the view, end exclusive."""
        h, w = self.view[1] - self.view[0], self.view[3] - self.view[2]
        y0, y1, x0, x1 = (int(v) for v in box)
        return (min(h, max(0, y0 - self.oy)), min(h, max(0, y1 + 1 - self.oy)),
                min(w, max(0, x0 - self.ox)), min(w, max(0, x1 + 1 - self.ox)))

    def _cut(self, logits: np.ndarray, box: Optional[Box], previous: Optional[np.ndarray],
             points) -> np.ndarray:
        """Logits with everything outside ``box`` and pieces touching neither ``previous`` nor an include point
        set to OFF."""
        if box is not None:
            out = np.full(logits.shape, OFF, np.float32)
            y0, y1, x0, x1 = self._local(box)
            out[y0:y1, x0:x1] = logits[y0:y1, x0:x1]
        else:
            out = logits.copy()
        mask = out > 0
        if not mask.any() or (previous is None and not any(i for _, _, i in points)):
            return out
        pieces, n = ndimage.label(mask)
        if n <= 1 and previous is None:
            return out
        touch = np.zeros(n + 1, bool)
        if previous is not None:
            touch[np.unique(pieces[ndimage.binary_dilation(previous)])] = True
        for y, x, inc in points:
            yy, xx = int(round(y)) - self.oy, int(round(x)) - self.ox
            if inc and 0 <= yy < pieces.shape[0] and 0 <= xx < pieces.shape[1]:
                touch[pieces[yy, xx]] = True
        touch[0] = False
        out[mask & ~touch[pieces]] = OFF
        return out

    def _inside(self, logits: np.ndarray) -> float:
        """Share of SAM's raw mask inside the 3D box's rectangle (1 without a 3D box)."""
        if self.rect is None or not self.p.box_3d:
            return 1.0
        mask = logits > 0
        total = int(mask.sum())
        if total == 0:
            return 1.0
        y0, y1, x0, x1 = self._local(self.rect)
        return float(mask[y0:y1, x0:x1].sum()) / total

    def anchor(self, z: int) -> Optional[SliceResult]:
        """The primary or a fresh anchor on slice z: its box or the 3D box's rectangle, and its points."""
        points = self.p.points_on(z)
        box = self.rect
        logits, low, iou = self.sam.decode(z, box, points, view=self.view)
        logits = self._cut(logits, box, None, points)
        return SliceResult(logits, low, iou) if (logits > 0).sum() >= self.min_area else None

    def step(self, z: int, prev: SliceResult) -> Tuple[Optional[SliceResult], str]:
        """Slice z prompted from its neighbour's result; (None, why) where propagation stops. Where it stops on a
        root's side, the root's last section there (``StopRules.tip``) and then the stop."""
        if prev.ended:
            return None, prev.ended
        result, why = self._step(z, prev)
        if result is not None or not why or why.endswith("left the box"):
            return result, why
        tip = self.tip(z, prev)
        if tip is None:
            return None, why
        logits, stats = tip
        stopped = self.trace.get(z, {})
        stats.update(tip=1.0, sam_area=stopped.get("sam_area", stopped.get("area", 0.0)))
        self.trace[z] = stats
        result = self._next(logits, prev.low, 1.0, min(stats["area"], prev.narrowest), stats, prev)
        result.ended = f"{why}; the root's last section ({stats['area']:.0f} voxels) kept on slice {z}"
        return result, ""

    def _step(self, z: int, prev: SliceResult) -> Tuple[Optional[SliceResult], str]:
        """``step`` without the root's tip."""
        prompts = self.prompts(z, prev)
        past_prior = ""
        if prompts is None:
            c = self.cfg
            if not (c.stop_rules and ((c.past_prior_in_bone and prev.in_jaw) or c.past_prior_seen
                                      or (c.past_prior_unseen and prev.on_crown))):
                return self._cpd_stop(z, prev, CPD_STOP)
            # Prompted as without a prior; the prior's veto stands unless a rule below overrules it.
            prompts, past_prior = (self._grow(prev.mask), self.p.points_on(z)), CPD_STOP
        # decoded only for the prior's own rules (``past_prior_seen``, ``past_prior_unseen``): where they keep no
        # section, CPD's stop stands as before them, its reason saying why the section decoded there did not go on
        own = bool(past_prior) and not (self.cfg.past_prior_in_bone and prev.in_jaw)
        box, points = prompts
        logits, low, iou = self.sam.decode(z, box, points, prev.low if self.cfg.mask_prompt else None, self.view)
        if self._inside(logits) < self.cfg.inside_fraction:
            return self._cpd_stop(z, prev, _past_cpd("left the box")) if own else (None, "left the box")
        logits = self._cut(logits, box, prev.mask, points)
        area = int((logits > 0).sum())
        small = "vanished" if area == 0 else "too small" if (
            area < self.min_area or area < self.cfg.min_area_fraction * self.primary_area) else ""
        if small and own:
            return self._cpd_stop(z, prev, _past_cpd(small))
        if small:
            return self._follow_vanished(z, prev, small, area) if self.cfg.follow_vanished else (None, small)
        stats = self.measure(z, logits > 0, prev.mask, iou)
        rules = self.cfg.stop_rules and not self.p.points_on(z)
        narrowest = np.inf
        why = self._ends(stats) if rules else ""
        root = self.on_root(prev) or (self.cfg.gap_in_bone and self.in_bone(stats))
        if rules and self.cfg.follow and (stats["contrast"] >= self.cfg.follow_gap or root):
            followed = self.follow(z, prev, None if why else stats["grey"])
            if followed is not None:
                sam = stats
                logits, stats = followed
                stats.update(followed=1.0, sam_area=sam["area"], sam_grey=sam["grey"], sam_contrast=sam["contrast"],
                             sam_on_previous=sam.get("on_previous", 1.0))
                if sam["contrast"] < self.cfg.follow_gap:  # followed only because it is the root's side
                    stats["root_side"] = 1.0
                why, low = "", prev.low
                narrowest = min(stats["area"], prev.narrowest, float(prev.mask.sum()))
        if past_prior:
            stats["past_prior"] = 1.0
            stats["seen"] = self.seen(z, logits > 0)
            against = self.past_prior_verdict(stats, prev)  # "": a rule keeps the section
            if own and (why or against):
                if not self.cfg.follow_past_prior:
                    self.trace.setdefault(z, stats)
                return self._cpd_stop(z, prev, _past_cpd(why, against))
            if not why and against:
                why = _past_cpd("", against)
        self.trace.setdefault(z, stats)  # the forward chain's, not the backward chain's between anchors
        if why:
            return None, why
        return self._next(logits, low, iou, narrowest, stats, prev), ""

    def _next(self, logits: np.ndarray, low: object, iou: float, narrowest: float, stats: Dict[str, float],
              prev: SliceResult) -> SliceResult:
        """The result of a section measured as ``stats`` that goes on from ``prev``, with the rules' chains."""
        on_crown = prev.on_crown and self.on_crown(stats, prev.crown_grey)
        crown = max(prev.crown_grey, stats["grey"]) if on_crown and self.cfg.unseen_brightest else prev.crown_grey
        return SliceResult(logits, low, iou, narrowest, self._dentin(stats, prev.dentin),
                           prev.in_bone and self.in_bone(stats), prev.in_jaw and self.in_jaw(stats), on_crown, crown)

    def _cpd_stop(self, z: int, prev: SliceResult, why: str) -> Tuple[Optional[SliceResult], str]:
        """Where CPD stopped on slice z and no rule keeps a section there: (None, why), or with
        ``follow_past_prior`` the root followed there."""
        return self._follow_vanished(z, prev, why, 0) if self.cfg.follow_past_prior else (None, why)

    def _follow_vanished(self, z: int, prev: SliceResult, why: str, area: int
                         ) -> Tuple[Optional[SliceResult], str]:
        """Where SAM's mask on slice z vanished or is too small, or CPD stopped (``why``; ``area``: SAM's voxels):
        on a root's side, the root followed there as where a stop rule fires, if the followed section lies in
        bone (``root_bone``: a root's apex does, a crown's tip beyond the enamel test's two sections does not);
        else (None, why)."""
        c = self.cfg
        if not (c.stop_rules and c.follow and self.on_root(prev) and not self.p.points_on(z)):
            return None, why
        followed = self.follow(z, prev)
        if followed is None:
            return None, why
        logits, stats = followed
        if 0 < c.root_bone <= 1 and stats["ring_median"] < c.root_bone * self.primary_stats["grey"]:
            return None, why  # not in bone: a crown's partial-volume tip beyond two dentin-dark sections
        stats.update(followed=1.0, sam_area=float(area), root_side=1.0)
        self.trace.setdefault(z, stats)
        narrowest = min(stats["area"], prev.narrowest, float(prev.mask.sum()))
        return self._next(logits, prev.low, 1.0, narrowest, stats, prev), ""

    def seen(self, z: int, mask: np.ndarray) -> float:
        """The share of the section ``mask`` (on the view) of slice z that a prior marks as tooth
        (``PropagationConfig.past_prior_seen``, ``past_prior_unseen``; ``context_prompts.PriorPropagator``); without a
        prior no CPD stop is ever overruled by it: NaN."""
        return float("nan")

    def prompts(self, z: int, prev: SliceResult) -> Optional[Tuple[Box, List[Tuple[float, float, bool]]]]:
        """(box, points) for slice z from its neighbour's result: the previous mask's grown box and z's clicks.
        With a prior, CPD's consensus prompts instead (``context_prompts.PriorPropagator``); None stops there."""
        return self._grow(prev.mask), self.p.points_on(z)

    # -- the structure --------------------------------------------------------------------------------------------

    def primary(self) -> int:
        if self.p.box is not None:
            z0, z1 = self.p.box[0], self.p.box[1]
            return (z0 + z1) // 2
        return next(k for k, _, _, inc in self.p.points if inc)

    def run(self) -> StructureResult:
        lo, hi = self.p.z_range
        start = min(max(self.primary(), lo), hi)
        first = self.anchor(start)
        if first is None:
            return StructureResult(np.zeros((0, 0, 0), bool), (start, self.oy, self.ox), self.shape, [start],
                                   [start], {1: "empty", -1: "empty"})
        self.primary_area = float(first.mask.sum())
        self.primary_stats = self.trace[start] = self.measure(start, first.mask, None, first.iou)
        first.dentin = self._dentin(self.primary_stats, 0)  # a prompted section in bone counts (``root_bone``)
        first.in_bone = first.in_jaw = self.cfg.chain_skips_prompt or self.in_bone(self.primary_stats)
        # the prompted section is the crown whose grey the enamel test measures against: a box's, drawn around it
        # (a click structure's prompted slice is its first clicked one: a root's apex as well as a crown)
        first.on_crown = self.p.box is not None or not self.cfg.unseen_box_only
        first.crown_grey = self.primary_stats["grey"]
        point_slices = sorted({k for k, _, _, _ in self.p.points if lo <= k <= hi and k != start})
        results: Dict[int, SliceResult] = {start: first}
        anchors = [start]
        stopped: Dict[int, str] = {}
        for d in (1, -1):
            side = [k for k in point_slices if (k - start) * d > 0]
            side.sort(key=lambda k: abs(k - start))
            fwd, side_anchors, why = self._walk(start, first, d, (lo, hi), side)
            stopped[d] = why
            anchors += side_anchors
            chain = [start] + side_anchors
            for a, b in zip(chain[:-1], chain[1:]):
                self._blend(a, b, fwd)
            results.update(fwd)
        z0, z1 = min(results), max(results)
        crop = np.zeros((z1 - z0 + 1, *first.logits.shape), bool)
        for z, r in results.items():
            crop[z - z0] = r.mask
        return StructureResult(crop, (z0, self.oy, self.ox), self.shape, sorted(results), sorted(anchors), stopped,
                               dict(sorted(self.trace.items())))

    def _walk(self, start: int, first: SliceResult, d: int, bounds: Tuple[int, int], side: List[int]
              ) -> Tuple[Dict[int, SliceResult], List[int], str]:
        """Propagate from ``start`` in direction d; slices with points are anchors (restarted where needed)."""
        lo, hi = bounds
        out: Dict[int, SliceResult] = {}
        anchors: List[int] = []
        prev, z, why = first, start + d, "reached the end of the volume" if d > 0 else "reached slice 0"
        while lo <= z <= hi:
            result, reason = self.step(z, prev) if prev is not None else (None, "")
            if result is None:
                later = [k for k in side if (k - z) * d >= 0 and any(inc for _, _, inc in self.p.points_on(k))]
                if not later:
                    why = reason or why
                    break
                z = later[0]
                result = self.anchor(z)
                if result is None:
                    why = "include point gave an empty mask"
                    break
            if z in side:
                anchors.append(z)
            out[z] = result
            prev = result
            z += d
        else:
            why = "reached the box" if self.p.box_3d and (lo, hi) == (self.p.box[0], self.p.box[1]) else why
        return out, anchors, why

    def _blend(self, a: int, b: int, fwd: Dict[int, SliceResult]) -> None:
        """Propagate from anchor b back towards a and blend with the forward results between them."""
        if b not in fwd:
            return
        d = 1 if a < b else -1
        prev = fwd[b]
        for z in range(b - d, a, -d):
            back, _ = self.step(z, prev)
            if back is None:
                break
            w = abs(z - a) / abs(b - a)
            if z in fwd:
                agree = _iou(back.mask, fwd[z].mask) >= self.cfg.agree_iou
                logits = (1 - w) * fwd[z].logits + w * back.logits
                fwd[z] = SliceResult(logits, fwd[z].low)
                if agree:  # both prompts give this slice the same mask: the slices towards a stay a's
                    break
            else:
                fwd[z] = back
            prev = back


def _past_cpd(ended: str, against: str = "") -> str:
    """The stop reason where CPD stopped and the section decoded there (for the rules past its stop) did not go on:
    ``ended``, why that section ended the structure (a stop reason of its own), else ``against``, what the rules
    found against it (``StopRules.past_prior_verdict``)."""
    if ended:
        return f"{CPD_STOP}, and the section decoded there {'is too small' if ended == 'too small' else ended}"
    return f"{CPD_STOP}, and no rule keeps the section decoded there: {against}"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union
