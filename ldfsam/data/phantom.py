"""A procedural dental CBCT phantom with an exact tooth label map (FDI numbers 11-48).

Anatomy (in the image's index space, scaled to the field of view): a head of soft tissue in air; a maxilla
(alveolar ridge and palate) and a mandible (horseshoe body) of trabecular bone with a cortical shell; two tooth
rows along an elliptical arch, each tooth a crown of enamel over dentine with a pulp canal, roots narrowing to
the apex (two or three roots for molars); a few metal fillings with streak artifacts; partial-volume blur at
every edge and Gaussian noise. Index axes are (x, y, z) = (patient left, posterior, superior) as in LPS, so with
the default identity direction the anterior teeth sit at low y and the upper row at high z.

With ``anatomy`` (``phantom_anatomy.Anatomy``) the phantom also holds bones that are not teeth (cervical spine,
mandibular rami, hyoid, skull base, a thick bright jaw cortex), labelled background.

The tooth rows span ``teeth_fraction`` of the slices, centred; the slices above and below hold bone and soft
tissue only, as in a real scan. Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .phantom_anatomy import Anatomy, Frame, draw_anatomy

# Mesiodistal widths (mm, adult averages) from central incisor (position 1) to third molar (position 8).
_UPPER_WIDTHS = (8.6, 6.6, 7.6, 7.0, 6.6, 10.2, 9.2, 8.6)
_LOWER_WIDTHS = (5.3, 5.9, 6.9, 7.0, 7.1, 11.2, 10.5, 10.0)
# Tooth length relative to the canine (the longest, which defines the tooth-row span).
_LENGTH = (0.88, 0.82, 1.0, 0.84, 0.84, 0.78, 0.76, 0.70)
_ROOTS_UPPER = (1, 1, 1, 1, 1, 3, 3, 3)
_ROOTS_LOWER = (1, 1, 1, 1, 1, 2, 2, 2)

# Grey values (CBCT-like, roughly HU; CBCT is not calibrated so only the ordering matters).
AIR, SOFT, PULP, TRABECULAR, CORTICAL, DENTINE, ENAMEL, METAL = -1000.0, 40.0, 120.0, 650.0, 1250.0, 1700.0, \
    2700.0, 6000.0


@dataclass
class Tooth:
    fdi: int
    center: Tuple[float, float]  # (x, y) in voxels
    angle: float  # arch tangent (radians, in the x-y plane)
    half_width: float  # mesiodistal radius (voxels)
    half_depth: float  # buccolingual radius (voxels)
    z_occlusal: float  # crown tip (voxel z)
    z_apex: float  # root apex (voxel z)
    roots: int
    filling: bool


def _arch_points(a: float, b: float, n: int = 2000) -> Tuple[np.ndarray, np.ndarray]:
    """Half an elliptical arch from the midline (theta 0, most anterior) backwards; returns points and arc length."""
    theta = np.linspace(0.0, 0.62 * math.pi, n)
    pts = np.stack([a * np.sin(theta), -b * np.cos(theta)], axis=1)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    return pts, np.concatenate([[0.0], np.cumsum(seg)])


def _layout_teeth(nx: int, ny: int, z_occ: float, half_span: float, gap: float, scale: float,
                  rng: np.random.Generator, missing: Sequence[int], fillings: int) -> List[Tooth]:
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0 + 0.06 * ny
    teeth: List[Tooth] = []
    for upper in (True, False):
        widths = _UPPER_WIDTHS if upper else _LOWER_WIDTHS
        a, b = (27.0 if upper else 25.0) * scale, (38.0 if upper else 35.0) * scale
        pts, arc = _arch_points(a, b)
        total = sum(widths)
        # Arc positions of the tooth centres; the arch is sized so the 8 teeth just fit.
        stretch = arc[-1] / total * 0.97
        edges = np.concatenate([[0.0], np.cumsum(widths)]) * stretch
        for side in (1, -1):  # +x = patient left (quadrants 2 and 3), -x = patient right (1 and 4)
            quadrant = (2 if side > 0 else 1) if upper else (3 if side > 0 else 4)
            for pos in range(8):
                fdi = quadrant * 10 + pos + 1
                if fdi in missing:
                    continue
                s = 0.5 * (edges[pos] + edges[pos + 1])
                i = int(np.searchsorted(arc, s).clip(1, len(arc) - 1))
                p, q = pts[i - 1], pts[i]
                x, y = p[0] * side, p[1]
                tangent = math.atan2(q[1] - p[1], (q[0] - p[0]) * side)
                jitter = rng.uniform(0.93, 1.07)
                half_w = 0.5 * widths[pos] * stretch * 0.86 * jitter
                half_d = half_w * (0.95 if pos < 3 else 1.05) + (1.2 * scale if pos < 3 else 0.0)
                length = _LENGTH[pos] * (half_span - gap) * rng.uniform(0.97, 1.0) if pos != 2 else half_span - gap
                sign = 1.0 if upper else -1.0
                z0 = z_occ + sign * gap
                teeth.append(Tooth(fdi, (cx + x, cy + y), tangent, half_w, half_d, z0, z0 + sign * length,
                                   (_ROOTS_UPPER if upper else _ROOTS_LOWER)[pos], False))
    molars = [t for t in teeth if t.fdi % 10 >= 6]
    for k in rng.permutation(len(molars))[: min(fillings, len(molars))]:
        molars[int(k)].filling = True
    return teeth


def _render_tooth(vol: np.ndarray, lab: np.ndarray, t: Tooth, zscale: float, streaks: List) -> None:
    """Draw one tooth into its bounding box: labels where inside, grey values blended at the edge."""
    nz, ny, nx = vol.shape
    zlo, zhi = sorted((t.z_occlusal, t.z_apex))
    r = max(t.half_width, t.half_depth) * 1.15
    z0, z1 = max(0, int(math.floor(zlo))), min(nz, int(math.ceil(zhi)) + 1)
    y0, y1 = max(0, int(t.center[1] - r) - 1), min(ny, int(t.center[1] + r) + 2)
    x0, x1 = max(0, int(t.center[0] - r) - 1), min(nx, int(t.center[0] + r) + 2)
    if z0 >= z1 or y0 >= y1 or x0 >= x1:
        return
    zz = np.arange(z0, z1, dtype=np.float32)[:, None, None]
    yy = np.arange(y0, y1, dtype=np.float32)[None, :, None] - t.center[1]
    xx = np.arange(x0, x1, dtype=np.float32)[None, None, :] - t.center[0]
    ca, sa = math.cos(t.angle), math.sin(t.angle)
    m = xx * ca + yy * sa  # along the arch (mesiodistal)
    b = -xx * sa + yy * ca  # across the arch (buccolingual)
    u = (zz - t.z_occlusal) / (t.z_apex - t.z_occlusal)  # 0 at the crown tip, 1 at the apex
    crown = 0.38
    # Radius profile: rounded cusp, bulging crown, cervical neck, tapering root.
    tip = np.sqrt(np.clip(u / 0.08, 0.0, 1.0) * (2.0 - np.clip(u / 0.08, 0.0, 1.0)))
    bulge = np.where(u < crown, 0.86 + 0.14 * np.sin(np.pi * np.clip(u / crown, 0, 1)),
                     0.86 - 0.62 * np.clip((u - crown) / (1 - crown), 0, 1))
    prof = (tip * bulge).astype(np.float32)
    # At least 0.75 voxel so every slice the tooth spans holds some of it (whatever the sub-voxel position).
    rw = np.maximum(prof * t.half_width, 0.75)
    rd = np.maximum(prof * t.half_depth, 0.75)
    rho = np.sqrt((m / rw) ** 2 + (b / rd) ** 2)
    if t.roots > 1:
        # Below the furcation the root splits into lobes placed along (2 roots) or around (3 roots) the tooth.
        furc = crown + 0.12
        split = np.clip((u - furc) / (1 - furc), 0, 1)
        lobe_r = 1.0 - 0.45 * np.clip(split * 3.0, 0.0, 1.0)
        offs = [(-0.55, 0.0), (0.55, 0.0)] if t.roots == 2 else [(-0.5, -0.35), (0.5, -0.35), (0.0, 0.5)]
        lobes = None
        for om, ob in offs:
            dm = m - om * split * t.half_width
            db = b - ob * split * t.half_depth
            lr = np.sqrt((dm / (rw * lobe_r)) ** 2 + (db / (rd * lobe_r)) ** 2)
            lobes = lr if lobes is None else np.minimum(lobes, lr)
        rho = np.where(u > furc, lobes, rho)
    inside_axis = (u >= 0) & (u <= 1)
    inside = inside_axis & (rho <= 1.0)
    # Enamel: the outer shell of the crown; pulp: a narrow canal from the crown into the roots.
    rmin = np.minimum(rw, rd)
    enamel = (u < crown) & (rho > 1.0 - np.minimum(0.35, 1.1 * zscale / np.maximum(rmin, 1e-3)))
    pulp_rho = np.sqrt((m / (0.28 * rw + 0.3)) ** 2 + (b / (0.28 * rd + 0.3)) ** 2)
    pulp = (u > 0.18) & (u < 0.93) & (pulp_rho <= 1.0)
    grey = np.where(enamel, ENAMEL, DENTINE).astype(np.float32)
    grey = np.where(pulp, PULP, grey)
    if t.filling:
        fill = (u < 0.16) & (rho < 0.55)
        grey = np.where(fill, METAL, grey)
        zf = np.nonzero(fill.any(axis=(1, 2)))[0]
        if zf.size:
            streaks.append((z0 + int(zf[0]), z0 + int(zf[-1]) + 1, t.center))
    # Partial-volume edge: a soft step about one voxel wide.
    scale = np.maximum(rmin, 1.0)
    w = np.clip((1.0 - rho) * scale + 0.5, 0.0, 1.0) * inside_axis
    box = vol[z0:z1, y0:y1, x0:x1]
    fbox = box.astype(np.float32)
    fbox += w * (grey - fbox)
    box[...] = np.rint(fbox)
    lbox = lab[z0:z1, y0:y1, x0:x1]
    lbox[inside] = t.fdi


def _streak_pattern(ny: int, nx: int, center: Tuple[float, float], rng: np.random.Generator,
                    amplitude: float) -> np.ndarray:
    """Radial bright/dark streaks from a metal object, fading with distance (beam hardening look)."""
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    dy, dx = yy - center[1], xx - center[0]
    theta = np.arctan2(dy, dx)
    r = np.sqrt(dx * dx + dy * dy)
    out = np.zeros((ny, nx), np.float32)
    for _ in range(rng.integers(5, 9)):
        a0 = rng.uniform(-math.pi, math.pi)
        d = np.angle(np.exp(1j * (theta - a0))).astype(np.float32)
        out += rng.choice((-1.0, 1.0)) * np.exp(-(d / 0.025) ** 2)
    return amplitude * out / (1.0 + r / (0.15 * max(nx, ny)))


def _add_noise(vol: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Gaussian noise, in slabs. Large volumes draw from a bank of 32 noise slices, each slice taking one at
    random in one of 8 flips/transposes (square slices) or 4 flips: fresh-looking noise at a fraction of the
    cost of 10^8 normal draws."""
    nz, ny, nx = vol.shape
    bank_size = 32
    fresh = vol.size <= (1 << 25)
    bank = None if fresh else sigma * rng.standard_normal((bank_size, ny, nx), dtype=np.float32)
    step = max(1, (1 << 22) // (ny * nx))
    for z in range(0, nz, step):
        slab = vol[z:z + step].astype(np.float32)
        if fresh:
            slab += sigma * rng.standard_normal(slab.shape, dtype=np.float32)
        else:
            for k in range(slab.shape[0]):
                n = bank[rng.integers(bank_size)]
                flip = rng.integers(8 if ny == nx else 4)
                n = n[::-1] if flip & 1 else n
                n = n[:, ::-1] if flip & 2 else n
                slab[k] += n.T if flip & 4 else n
        np.clip(slab, -1024, 32000, out=slab)
        vol[z:z + step] = slab


def make_phantom(shape: Tuple[int, int, int] = (64, 128, 128), spacing: Union[float, Sequence[float]] = 0.25,
                 seed: int = 0, teeth_fraction: float = 0.5, noise: float = 40.0, fillings: int = 2,
                 missing: Optional[Sequence[int]] = None, origin: Optional[Sequence[float]] = None,
                 direction: Optional[Sequence[float]] = None,
                 anatomy: Optional[Anatomy] = None) -> Tuple[sitk.Image, sitk.Image]:
    """Build a CBCT phantom and its tooth label map.

    shape: (z, y, x) voxels; spacing: mm, one value or (x, y, z) as SimpleITK orders it; teeth_fraction: share of
    axial slices holding teeth (0 < f <= 1; the tooth rows are centred); missing: FDI numbers to leave out (by
    default the seed drops a few third molars); origin/direction: geometry of the returned images; anatomy:
    bones that are not teeth (spine, rami, hyoid, skull base, thick jaw cortex; ``phantom_anatomy.Anatomy``),
    labelled background; None gives the plain jaws. The teeth for a seed are the same either way.
    Returns (image int16, labels uint8 with FDI numbers 11-48, 0 elsewhere), on the same grid.
    """
    nz, ny, nx = (int(v) for v in shape)
    if min(nz, ny, nx) < 8:
        raise ValueError(f"phantom shape {shape} is too small (at least 8 voxels per axis)")
    if not 0.0 < teeth_fraction <= 1.0:
        raise ValueError(f"teeth_fraction must be in (0, 1], got {teeth_fraction}")
    if anatomy is not None and not 0.0 < anatomy.cortex < 6.5:
        raise ValueError(f"anatomy.cortex must be in (0, 6.5) (the jaws' half-width), got {anatomy.cortex}")
    sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    if missing is None:
        missing = [q * 10 + 8 for q in (1, 2, 3, 4) if rng.random() < 0.5]

    # Anatomy is laid out in voxels scaled to the axial field of view (the arch spans ~55% of it), with the
    # in-plane voxel aspect accounted for; the tooth rows span teeth_fraction of the slices.
    scale = min(nx, ny) / 100.0
    zscale = max(1.0, scale * sp[0] / sp[2])
    span = teeth_fraction * nz
    z_occ = (nz - 1) / 2.0
    half_span = span / 2.0
    gap = 0.0  # cusps of both rows meet at the occlusal plane
    teeth = _layout_teeth(nx, ny, z_occ, half_span, gap, scale, rng, set(missing), fillings)

    # Axial templates: distance to the arch curve gives alveolar bone bands; an ellipse gives the head.
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    head = ((xx - cx) / (0.47 * nx)) ** 2 + ((yy - cy - 0.02 * ny) / (0.48 * ny)) ** 2 <= 1.0

    cortex, cortical, trabecular = (1.2, CORTICAL, TRABECULAR) if anatomy is None else \
        (anatomy.cortex, anatomy.cortical_grey, anatomy.trabecular_grey)

    def band(a: float, b: float, width: float, fill_palate: bool) -> np.ndarray:
        pts, _ = _arch_points(a * scale, b * scale, 600)
        curve = np.zeros((ny, nx), bool)
        for sgn in (1, -1):
            px = np.clip(np.round(cx + sgn * pts[:, 0]).astype(int), 0, nx - 1)
            py = np.clip(np.round(cy + 0.06 * ny + pts[:, 1]).astype(int), 0, ny - 1)
            curve[py, px] = True
        dist = ndimage.distance_transform_edt(~curve).astype(np.float32)
        w = width * scale
        grey = np.where(dist < w - cortex * scale, trabecular, cortical).astype(np.float32)
        grey = np.where(dist < w, grey, SOFT)
        if fill_palate:
            inside = ((xx - cx) / (a * scale)) ** 2 + ((yy - cy - 0.06 * ny) / (b * scale)) ** 2 <= 1.0
            grey = np.where(inside & (yy < cy + 0.06 * ny + 0.5 * b * scale) & (dist >= w), trabecular, grey)
        grey = ndimage.gaussian_filter(grey, 0.7)
        return np.where(head, grey, AIR).astype(np.float32)

    soft = ndimage.gaussian_filter(np.where(head, SOFT, AIR).astype(np.float32), 0.7)
    mandible = band(25.0, 35.0, 6.5, False)
    maxilla = band(27.0, 38.0, 7.0, False)
    palate = band(27.0, 38.0, 7.0, True)

    # The volume is int16 from the start: a 420x650x650 phantom then never holds a full-size float array.
    vol = np.empty((nz, ny, nx), np.int16)
    soft, mandible, maxilla, palate = (np.rint(t).astype(np.int16) for t in (soft, mandible, maxilla, palate))
    vol[:] = soft
    upper_apex = max(t.z_apex for t in teeth if t.fdi < 30) if any(t.fdi < 30 for t in teeth) else z_occ
    lower_apex = min(t.z_apex for t in teeth if t.fdi > 30) if any(t.fdi > 30 for t in teeth) else z_occ
    crown_len = 0.38 * (half_span - gap)
    lower_top = int(round(z_occ - gap - crown_len * 0.8))
    upper_bottom = int(round(z_occ + gap + crown_len * 0.8))
    # The mandible reaches below the lower apices (its body and lower border), the maxilla above the upper ones.
    mand_bottom = max(0, int(lower_apex - 0.25 * half_span - 0.08 * nz))
    max_top = min(nz, int(upper_apex + 0.15 * half_span + 0.05 * nz) + 1)
    if lower_top > mand_bottom:
        vol[mand_bottom:lower_top] = mandible
    if max_top > upper_bottom:
        pal = max(upper_bottom, int(upper_apex) - 1)
        vol[upper_bottom:pal] = maxilla
        vol[pal:max_top] = palate

    if anatomy is not None:
        # Its own generator: the teeth, fillings and noise of a seed do not depend on the anatomy chosen.
        frame = Frame(nx, ny, nz, mand_bottom, max_top, z_occ, half_span)
        draw_anatomy(vol, head, frame, anatomy, np.random.default_rng([seed, 1]))

    lab = np.zeros((nz, ny, nx), np.uint8)
    streaks: List = []
    for t in teeth:
        _render_tooth(vol, lab, t, zscale, streaks)
    for z0, z1, center in streaks:
        pattern = _streak_pattern(ny, nx, center, rng, 0.12 * METAL)
        for z in range(z0, z1):
            vol[z] = np.clip(vol[z] + pattern, -1024, 32000)
    if noise > 0:
        _add_noise(vol, noise, rng)
    image = sitk.GetImageFromArray(vol)
    labels = sitk.GetImageFromArray(lab)
    for im in (image, labels):
        im.SetSpacing(sp)
        if origin is not None:
            im.SetOrigin(tuple(float(o) for o in origin))
        if direction is not None:
            im.SetDirection(tuple(float(d) for d in direction))
    return image, labels


def teeth_slice_fraction(labels: sitk.Image) -> float:
    """Share of axial slices (index z) holding at least one tooth voxel."""
    array = sitk.GetArrayViewFromImage(labels)
    return float(np.count_nonzero(array.reshape(array.shape[0], -1).any(axis=1))) / array.shape[0]


def tooth_voxel_counts(labels: sitk.Image) -> Dict[int, int]:
    """Voxels per FDI tooth number present in a label map."""
    values, counts = np.unique(sitk.GetArrayViewFromImage(labels), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v != 0}


def write_phantom_dataset(folder, cases: int = 4, shape: Tuple[int, int, int] = (32, 96, 96),
                          spacing: Union[float, Sequence[float]] = 0.25, seed: int = 0,
                          teeth_fraction: float = 0.5, suffix: str = ".nii.gz") -> List[str]:
    """Write ``cases`` phantoms as ``phantom_NNN<suffix>`` + ``phantom_NNN_label<suffix>`` (flat layout).

    A small, deterministic training set for tests and demos; returns the case IDs.
    """
    from pathlib import Path

    from .volume import write_label_volume, write_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(cases):
        image, labels = make_phantom(shape, spacing, seed=seed + i, teeth_fraction=teeth_fraction)
        cid = f"phantom_{i:03d}"
        write_volume(image, folder / f"{cid}{suffix}", overwrite=True)
        write_label_volume(labels, image, folder / f"{cid}_label{suffix}", overwrite=True)
        ids.append(cid)
    return ids
