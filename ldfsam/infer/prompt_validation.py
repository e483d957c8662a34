"""SPD's local prompt validation: every click and box checked against the saliency map of its slice.

- An include click where the prior says "not tooth" (saliency below the threshold) is moved to the nearest tooth
  pixel when one lies within ``max_move_mm``, else dropped.
- An exclude click where the prior says "tooth" is dropped when it lies on the same tooth (salient component) as an
  include click of its slice: there it contradicts the user's own include. On another tooth it is kept: the prior
  knows "tooth", not which tooth, and an exclude click on a neighbouring tooth is how a clinician cuts a leak off.
- A box on one slice is fitted to the salient component it mostly covers (at least ``box_cover`` of that
  component inside the box, and filling at least ``box_fill`` of the box): tightened to it, or extended by at most
  ``max_growth`` of the box's side onto its confident pixels (``extend_level``) in pieces mostly inside the box, so
  never over a touching tooth joined to it only through the map's uncertain band. A 3D
  box is kept as drawn (it bounds the structure on every slice; one slice's component would cut the others).

The threshold is the head's (``SaliencyConfig.threshold``, 0.5): SPD's maps are strongly bimodal, so it is not tuned
per case. Every decision is reported (:class:`Decision`), for the prompt worker's answer and the Slicer panel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

Box = Tuple[float, float, float, float]  # (y0, y1, x0, x1) inclusive voxel coordinates of the slice
View = Tuple[int, int, int, int]


@dataclass
class ValidationConfig:
    max_move_mm: float = 2.0
    box_cover: float = 0.5
    max_growth: float = 0.5
    # A box is fitted only to a component that fills at least this share of it (inside the box): a box is drawn
    # around a tooth, so a component of a few voxels in it is a prior that does not see this tooth (the demo prior on
    # the real head CT: 1-6 voxels of a 30-70 voxel crown), not the tooth; the box is kept. 0: off.
    box_fill: float = 0.2
    # A box is extended only onto the prior's confident pixels (saliency at least this), in the confident pieces of
    # the component that lie mostly inside the box: extending takes the box beyond what the user drew, and the map's
    # uncertain band (0.1-0.9: 1.9 % of a held-out phantom's pixels, the valley between its two modes) is where two
    # touching teeth merge into one component. On the real head CT (fp32), 23's component reached one voxel past
    # the drawn box towards 22 by two pixels of 0.68 and 0.82, and the box was extended by three voxels (with the
    # margin) over 22's crown. Tightening still uses the whole component. 0 or the head's threshold: extended to the
    # whole component.
    extend_level: float = 0.9


@dataclass
class Decision:
    """What validation did with one prompt. ``point``: its index in the structure's points (None for the box);
    positions are voxel (z, y, x); ``action``: kept, moved, dropped, tightened, extended."""

    point: Optional[int]
    include: bool
    action: str
    reason: str
    position: Tuple[float, float, float]
    moved_to: Optional[Tuple[float, float, float]] = None
    saliency: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _at(prob: np.ndarray, view: View, y: float, x: float) -> Optional[float]:
    """The map's value at slice voxel (y, x), None outside the view."""
    yy, xx = int(round(y)) - view[0], int(round(x)) - view[2]
    if 0 <= yy < prob.shape[0] and 0 <= xx < prob.shape[1]:
        return float(prob[yy, xx])
    return None


def validate_points(z: int, points: Sequence[Tuple[int, float, float, bool]], prob: np.ndarray, view: View,
                    threshold: float, spacing_yx: Tuple[float, float], cfg: ValidationConfig
                    ) -> Tuple[List[Tuple[float, float, bool]], List[Decision]]:
    """Points ``(index, y, x, include)`` of slice z against its map ``prob`` (on ``view``) -> (the points to use,
    (y, x, include); a decision for every point)."""
    salient = prob >= threshold
    pieces, _ = ndimage.label(salient)
    nearest = None
    keep: List[Tuple[float, float, bool]] = []
    out: List[Decision] = []
    excludes: List[Tuple[int, float, float, float]] = []
    for j, y, x, inc in points:
        s = _at(prob, view, y, x)
        where = (float(z), float(y), float(x))
        if s is None:
            keep.append((y, x, inc))
            out.append(Decision(j, inc, "kept", "outside the region the prior was computed on", where))
        elif inc and s < threshold:
            if nearest is None and salient.any():
                nearest = ndimage.distance_transform_edt(~salient, sampling=spacing_yx, return_indices=True)
            moved = False
            if nearest is not None:
                yy, xx = int(round(y)) - view[0], int(round(x)) - view[2]
                dist = float(nearest[0][yy, xx])
                if dist <= cfg.max_move_mm:
                    ny, nx = (float(nearest[1][k][yy, xx] + view[2 * k]) for k in (0, 1))
                    keep.append((ny, nx, True))
                    out.append(Decision(j, True, "moved", f"include click off the tooth by the prior (saliency "
                                        f"{s:.2f}); moved {dist:.1f} mm to the nearest tooth pixel", where,
                                        (float(z), ny, nx), s))
                    moved = True
            if not moved:
                out.append(Decision(j, True, "dropped", f"include click off the tooth by the prior (saliency {s:.2f}),"
                                    f" no tooth pixel within {cfg.max_move_mm:g} mm", where, None, s))
        elif not inc and s >= threshold:
            excludes.append((j, y, x, s))  # decided once the include clicks' teeth are known
            out.append(Decision(j, False, "kept", "", where, None, s))
        else:
            keep.append((y, x, inc))
            out.append(Decision(j, inc, "kept", "agrees with the prior", where, None, s))
    teeth = {_piece(pieces, view, y, x) for y, x, inc in keep if inc} - {0}
    for j, y, x, s in excludes:
        d = next(d for d in out if d.point == j)
        if _piece(pieces, view, y, x) in teeth:
            d.action, d.reason = "dropped", (f"exclude click inside the tooth of the include clicks by the prior "
                                             f"(saliency {s:.2f})")
        else:
            keep.append((y, x, False))
            d.reason = f"on another tooth than the include clicks by the prior (saliency {s:.2f}): kept"
    return keep, out


