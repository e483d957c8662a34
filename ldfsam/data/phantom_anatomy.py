"""Bones that are not teeth, for the phantom: the structures a model trained on jaws alone mistakes for teeth.

A real head CT or large-field CBCT around the teeth also shows the cervical spine behind the pharynx, the
mandibular rami beside it, the hyoid below the mandible, the skull base above the maxilla, and jaws with a thick,
bright cortex. :class:`Anatomy` switches each on; :func:`draw_anatomy` paints them into a phantom volume before
the teeth are drawn. They are labelled background: the label map is not touched.

Layout, in index space as the phantom's (x patient left, y posterior, z superior), in fractions of the axial
field of view ``n = min(nx, ny)``: the airway (pharynx) sits behind the tongue at y ~ 0.66 n, the vertebral
body at y ~ 0.76 n with its arch and spinous process behind it, the rami beside the molars at x ~ +-0.29 n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

# Grey values as in phantom.py (roughly HU).
AIR, SOFT, DISC = -1000.0, 40.0, 110.0


@dataclass
class Anatomy:
    """Non-tooth structures of a phantom (all labelled background).

    cortex: thickness of the jaws' cortical shell (in the phantom's arch units, 1.2 = the plain phantom's);
    cortical_grey: grey value of every cortex (the plain phantom's is 1250; real cortex reaches the dentine's,
    1700, which is what makes it a distractor); trabecular_grey: grey value inside the bones.
    """

    spine: bool = True
    airway: bool = True
    ramus: bool = True
    hyoid: bool = True
    skull_base: bool = True
    cortex: float = 2.5
    cortical_grey: float = 1600.0
    trabecular_grey: float = 650.0


@dataclass(frozen=True)
class Frame:
    """Where the phantom put its jaws: the axial size, and the slice ranges (z) of each level."""

    nx: int
    ny: int
    nz: int
    mand_bottom: int  # first slice of the mandible body
    max_top: int  # one past the last slice of the maxilla/palate
    z_occ: float  # the occlusal plane (slice)
    half_span: float  # half the tooth rows' height (voxels), the vertical unit


Layer = Tuple[float, np.ndarray]  # (grey value, alpha (ny, nx) in [0, 1])


def _alpha(sd: np.ndarray) -> np.ndarray:
    """Partial-volume coverage from a signed distance (voxels, positive inside): a one-voxel soft edge."""
    return np.clip(sd + 0.5, 0.0, 1.0).astype(np.float32)


def _ellipse_sd(xx: np.ndarray, yy: np.ndarray, c: Tuple[float, float], r: Tuple[float, float]) -> np.ndarray:
    rho = np.sqrt(((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2)
    return (1.0 - rho) * min(r)


def _capsule_sd(xx: np.ndarray, yy: np.ndarray, p: Tuple[float, float], q: Tuple[float, float],
                half_width: float) -> np.ndarray:
    px, py = xx - p[0], yy - p[1]
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return half_width - np.hypot(px - t * dx, py - t * dy)


def _bone(sd: np.ndarray, cortex: float, anat: Anatomy) -> List[Layer]:
    """A bone of outline ``sd``: cortical shell ``cortex`` voxels thick over a trabecular core."""
    return [(anat.cortical_grey, _alpha(sd)), (anat.trabecular_grey, _alpha(sd - cortex))]


def _vertebra(xx, yy, n: float, cx: float, anat: Anatomy, cortex: float) -> List[Layer]:
    yb = 0.76 * n
    n = 0.75 * n  # a vertebral body is about a sixth of the mandible's width
    body = _ellipse_sd(xx, yy, (cx, yb), (0.075 * n, 0.055 * n))
    ring_c = (cx, yb + 0.095 * n)
    ring = np.minimum(_ellipse_sd(xx, yy, ring_c, (0.07 * n, 0.06 * n)),
                      -_ellipse_sd(xx, yy, ring_c, (0.042 * n, 0.036 * n)))
    spinous = _capsule_sd(xx, yy, (cx, ring_c[1] + 0.05 * n), (cx, ring_c[1] + 0.12 * n), 0.014 * n)
    transverse = np.maximum(_capsule_sd(xx, yy, (cx - 0.06 * n, yb + 0.04 * n), (cx - 0.13 * n, yb + 0.06 * n),
                                        0.016 * n),
                            _capsule_sd(xx, yy, (cx + 0.06 * n, yb + 0.04 * n), (cx + 0.13 * n, yb + 0.06 * n),
                                        0.016 * n))
    canal = _ellipse_sd(xx, yy, ring_c, (0.042 * n, 0.036 * n))
    arch = np.maximum(np.maximum(ring, spinous), transverse)
    return _bone(body, cortex, anat) + [(anat.cortical_grey, _alpha(arch) * (1.0 - _alpha(canal)))]


def _disc(xx, yy, n: float, cx: float) -> List[Layer]:
    return [(DISC, _alpha(_ellipse_sd(xx, yy, (cx, 0.76 * n), (0.056 * n, 0.041 * n))))]


def _arc_sd(xx, yy, c: Tuple[float, float], a: float, b: float, half_width: float, theta_max: float) -> np.ndarray:
    """A thick elliptical arc (a U opening backwards, like the arches) as a signed distance."""
    theta = np.linspace(-theta_max, theta_max, 200)
    px, py = c[0] + a * np.sin(theta), c[1] - b * np.cos(theta)
    best = np.full(xx.shape, np.inf, np.float32)
    for x0, y0 in zip(px[::4], py[::4]):
        np.minimum(best, np.hypot(xx - x0, yy - y0), out=best)
    return half_width - best


def draw_anatomy(vol: np.ndarray, head: np.ndarray, frame: Frame, anat: Anatomy, rng: np.random.Generator) -> None:
    """Paint the enabled structures into ``vol`` (z, y, x) in place, inside the ``head`` mask (y, x)."""
    nz, ny, nx = vol.shape
    n = float(min(nx, ny))
    cx = (nx - 1) / 2.0
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cortex = max(1.0, 0.8 * anat.cortex * n / 100.0)
    per_slice: List[List[Layer]] = [[] for _ in range(nz)]
    bottom, top = frame.mand_bottom, frame.max_top

    if anat.airway:
        # The pharynx narrows to a slit at the level of the teeth, widest below them.
        wide = [(AIR, _alpha(_ellipse_sd(xx, yy, (cx, 0.66 * n), (0.07 * n, 0.028 * n))))]
        slit = [(AIR, _alpha(_ellipse_sd(xx, yy, (cx, 0.665 * n), (0.05 * n, 0.012 * n))))]
        for z in range(nz):
            per_slice[z] += slit if frame.z_occ - 0.3 * frame.half_span <= z < top else wide
    if anat.spine:
        vertebra = _vertebra(xx, yy, n, cx, anat, cortex)
        disc = _disc(xx, yy, n, cx)
        period = max(4.0, 0.75 * frame.half_span)
        phase = rng.uniform(0.0, period)
        for z in range(min(nz, top)):
            in_disc = ((top - z + phase) % period) < 0.18 * period
            per_slice[z] += disc if in_disc else vertebra
    if anat.ramus:
        tilt = math.radians(rng.uniform(60.0, 75.0))
        layers: List[Layer] = []
        for side in (-1.0, 1.0):
            c = (cx + side * 0.29 * n, 0.70 * n)
            d = (side * math.cos(tilt) * 0.075 * n, math.sin(tilt) * 0.075 * n)
            sd = _capsule_sd(xx, yy, (c[0] - d[0], c[1] - d[1]), (c[0] + d[0], c[1] + d[1]), 0.024 * n)
            layers += _bone(sd, cortex, anat)
        for z in range(max(0, bottom), min(nz, top + int(0.3 * frame.half_span) + 1)):
            per_slice[z] += layers
    if anat.hyoid and bottom >= 2:
        sd = _arc_sd(xx, yy, (cx, 0.67 * n), 0.11 * n, 0.09 * n, 0.014 * n, 0.45 * math.pi)
        hyoid = [(anat.cortical_grey, _alpha(sd))]
        z1 = bottom - 1
        for z in range(max(0, z1 - max(2, int(0.08 * nz))), z1):
            per_slice[z] += hyoid
    if anat.skull_base and top < nz - 1:
        occ_c = (cx, 0.60 * n)
        occipital = np.minimum(_ellipse_sd(xx, yy, occ_c, (0.36 * n, 0.33 * n)),
                               -_ellipse_sd(xx, yy, occ_c, (0.36 * n - 2.2 * cortex, 0.33 * n - 2.2 * cortex)))
        occipital = np.where(yy > occ_c[1] - 0.05 * n, occipital, -1.0)
        petrous = np.maximum(_capsule_sd(xx, yy, (cx - 0.10 * n, 0.55 * n), (cx - 0.33 * n, 0.72 * n), 0.03 * n),
                             _capsule_sd(xx, yy, (cx + 0.10 * n, 0.55 * n), (cx + 0.33 * n, 0.72 * n), 0.03 * n))
        skull = [(anat.cortical_grey, _alpha(occipital))] + _bone(petrous, cortex, anat)
        for z in range(top, nz):
            per_slice[z] += skull
    for z, layers in enumerate(per_slice):
        if not layers:
            continue
        sl = vol[z].astype(np.float32)
        for grey, a in layers:
            a = a * head
            sl += a * (grey - sl)
        vol[z] = np.rint(sl)
