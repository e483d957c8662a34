"""Estimated FDI (ISO 3950) tooth numbers for the teeth found by :func:`ldfsam.infer.postprocess.split_teeth`.

Quadrants are the patient's: 1 upper right, 2 upper left, 3 lower left, 4 lower right; positions 1 (central
incisor) to 8 (third molar). Everything is decided in physical LPS millimetres (+x left, +y posterior, +z
superior), so the storage order of the voxels and the direction matrix never change the answer.

1. Fragments: components under ``fragment_fraction`` of the median component volume are not numbered.
2. Jaws: the tooth centroids' heights above the occlusal plane are split in two clusters (1D, least
   within-cluster sum of squares); the plane is the scanner's axial plane or, for a pitched or rolled head, a
   plane fitted to the centroids (common tilt, one offset per jaw), whichever separates the jaws more clearly. If
   the cluster means are more than ``jaw_gap`` times the median tooth height apart, the upper cluster is the
   upper jaw (within a jaw the centroids differ by much less than a tooth height, between the jaws by most of
   one). A component much taller than a tooth lying across the cut is an upper and a lower tooth in
   contact (a scan in occlusion): it holds its place in both quadrants and is numbered in the jaw holding more of
   its voxels. Otherwise all teeth are one jaw, and the crowns' direction decides which: a crown is bulkier
   than its roots, so a tooth's centroid lies towards its crown; crowns pointing down (median vote) = upper jaw.
3. Midline and sides: a parabola y = a (x - x0)^2 + c (posterior vs left) is fitted to the jaw's centroids in
   the axial plane, in the frame (turned about the superior axis by up to 40°) where it fits best; its vertex x0
   (the anterior-most point of the arch) is the midline. A jaw with too few teeth for a fit borrows the other
   jaw's arch; if there is none its teeth stay unnumbered.
4. Positions: teeth are ordered by arc length along the fitted parabola from the midline. Among all
   order-keeping placements of a quadrant's k teeth on positions 1..8, the one whose arc lengths best match the
   textbook mesiodistal tooth-centre positions (one free scale) wins; skipping a position in front of a present
   tooth costs a penalty, so plain ordinal numbering (missing teeth at the back, as third molars usually are)
   wins unless the spacing clearly shows a gap. More than 8 teeth in a quadrant: the smallest extra ones stay
   unnumbered.

These are estimates: review them before clinical use. Tested on the phantom: all 32 teeth, every single missing
tooth, heads turned by 20° about each axis, one jaw, a scan in occlusion. Known limits: a gap closed by drifting
neighbours, or a retained deciduous or supernumerary tooth, shifts the numbers; a component holding two teeth
gets one number; several missing teeth around the midline can move the estimated midline.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Textbook mean mesiodistal crown widths (mm), central incisor to third molar.
_UPPER_WIDTHS = np.array([8.6, 6.6, 7.6, 7.0, 6.6, 10.2, 9.2, 8.6])
_LOWER_WIDTHS = np.array([5.3, 5.9, 6.9, 7.0, 7.1, 11.2, 10.5, 10.0])


def _centres(widths: np.ndarray) -> np.ndarray:
    """Expected arc position of each tooth centre from the midline (mm)."""
    return np.cumsum(widths) - 0.5 * widths


# Relative squared residual of a good fit (~2% RMS of the arc lengths), below which fits are not told apart.
_FIT_FLOOR = 5e-4
_EXPECTED = {True: _centres(_UPPER_WIDTHS), False: _centres(_LOWER_WIDTHS)}


def _ijk_to_lps(reference) -> np.ndarray:
    """4×4 voxel (i, j, k) -> LPS mm matrix of a SimpleITK image or a Grid."""
    direction = np.asarray(reference.GetDirection() if hasattr(reference, "GetDirection") else reference.direction,
                           dtype=float).reshape(3, 3)
    spacing = reference.GetSpacing() if hasattr(reference, "GetSpacing") else reference.spacing
    origin = reference.GetOrigin() if hasattr(reference, "GetOrigin") else reference.origin
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = origin
    return m


def _measure(labels: np.ndarray, matrix: np.ndarray, n: int):
    """Per component 1..n: voxel count, LPS centroid, (min, max) of the superior coordinate, and the superior
    coordinates of its voxels."""
    counts = np.zeros(n + 1, dtype=np.int64)
    centroid = np.zeros((n + 1, 3))
    s_range = np.zeros((n + 1, 2))
    s_values: Dict[int, np.ndarray] = {}
    from scipy import ndimage  # here: only --split-teeth needs it, and it costs a volume's segmentation ~0.7 s

    for c, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is None:
            continue
        zyx = np.nonzero(labels[box] == c)
        ijk = np.stack([zyx[2] + box[2].start, zyx[1] + box[1].start, zyx[0] + box[0].start]).astype(float)
        lps = matrix[:3, :3] @ ijk + matrix[:3, 3:4]
        counts[c] = ijk.shape[1]
        centroid[c] = lps.mean(axis=1)
        s_range[c] = lps[2].min(), lps[2].max()
        s_values[c] = lps[2].astype(np.float32)
    return counts, centroid, s_range, s_values


def _two_clusters(h: np.ndarray) -> Tuple[float, float]:
    """1D two-cluster split of ``h``: (cut, distance between the cluster means), the cut between sorted
    neighbours with the least within-cluster sum of squares."""
    v = np.sort(h)
    best, cut, separation = None, 0.0, 0.0
    for k in range(1, len(v)):
        lo, hi = v[:k], v[k:]
        sse = float(np.sum((lo - lo.mean()) ** 2) + np.sum((hi - hi.mean()) ** 2))
        if best is None or sse < best:
            best, cut, separation = sse, 0.5 * (v[k - 1] + v[k]), float(hi.mean() - lo.mean())
    return cut, separation


def _split_jaws(teeth: List[int], centroid: np.ndarray, s_range: np.ndarray,
                jaw_gap: float) -> Tuple[Dict[int, bool], Optional[float], np.ndarray]:
    """Component -> True for the upper jaw (see the module docstring, step 2); the cut on the height above the
    occlusal plane (None for one jaw); the plane's tilt (dS/dx, dS/dy): height = S - tilt . (x, y)."""
    s = centroid[teeth, 2]
    xy = centroid[teeth, :2]
    height = float(np.median([s_range[c, 1] - s_range[c, 0] for c in teeth]))
    # Candidate occlusal-plane tilts: none (the scanner's axial plane) and a plane through all centroids (a pitched
    # or rolled head). Each split is refined with a common tilt and one offset per jaw; the clearest split wins.
    tilts = [np.zeros(2)]
    if len(teeth) >= 4 and np.linalg.matrix_rank(np.column_stack([xy, np.ones(len(teeth))])) == 3:
        tilts.append(np.linalg.lstsq(np.column_stack([xy, np.ones(len(teeth))]), s, rcond=None)[0][:2])
    best = None
    for tilt in tilts:
        cut, separation = _two_clusters(s - xy @ tilt)
        for _ in range(2):
            if separation <= jaw_gap * max(height, 1e-6) or len(teeth) < 4:
                break
            upper = (s - xy @ tilt) > cut
            design = np.column_stack([xy, upper, ~upper]).astype(float)
            if np.linalg.matrix_rank(design) < 4:
                break
            tilt = np.linalg.lstsq(design, s, rcond=None)[0][:2]
            cut, separation = _two_clusters(s - xy @ tilt)
        if best is None or separation > best[1]:
            best = (cut, separation, tilt)
    cut, separation, tilt = best
    if separation > jaw_gap * max(height, 1e-6):
        return {c: bool(h > cut) for c, h in zip(teeth, s - xy @ tilt)}, cut, tilt
    # One jaw: where the crowns point. Crown towards inferior (centroid below the middle) = upper jaw.
    lean = np.median([centroid[c, 2] - 0.5 * (s_range[c, 0] + s_range[c, 1]) for c in teeth])
    return {c: bool(lean < 0) for c in teeth}, None, np.zeros(2)


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
    """Axial coordinates in a frame turned by ``angle`` (radians) about the superior axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.column_stack([c * xy[:, 0] + s * xy[:, 1], -s * xy[:, 0] + c * xy[:, 1]])


def _arch_yaw(xy: np.ndarray) -> float:
    """The turn of the head about the superior axis (radians): the frame in which a parabola fits the arch best.
    Needs 6 teeth (fewer fit any frame); a turn must fit clearly better than none."""
    if len(xy) < 6:
        return 0.0
    best, best_res = 0.0, None
    for angle in np.radians(np.arange(-40.0, 40.5, 1.0)):
        r = _rotate(xy, angle)
        coef, res, *_ = np.polyfit(r[:, 0], r[:, 1], 2, full=True)
        res = float(res[0]) if len(res) else 0.0
        if coef[0] > 0 and (best_res is None or res < best_res):
            best, best_res = float(angle), res
    r = _rotate(xy, 0.0)
    coef, res0, *_ = np.polyfit(r[:, 0], r[:, 1], 2, full=True)
    res0 = float(res0[0]) if len(res0) else 0.0
    return best if best_res is not None and (coef[0] <= 0 or best_res < 0.8 * res0) else 0.0


def _fit_arch(xy: np.ndarray) -> Optional[np.ndarray]:
    """Coefficients (a, b, c) of y = a x^2 + b x + c through the axial centroids, or None if it is no arch
    (fewer than 3 teeth, or not opening posteriorly, i.e. towards +y)."""
    if len(xy) < 3 or np.ptp(xy[:, 0]) < 1e-6:
        return None
    coef = np.polyfit(xy[:, 0], xy[:, 1], 2)
    if not np.all(np.isfinite(coef)) or coef[0] <= 0:
        return None
    x0 = -coef[1] / (2 * coef[0])
    lo, hi = xy[:, 0].min(), xy[:, 0].max()
    if not lo - 0.5 * (hi - lo) <= x0 <= hi + 0.5 * (hi - lo):
        return None
    return coef


def _arc_positions(xy: np.ndarray, coef: np.ndarray, x0: float) -> np.ndarray:
    """Signed arc length (mm, + = patient left) from the midline to each centroid's nearest point on the arch."""
    span = float(np.max(np.abs(xy[:, 0] - x0))) * 1.5 + 1.0
    x = np.linspace(x0 - span, x0 + span, 4001)
    y = np.polyval(coef, x)
    seg = np.hypot(np.diff(x), np.diff(y))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    arc -= np.interp(x0, x, arc)
    out = np.empty(len(xy))
    for i, (px, py) in enumerate(xy):
        out[i] = arc[int(np.argmin((x - px) ** 2 + (y - py) ** 2))]
    return out