def _piece(pieces: np.ndarray, view: View, y: float, x: float) -> int:
    """The label of the salient component at slice voxel (y, x), 0 for none or outside the view."""
    yy, xx = int(round(y)) - view[0], int(round(x)) - view[2]
    if 0 <= yy < pieces.shape[0] and 0 <= xx < pieces.shape[1]:
        return int(pieces[yy, xx])
    return 0


def _confident_core(component: np.ndarray, prob: np.ndarray, level: float, inner: Tuple[int, int, int, int],
                    box_cover: float) -> np.ndarray:
    """The pixels of ``component`` a box may be extended onto: its pieces at saliency >= ``level`` that lie mostly
    (``box_cover``) inside the box (``inner``: its rows and columns on the map). A confident piece mostly outside
    is another tooth joined to this one through the map's uncertain band."""
    if level <= 0:
        return component
    pieces, n = ndimage.label(component & (prob >= level))
    if n == 0:
        return pieces > 0
    ly0, ly1, lx0, lx1 = inner
    inside = np.bincount(pieces[ly0:ly1, lx0:lx1].ravel(), minlength=n + 1)
    total = np.bincount(pieces.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if inside[i] >= box_cover * total[i]]
    return np.isin(pieces, keep)


def validate_box(z: int, box: Box, prob: np.ndarray, view: View, threshold: float, cfg: ValidationConfig,
                 margin: Tuple[float, float] = (0.0, 0.0), margin_fraction: float = 0.0) -> Tuple[Box, Decision]:
    """A box on slice z fitted to the salient component it mostly covers (see the module's docstring). ``margin``
    (voxels in y, x; at least ``margin_fraction`` of the component's side): a side of the box within that margin
    outside the component is kept as drawn, a side beyond it is moved in to it, a side cutting into the component
    is moved out to it (by at most ``max_growth``). SAM is prompted with a box around a structure, and a prior's
    component is a conservative view of the tooth: tightened onto it without a margin, the real head CT's crowns
    lost up to four fifths of their mask (a 7-voxel box moved by one voxel a side)."""
    y0, y1, x0, x1 = box
    where = (float(z), (y0 + y1) / 2, (x0 + x1) / 2)
    pieces, n = ndimage.label(prob >= threshold)
    ly0, ly1 = int(max(0, y0 - view[0])), int(min(prob.shape[0], y1 + 1 - view[0]))
    lx0, lx1 = int(max(0, x0 - view[2])), int(min(prob.shape[1], x1 + 1 - view[2]))
    if n == 0 or ly0 >= ly1 or lx0 >= lx1:
        return box, Decision(None, True, "kept", "no tooth in the box by the prior", where)
    inside = np.bincount(pieces[ly0:ly1, lx0:lx1].ravel(), minlength=n + 1)
    total = np.bincount(pieces.ravel(), minlength=n + 1)
    inside[0] = 0
    cover = inside / np.maximum(total, 1)
    candidates = [k for k in range(1, n + 1) if cover[k] >= cfg.box_cover]
    if not candidates:
        return box, Decision(None, True, "kept", "no tooth mostly inside the box by the prior", where)
    if max(inside[k] for k in candidates) < cfg.box_fill * (ly1 - ly0) * (lx1 - lx0):
        return box, Decision(None, True, "kept", "the prior's tooth in the box is too small to be the one drawn "
                             "around", where)
    k = max(candidates, key=lambda c: inside[c])
    component = pieces == k
    ys, xs = np.nonzero(component)
    core = _confident_core(component, prob, cfg.extend_level, (ly0, ly1, lx0, lx1), cfg.box_cover)
    cys, cxs = np.nonzero(core) if core.any() else (ys[:0], xs[:0])
    fit = []
    for (lo, hi), c, cc, m, o in zip(((y0, y1), (x0, x1)), (ys, xs), (cys, cxs), margin, (view[0], view[2])):
        c0, c1 = float(c.min() + o), float(c.max() + o)
        m = max(m, margin_fraction * (c1 - c0 + 1))
        g = cfg.max_growth * (hi - lo + 1)
        # extended only as far as the confident core reaches past the side (with the margin); nothing to extend to
        # where only the component's uncertain rim does
        e0, e1 = (float(cc.min() + o), float(cc.max() + o)) if len(cc) else (np.inf, -np.inf)
        # each side: moved out to the margin line where it cuts the core, in to it where it lies beyond that line
        # outside the component, else kept
        fit += [max(e0 - m, lo - g) if lo > e0 else (c0 - m if lo < c0 - m else lo),
                min(e1 + m, hi + g) if hi < e1 else (c1 + m if hi > c1 + m else hi)]
    fit = tuple(float(round(v)) for v in fit)
    if fit == tuple(float(v) for v in box):
        return box, Decision(None, True, "kept", "fits the tooth of the prior", where)
    grown = fit[0] < y0 or fit[1] > y1 or fit[2] < x0 or fit[3] > x1
    action = "extended" if grown else "tightened"
    return fit, Decision(None, True, action, f"box {action} to the tooth it mostly covers ({cover[k]:.0%} of it "
                         f"inside): y {fit[0]:g}-{fit[1]:g}, x {fit[2]:g}-{fit[3]:g}", where)
