"""SPD's contextual prompt distillation (CPD): prompts of neighbouring slices carried onto the next, where the prior
agrees on both.

Every slice a structure was decoded on leaves its prompts: a few points inside its mask along its long axis (the
innermost point and the two ends of the mask's core, a centreline), plus the user's validated clicks there. For
slice z, the prompts of the ``slices`` nearest decoded slices within that distance are carried onto z at the same
(y, x), and a carried point is kept when the saliency map says "tooth" both on its own slice and on z (dual
validation). The kept points and the validated clicks of z form the consensus set; it prompts SAM's decoder
with a box around the salient region that holds them (inside the previous mask's grown box, with that box's
margin), and with z's clicks and the carried points (for a structure prompted with a box, only up to
``ContextConfig.points_with_box`` of them). Where no carried point survives and z has no include click of its
own, the prior and the carried prompts stop agreeing: the structure ends there, unless the section lies in bone
(``PropagationConfig.past_prior_in_bone``) or the prior sees most of the section there (``past_prior_seen``: a crown's
cusp beside the carried centreline points), see ``stop_rules``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .prompt_validation import Decision, ValidationConfig, validate_box, validate_points
from .prompts import VoxelPrompt
from .propagate import PropagationConfig, Propagator
from .saliency_prior import SaliencyMaps
from .slice_sam import SliceSAM
from .structure_result import SliceResult, StructureResult

Box = Tuple[float, float, float, float]
View = Tuple[int, int, int, int]
Point = Tuple[float, float]


@dataclass
class ContextConfig:
    slices: int = 2  # SPD's context: a few slices (its Fig. 8: more does not hurt, fewer loses the gain)
    points_per_slice: int = 3
    max_points: int = 4  # consensus points given to the decoder (LiteMedSAM was trained mostly with boxes)
    # ... for a structure prompted with a box, at most this many carried points (its slices' own clicks always): the
    # carried points decide where it goes on (dual validation) and which salient region the box is fitted to, but
    # next to the box a point shrank LiteMedSAM's mask on the real head CT to a half or less (tooth 22: 16 -> 2
    # voxels) and ended roots 1-4 slices early. Prompted with clicks alone, the carried points keep the decoder on
    # the tooth (held-out phantom, noisy clicks on tooth 36: 13-20 with them, 13-26 into the other row without).
    points_with_box: int = 0
    # CPD only where the prior sees the structure: at least this share of the prompted slice's mask salient. A prior
    # that does not (the demo prior on the real head CT) cannot tell where the tooth goes on: the slices beyond are
    # prompted as without a prior (the previous mask's box and the stop rules), and validation's decisions stand.
    # 0 (default): CPD always. Measured at 0.5: on the real head CT four teeth with the demo prior reach what they
    # reach without one, but on held-out phantoms at 0.5 mm it let a noisy-click tooth run two more slices into the
    # touching row, so it is not the default.
    min_seen: float = 0.0
    # For a structure prompted with a box, the consensus box is fitted to the salient region only where that region
    # fills at least this share of the previous mask's grown box (as ``ValidationConfig.box_fill`` for a drawn box):
    # a few salient voxels of a tooth (the demo prior on the real head CT) would shrink the mask slice by slice
    # (tooth 25: root end 12 instead of 9). With clicks alone always fitted (measured: held-out phantoms' noisy
    # clicks lost 0.017 Dice with the rule). 0: always fitted.
    box_fill: float = 0.2
    # For a structure prompted with clicks alone, the consensus box's margin around the salient region: this many
    # voxels (at least ``PropagationConfig.margin_fraction`` of its side). With a box, propagation's margin
    # (``margin_mm``: a conservative map, as the demo prior's on the real head CT, must not shrink the tooth slice by
    # slice). With clicks the prior holds the tooth (the clicks are on it), and the wider margin let the decoder
    # take in more than the tooth: noisy clicks on held-out phantoms lost 0.017 Dice with 2 mm (4 voxels of 0.5 mm),
    # every slice range unchanged. 0 or less: propagation's margin as for a box.
    click_margin: float = 1.0


def centreline(mask: np.ndarray, n: int = 3) -> List[Point]:
    """Up to n points inside ``mask`` (view coordinates): the innermost one, then the two ends of the core (the
    pixels at least half as deep as the innermost) along its principal axis."""
    if not mask.any():
        return []
    depth = ndimage.distance_transform_edt(mask)
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    points = [(float(cy), float(cx))]
    core = np.argwhere(depth >= 0.5 * depth.max()).astype(float)
    if n > 1 and len(core) > 2:
        centred = core - core.mean(0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        t = centred @ axis
        for k in (int(np.argmin(t)), int(np.argmax(t)))[: n - 1]:
            p = (float(core[k][0]), float(core[k][1]))
            if p != points[0]:
                points.append(p)
    return points


class ContextPrompts:
    """CPD for one structure on one view: :meth:`remember` each decoded slice, :meth:`prompts` for the next."""

    def __init__(self, maps: SaliencyMaps, view: View, cfg: Optional[ContextConfig] = None,
                 margin: Tuple[float, float] = (1.0, 1.0), margin_fraction: float = 0.15) -> None:
        self.maps, self.view, self.cfg = maps, view, cfg or ContextConfig()
        # The consensus box's margin around the salient region: voxels (y, x), at least this share of its side.
        self.margin, self.margin_fraction = margin, margin_fraction
        self.history: Dict[int, List[Point]] = {}  # slice -> its prompts (slice coordinates)

    def remember(self, z: int, mask: np.ndarray, clicks: Sequence[Tuple[float, float, bool]] = ()) -> None:
        """Slice z's prompts: its mask's centreline (mask on the view) and its include clicks."""
        oy, ox = self.view[0], self.view[2]
        own = [(y + oy, x + ox) for y, x in centreline(mask, self.cfg.points_per_slice)]
        self.history[z] = [(y, x) for y, x, inc in clicks if inc] + own

    def _salient(self, z: int, y: float, x: float) -> bool:
        prob = self.maps.map(z, self.view)
        yy, xx = int(round(y)) - self.view[0], int(round(x)) - self.view[2]
        return 0 <= yy < prob.shape[0] and 0 <= xx < prob.shape[1] and prob[yy, xx] >= self.maps.threshold

    def carried(self, z: int) -> Tuple[List[Point], int]:
        """(points of the context slices that pass dual validation on z, how many were carried)."""
        near = sorted((k for k in self.history if k != z and abs(k - z) <= self.cfg.slices), key=lambda k: abs(k - z))
        kept: List[Point] = []
        total = 0
        for k in near:
            for y, x in self.history[k]:
                total += 1
                if self._salient(k, y, x) and self._salient(z, y, x):
                    if all(abs(y - a) > 1 or abs(x - b) > 1 for a, b in kept):
                        kept.append((y, x))
        return kept, total

    def prompts(self, z: int, grown: Box, clicks: Sequence[Tuple[float, float, bool]], box_prompt: bool = False
                ) -> Optional[Tuple[Box, List[Tuple[float, float, bool]]]]:
        """(box, points) for slice z, or None where the prior and the carried prompts stop agreeing. ``grown``:
        the previous mask's grown box (the consensus box stays inside it); ``clicks``: z's validated clicks."""
        kept, _ = self.carried(z)
        includes = [(y, x) for y, x, inc in clicks if inc]
        if not kept and not includes:
            return None
        consensus = list(clicks) + [(y, x, True) for y, x in kept]
        limit = self.cfg.points_with_box if box_prompt else self.cfg.max_points
        consensus = consensus[: max(limit, len(clicks))]
        salient = self.maps.salient(z, self.view)
        pieces, _ = ndimage.label(salient)
        oy, ox = self.view[0], self.view[2]
        ids = {int(pieces[int(round(y)) - oy, int(round(x)) - ox]) for y, x in kept}
        region = np.isin(pieces, [i for i in ids if i])
        box = grown
        area = (grown[1] - grown[0] + 1) * (grown[3] - grown[2] + 1)
        fill = self.cfg.box_fill if box_prompt else 0.0
        if region.any() and np.count_nonzero(region) >= fill * area:
            ys, xs = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
            # The margin the previous mask's box has: a conservative map must not shrink the tooth slice by slice.
            my = max(self.margin[0], self.margin_fraction * (ys[-1] - ys[0] + 1))
            mx = max(self.margin[1], self.margin_fraction * (xs[-1] - xs[0] + 1))
            fit = (max(grown[0], round(ys[0] + oy - my)), min(grown[1], round(ys[-1] + oy + my)),
                   max(grown[2], round(xs[0] + ox - mx)), min(grown[3], round(xs[-1] + ox + mx)))
            if fit[0] <= fit[1] and fit[2] <= fit[3]:
                box = tuple(float(v) for v in fit)
        return box, consensus


class PriorPropagator(Propagator):
    """Propagation with SPD's prior: the prompts validated against the saliency maps first
    (``prompt_validation``), then every next slice prompted by CPD's consensus set instead of the previous mask's
    box alone, and stopped where the prior and the carried prompts stop agreeing."""

    def __init__(self, sam: SliceSAM, prompt: VoxelPrompt, spacing: Tuple[float, float, float],
                 cfg: Optional[PropagationConfig] = None, maps: Optional[SaliencyMaps] = None,
                 validation: Optional[ValidationConfig] = None, context: Optional[ContextConfig] = None,
                 cpd: bool = True) -> None:
        super().__init__(sam, prompt, spacing, cfg)
        if maps is None:
            raise ValueError("PriorPropagator needs the prior's saliency maps")
        self.maps = maps
        self.decisions: List[Decision] = []
        self._validate(validation or ValidationConfig())
        # ``cpd`` False: validation alone, each next slice prompted by the previous mask's box as without a prior.
        c = self.cfg  # the margin of propagation's boxes (``PropagationConfig.margin_mm``, ``margin_fraction``)
        margin = (max(1.0, c.margin_mm / spacing[1]), max(1.0, c.margin_mm / spacing[0]))
        context = context or ContextConfig()
        if prompt.box is None and context.click_margin > 0:
            margin = (context.click_margin, context.click_margin)
        self.context = ContextPrompts(maps, self.view, context, margin, c.margin_fraction) if cpd else None

    def _validate(self, cfg: ValidationConfig) -> None:
        """Replace the prompt's clicks (and a box on one slice) by their validated versions."""
        p, t = self.p, self.maps.threshold
        spacing_yx = (self.spacing[1], self.spacing[0])
        points: List[Tuple[int, float, float, bool]] = []
        for z in sorted({k for k, _, _, _ in p.points}):
            mine = [(j, y, x, inc) for j, (k, y, x, inc) in enumerate(p.points) if k == z]
            keep, decisions = validate_points(z, mine, self.maps.map(z, self.view), self.view, t, spacing_yx, cfg)
            points += [(z, y, x, inc) for y, x, inc in keep]
            self.decisions += decisions
        box = p.box
        if p.box is not None and not p.box_3d and self.rect is not None:
            z = p.box[0]
            c = self.cfg  # the margin propagation gives a mask's box (``PropagationConfig.margin_mm``)
            margin = (c.margin_mm / self.spacing[1], c.margin_mm / self.spacing[0])
            self.rect, decision = validate_box(z, self.rect, self.maps.map(z, self.view), self.view, t, cfg, margin,
                                               c.margin_fraction)
            self.decisions.append(decision)
            box = (z, z, *(int(v) for v in self.rect))
        self.p = replace(p, box=box, points=points)

    def prompts(self, z: int, prev: SliceResult):
        grown = self._grow(prev.mask)
        clicks = self.p.points_on(z)
        # on a root's side reached without leaving bone (``SliceResult.in_bone``; not another tooth's root reached
        # across the gap between the rows), prompted as without a prior, whose stop rules then end the root
        c = self.cfg
        if self.context is None or (c.image_on_root and c.stop_rules and prev.in_bone and self.on_root(prev)):
            return grown, clicks
        return self.context.prompts(z, grown, clicks, self.p.box is not None)

    def seen(self, z: int, mask: np.ndarray) -> float:
        """The share of ``mask`` (slice z's section, on the view) salient on z's map."""
        if not mask.any():
            return 0.0
        return float(np.mean(self.maps.map(z, self.view)[mask] >= self.maps.threshold))

    def anchor(self, z: int) -> Optional[SliceResult]:
        result = super().anchor(z)
        if result is not None and self.context is not None and not self.context.history:
            seen = float(np.mean(self.maps.map(z, self.view)[result.mask] >= self.maps.threshold))
            if seen < self.context.cfg.min_seen:  # the prompted slice: the prior does not see this structure
                self.context = None
                ys, xs = np.nonzero(result.mask)
                where = (float(z), float(ys.mean() + self.oy), float(xs.mean() + self.ox))
                self.decisions.append(Decision(None, True, "kept", f"the prior sees {seen:.0%} of the prompted "
                                               "slice's structure: slices beyond it prompted without CPD", where))
        if result is not None and self.context is not None:
            self.context.remember(z, result.mask, self.p.points_on(z))
        return result

    def step(self, z: int, prev: SliceResult, *args, **kwargs) -> Tuple[Optional[SliceResult], str]:
        result, why = super().step(z, prev, *args, **kwargs)
        if result is not None and self.context is not None:
            self.context.remember(z, result.mask, self.p.points_on(z))
        return result, why

    def run(self) -> StructureResult:
        if self.p.box is None and not any(inc for _, _, _, inc in self.p.points):
            z = self.decisions[0].position[0] if self.decisions else 0
            why = "every include click was contradicted by the prior"
            return StructureResult(np.zeros((0, 0, 0), bool), (int(z), self.oy, self.ox), self.shape, [], [],
                                   {1: why, -1: why}, validation=[d.as_dict() for d in self.decisions])
        result = super().run()
        result.validation = [d.as_dict() for d in self.decisions]
        return result