def _place(arc: np.ndarray, upper: bool, skip_penalty: float) -> List[int]:
    """Positions 1..8 for teeth at increasing arc lengths ``arc`` (k <= 8), keeping their order."""
    k = len(arc)
    expected = _EXPECTED[upper]
    best, best_cost = list(range(1, k + 1)), None
    for combo in itertools.combinations(range(8), k):
        e = expected[list(combo)]
        scale = float(arc @ e / (e @ e))
        cost = float(np.sum((arc - scale * e) ** 2) / max(float(arc @ arc), 1e-12))
        # Positions skipped before the last present tooth are gaps inside the arch, rarer than missing molars:
        # such a placement must fit clearly better (the floor keeps near-perfect fits from deciding on noise).
        cost = (cost + _FIT_FLOOR) * (1.0 + skip_penalty * (combo[-1] + 1 - k))
        if best_cost is None or cost < best_cost - 1e-12:
            best, best_cost = [p + 1 for p in combo], cost
    return best


def assign_fdi(labels: np.ndarray, reference, fragment_fraction: float = 0.2, jaw_gap: float = 0.4,
               skip_penalty: float = 0.3) -> Dict[int, Optional[int]]:
    """Estimated FDI number (11-48) or None for each component 1..n of ``labels`` (z×y×x ints, 0 = background).

    ``reference``: the grid of ``labels`` (a SimpleITK image or a Grid: origin, spacing, direction). Numbers are
    unique; None marks fragments and teeth that cannot be placed.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    result: Dict[int, Optional[int]] = {c: None for c in range(1, n + 1)}
    if n == 0:
        return result
    counts, centroid, s_range, s_values = _measure(labels, _ijk_to_lps(reference), n)
    present = [c for c in range(1, n + 1) if counts[c] > 0]
    if not present:
        return result
    median = float(np.median(counts[present]))
    teeth = [c for c in present if counts[c] >= fragment_fraction * median]
    if len(teeth) < 2:
        return result  # one tooth: no arch, no midline
    upper_of, cut, tilt = _split_jaws(teeth, centroid, s_range, jaw_gap)
    jaws = {u: [c for c in teeth if upper_of[c] == u] for u in (True, False)}
    if cut is not None:
        # A component much taller than a tooth with much of it on both sides of the cut is an upper and a lower
        # tooth in contact (a scan in occlusion): it takes its place in both quadrants, so neither's neighbours
        # shift, and is numbered in the jaw holding more of it.
        height = float(np.median([s_range[c, 1] - s_range[c, 0] for c in teeth]))
        for c in teeth:
            above = float(np.mean(s_values[c] - centroid[c, :2] @ tilt > cut))
            if s_range[c, 1] - s_range[c, 0] > 1.5 * height and 0.2 <= above <= 0.8:
                upper_of[c] = above >= 0.5
                for members in jaws.values():
                    if c not in members:
                        members.append(c)
    # Axial coordinates in the head's own frame (a head turned about the superior axis is turned back).
    xy = _rotate(centroid[:, :2], _arch_yaw(centroid[max(jaws.values(), key=len), :2]))
    fits = {u: _fit_arch(xy[jaws[u]]) for u in jaws if jaws[u]}
    for upper, members in jaws.items():
        if not members:
            continue
        coef = fits.get(upper)
        other = fits.get(not upper)
        if coef is None and other is None:
            continue
        if coef is None:
            # Borrow the other jaw's arch shape and midline, shifted to this jaw's front-back position.
            coef = other.copy()
            coef[2] += float(np.mean(xy[members, 1]) - np.mean(np.polyval(other, xy[members, 0])))
        x0 = -coef[1] / (2 * coef[0])
        arc = _arc_positions(xy[members], coef, x0)
        for left in (True, False):
            side = [(abs(a), c) for a, c in zip(arc, members) if (a > 0) == left]
            # Arc length then component number: a deterministic order even for equal distances.
            side.sort()
            if len(side) > 8:
                keep = sorted(sorted(side, key=lambda t: (-counts[t[1]], t[1]))[:8])
                side = keep
            if not side:
                continue
            positions = _place(np.array([a for a, _ in side]), upper, skip_penalty)
            quadrant = (2 if left else 1) if upper else (3 if left else 4)
            for (_, c), p in zip(side, positions):
                if upper_of[c] == upper:
                    result[c] = quadrant * 10 + p
    return result


def fdi_segment_names(labels: np.ndarray, reference, numbers: Optional[Dict[int, Optional[int]]] = None) -> List[str]:
    """Segment names for components 1..n: "Tooth 11" (estimated FDI number) or "Unnumbered tooth k"."""
    if numbers is None:
        numbers = assign_fdi(labels, reference)
    return segment_names(numbers, int(np.asarray(labels).max(initial=0)))


def segment_names(numbers: Dict[int, Optional[int]], n: Optional[int] = None) -> List[str]:
    """Names for components 1..n from an :func:`assign_fdi` mapping."""
    n = max(numbers, default=0) if n is None else n
    names, k = [], 0
    for c in range(1, n + 1):
        fdi = numbers.get(c)
        if fdi is None:
            k += 1
            names.append(f"Unnumbered tooth {k}")
        else:
            names.append(f"Tooth {fdi}")
    return names


__all__: Sequence[str] = ("assign_fdi", "fdi_segment_names", "segment_names")
