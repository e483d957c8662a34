"""CBCT-realism augmentations of a phantom volume and its label map, for training on phantoms.

Real scanners differ from the phantom in ways a model must not care about: uncalibrated grey values, noise and
blur of the reconstruction, metal restorations with their streaks, beam hardening, and the field of view (a
cylinder, cropped, the anatomy larger or smaller, teeth cut at the border). Each augmentation here has a
probability and a strength range in :class:`AugmentConfig` (augment_config.py); :func:`augment_phantom` applies
them in the order a scanner would (geometry, metal, beam hardening, tissue contrast and texture, blur, noise,
field-of-view mask, grey-value scale), deterministically for a generator state.

Arrays are (z, y, x); ``spacing`` is (z, y, x) in mm, matching the array axes. Strengths of grey-value effects
are fractions of the volume's *contrast*: the spread between its 0.5 and 99.5 percentiles (the model's own
intensity window, preprocess.py), so a setting means the same after normalisation whatever the scanner's units.
Geometry changes transform the label map with the image (nearest neighbour), so labels stay aligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .augment_config import AugmentConfig, Range


@dataclass
class Augmented:
    """An augmented volume: ``image`` float32 (z, y, x), ``labels`` (z, y, x) of the input's dtype, and the
    augmentations applied with their drawn parameters (in order)."""

    image: np.ndarray
    labels: np.ndarray
    applied: Dict[str, dict]


def _u(rng: np.random.Generator, r: Sequence[float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def grey_reference(image: np.ndarray) -> Tuple[float, float]:
    """(air, contrast): the 0.5 percentile and the 0.5-99.5 percentile spread, the units of the strengths."""
    step = max(1, int(round((image.size / 1e6) ** (1 / 3))))
    lo, hi = np.percentile(image[::step, ::step, ::step], (0.5, 99.5))
    return float(lo), float(max(hi - lo, 1e-6))


# -- geometry ----------------------------------------------------------------------------------------------------


def resample_affine(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], scale: float = 1.0,
                    angles: Tuple[float, float, float] = (0.0, 0.0, 0.0), shift: Tuple[float, float] = (0.0, 0.0),
                    fill: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Scale the anatomy in-plane by ``scale`` and rotate it by ``angles`` (yaw about z, pitch about x, roll about
    y; degrees, in millimetres so anisotropic voxels rotate correctly) about the volume's centre, then move it by
    ``shift`` (dy, dx voxels). Same shape out; linear for the image (``fill`` outside), nearest for labels."""
    yaw, pitch, roll = (math.radians(a) for a in angles)
    # A tilt brings the volume's top and bottom into the slices: pad them by repeating the end slices, so that
    # a tilted slice shows anatomy to its edge (as in a real scan), not an empty wedge.
    nz, ny, nx = image.shape
    reach = max(abs(math.sin(pitch)) * ny * spacing[1], abs(math.sin(roll)) * nx * spacing[2]) / 2.0
    pad = int(math.ceil(reach / spacing[0])) + 1 if reach > 0 else 0
    if pad:
        image = np.pad(image, ((pad, pad), (0, 0), (0, 0)), mode="edge")
        labels = np.pad(labels, ((pad, pad), (0, 0), (0, 0)), mode="edge")
    c = (np.array(image.shape, np.float64) - 1.0) / 2.0
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    # Rotations in (z, y, x) coordinates: yaw mixes y and x, pitch z and y, roll z and x.
    r_yaw = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    r_pitch = np.array([[cp, -sp, 0], [sp, cp, 0], [0, 0, 1]])
    r_roll = np.array([[cr, 0, -sr], [0, 1, 0], [sr, 0, cr]])
    forward = r_yaw @ r_pitch @ r_roll @ np.diag([1.0, scale, scale])  # physical, input -> output
    d = np.diag(np.asarray(spacing, np.float64))
    matrix = np.linalg.inv(d) @ np.linalg.inv(forward) @ d  # output voxel -> input voxel
    # input = c + matrix (output - c - shift)
    offset = c - matrix @ (c + np.array([0.0, *shift]))
    img = ndimage.affine_transform(image.astype(np.float32, copy=False), matrix, offset, order=1,
                                   mode="constant", cval=fill)
    lab = ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=0)
    return img[pad:pad + nz], lab[pad:pad + nz]


def crop(image: np.ndarray, labels: np.ndarray, box: Sequence[slice]) -> Tuple[np.ndarray, np.ndarray]:
    box = tuple(box)
    return image[box].copy(), labels[box].copy()


def _random_crop(shape: Tuple[int, ...], keep: Range, rng: np.random.Generator) -> Tuple[slice, ...]:
    out = []
    for n in shape:
        k = max(8, min(n, int(round(n * _u(rng, keep)))))
        s = int(rng.integers(0, n - k + 1))
        out.append(slice(s, s + k))
    return tuple(out)


def _truncation(labels: np.ndarray, depth: Range, rng: np.random.Generator) -> Optional[Tuple[slice, ...]]:
    """A crop (y, x only) whose one side lies inside the teeth's bounding box."""
    teeth = np.nonzero(labels.any(axis=0))
    if teeth[0].size == 0:
        return None
    axis = int(rng.integers(2))  # 0: y, 1: x
    lo, hi = int(teeth[axis].min()), int(teeth[axis].max())
    d = int(round(_u(rng, depth) * (hi - lo)))
    n = labels.shape[1 + axis]
    box = [slice(None), slice(0, labels.shape[1]), slice(0, labels.shape[2])]
    cut = slice(lo + d, n) if rng.random() < 0.5 else slice(0, max(hi - d + 1, 8))
    if cut.stop - cut.start < 8:
        return None
    box[1 + axis] = cut
    return tuple(box)


# -- grey values -------------------------------------------------------------------------------------------------


def _metal_objects(labels: np.ndarray, count: int, implant_p: float, rng: np.random.Generator) -> List[dict]:
    """Pick teeth and place a metal object in each: the slices of the tooth's widest part (crown) or all of it."""
    values = [int(v) for v in np.unique(labels) if v != 0]
    objects = []
    for v in rng.permutation(values)[:count] if values else []:
        tooth = labels == v
        area = tooth.sum(axis=(1, 2))
        zs = np.nonzero(area)[0]
        implant = rng.random() < implant_p
        if implant:
            z0, z1 = int(zs[0]), int(zs[-1]) + 1
            radius = 0.3
        else:
            zc = int(np.argmax(area))
            half = max(1, int(round(0.15 * zs.size)))
            z0, z1 = max(int(zs[0]), zc - half), min(int(zs[-1]) + 1, zc + half + 1)
            radius = float(rng.uniform(0.35, 0.75))
        objects.append({"fdi": int(v), "z": (z0, z1), "radius": radius, "implant": bool(implant)})
    return objects


def metal(image: np.ndarray, labels: np.ndarray, count: int, grey: float, streak: float, implant_p: float,
          contrast: float, rng: np.random.Generator) -> List[dict]:
    """Add metal objects (grey value ``grey``) inside ``count`` teeth and their streaks, in place; returns them."""
    nz, ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    objects = _metal_objects(labels, count, implant_p, rng)
    centres: Dict[int, List[Tuple[float, float]]] = {}
    for obj in objects:
        tooth_z = labels[obj["z"][0]:obj["z"][1]] == obj["fdi"]
        for k, z in enumerate(range(*obj["z"])):
            t = tooth_z[k]
            if not t.any():
                continue
            ty, tx = np.nonzero(t)
            cy, cx = float(ty.mean()), float(tx.mean())
            r = max(0.8, obj["radius"] * math.sqrt(t.sum() / math.pi))
            m = t & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
            if not m.any():  # a thin section of the tooth: its voxel nearest the centre
                m = np.zeros_like(t)
                i = int(np.argmin((ty - cy) ** 2 + (tx - cx) ** 2))
                m[ty[i], tx[i]] = True
            image[z][m] = grey
            centres.setdefault(z, []).append((cx, cy))
    amp = streak * contrast
    for z, cs in centres.items():
        pattern = np.zeros((ny, nx), np.float32)
        for cx, cy in cs:
            dy, dx = yy - cy, xx - cx
            theta = np.arctan2(dy, dx)
            r = np.hypot(dx, dy)
            for _ in range(int(rng.integers(16, 40))):
                a0 = rng.uniform(-math.pi, math.pi)
                d = np.angle(np.exp(1j * (theta - a0))).astype(np.float32)
                width = rng.uniform(0.003, 0.02)
                pattern += rng.choice((-1.0, 1.0)) * np.exp(-(d / width) ** 2) / (1.0 + r / (0.3 * max(nx, ny)))
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                # The classic dark band on the line joining two metal objects.
                (x0, y0), (x1, y1) = cs[i], cs[j]
                ux, uy = x1 - x0, y1 - y0
                length = max(math.hypot(ux, uy), 1e-6)
                t = np.clip(((xx - x0) * ux + (yy - y0) * uy) / length ** 2, 0.0, 1.0)
                dist = np.hypot(xx - x0 - t * ux, yy - y0 - t * uy)
                pattern -= 1.5 * np.exp(-(dist / max(1.0, 0.02 * nx)) ** 2)
        metal_here = image[z] >= grey
        image[z] += np.where(metal_here, 0.0, amp * pattern)
    return objects


def beam_hardening(image: np.ndarray, cupping: float, bands: float, air: float, contrast: float) -> None:
    """Cupping over the head (deepest at its centre) and dark bands between dense structures, in place."""
    nz, ny, nx = image.shape
    body = image > air + 0.15 * contrast
    dense = (image > air + 0.7 * contrast).astype(np.float32)
    for z in range(nz):
        b = body[z]
        if not b.any():
            continue
        if cupping > 0:
            # Depth inside the head: 0 at its edge, 1 at its deepest point.
            depth = ndimage.distance_transform_edt(b)
            image[z] -= cupping * contrast * np.sqrt(depth / max(float(depth.max()), 1.0))
        if bands > 0:
            d = dense[z]
            total = d.sum()
            if total == 0:
                continue
            between = np.zeros((ny, nx), np.float32)
            for axis in (0, 1):
                before = np.cumsum(d, axis=axis)
                after = np.flip(np.cumsum(np.flip(d, axis), axis=axis), axis)
                between += np.minimum(before, after) / max(1.0, float(d.sum(axis=axis).max()))
            image[z] -= bands * contrast * np.clip(between, 0.0, 1.0) * (d == 0) * b


def tissue_contrast(image: np.ndarray, gamma: float, knots: np.ndarray, air: float, contrast: float) -> None:
    """A monotone curve on the windowed range [air, air + contrast]: segment slopes ``knots`` then ``gamma``."""
    t = (image - air) / contrast
    edges = np.linspace(0.0, 1.0, knots.size + 1)
    values = np.concatenate([[0.0], np.cumsum(knots)])
    values /= values[-1]
    inside = np.interp(np.clip(t, 0.0, 1.0), edges, values) ** gamma
    # Outside the window (air below, metal above) the curve continues linearly.
    t = np.where(t < 0, t, np.where(t > 1, 1.0 + (t - 1.0), inside))
    image[...] = air + contrast * t


def add_noise(image: np.ndarray, sigma: float, correlation: float, poisson: float, air: float, contrast: float,
              rng: np.random.Generator) -> None:
    """Noise of std ``sigma * contrast`` in flat regions (at the window's middle for the Poisson-like share)."""
    n = rng.standard_normal(image.shape, dtype=np.float32)
    if correlation > 0:
        n = ndimage.gaussian_filter(n, (0.0, correlation, correlation))
        n /= max(float(n.std()), 1e-6)
    if poisson > 0:
        t = np.clip((image - air) / contrast, 0.0, 1.5)
        n *= np.sqrt((1.0 - poisson) + poisson * 2.0 * t)
    image += sigma * contrast * n


def add_texture(image: np.ndarray, amplitude: float, scale: float, air: float, contrast: float,
                rng: np.random.Generator) -> None:
    """Add a smooth random field of std ``amplitude * contrast`` inside the body (above air)."""
    f = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), (0.5 * scale, scale, scale))
    f *= amplitude * contrast / max(float(f.std()), 1e-6)
    image += f * (image > air + 0.15 * contrast)


def add_clutter(image: np.ndarray, count: int, grey: Range, air: float, contrast: float,
                rng: np.random.Generator) -> int:
    """Draw ``count`` thin arcs (headrest, table, blankets) behind the head where the image is air; returns how
    many voxels of the slice they cover."""
    nz, ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    body = ndimage.binary_dilation(image > air + 0.15 * contrast, iterations=2).any(axis=0)
    rows = np.nonzero(body.any(axis=1))[0]
    back = float(rows.max()) if rows.size else 0.6 * ny
    middle = float(rows.min() + rows.max()) / 2.0 if rows.size else 0.3 * ny
    layer = np.zeros((ny, nx), np.float32)
    for _ in range(count):
        # A circle much wider than the head, its lowest point a little behind the head's back.
        radius = rng.uniform(0.6, 2.0) * nx
        cy = back + rng.uniform(1.0, 0.25 * ny) - radius
        d = np.abs(np.hypot(xx - rng.uniform(0.3, 0.7) * nx, yy - cy) - radius)
        width = rng.uniform(0.4, 1.2)
        layer = np.maximum(layer, _u(rng, grey) * np.exp(-(d / width) ** 2))
    layer *= ~body & (yy > middle)  # a cradle behind the head, up to its middle at most
    image += (layer * contrast)[None]
    return int(np.count_nonzero(layer > 0.05))


def fov_mask(image: np.ndarray, radius: float, value: float) -> np.ndarray:
    """Set every voxel outside the axial circle of ``radius`` (fraction of half the smaller side) to ``value``."""
    nz, ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = radius * min(ny, nx) / 2.0
    outside = (yy - (ny - 1) / 2.0) ** 2 + (xx - (nx - 1) / 2.0) ** 2 > r * r
    image[:, outside] = value
    return outside


# -- the pipeline ------------------------------------------------------------------------------------------------


def augment_phantom(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], rng: np.random.Generator,
                    cfg: Optional[AugmentConfig] = None) -> Augmented:
    """Apply ``cfg``'s augmentations, each with its probability, to a volume (z, y, x) and its label map.

    spacing: (z, y, x) mm, for rotations and the blur's anisotropy. The shape may change (crop, truncation);
    labels always share the image's grid. Deterministic for the generator's state; the inputs are not modified.
    """
    cfg = AugmentConfig() if cfg is None else cfg
    cfg.validate()
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or labels.shape != image.shape:
        raise ValueError(f"image and labels must be 3D arrays of one shape, got {image.shape} and {labels.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive values (z, y, x) in mm, got {spacing}")
    img = image.astype(np.float32, copy=True)
    lab = labels.copy()
    air, contrast = grey_reference(img)
    applied: Dict[str, dict] = {}

    def on(p: float) -> bool:
        # One draw per augmentation whatever the outcome, so a probability change does not shift the others.
        return bool(rng.random() < p)

    # Zoom and rotation are one resampling.
    scale, shift, angles = 1.0, (0.0, 0.0), (0.0, 0.0, 0.0)
    if on(cfg.zoom.p):
        scale = _u(rng, cfg.zoom.scale)
        shift = tuple(float(rng.uniform(-1, 1) * cfg.zoom.shift * n) for n in img.shape[1:])
        applied["zoom"] = {"scale": scale, "shift": shift}
    if on(cfg.rotate.p):
        angles = (_u(rng, cfg.rotate.yaw), _u(rng, cfg.rotate.pitch), _u(rng, cfg.rotate.roll))
        applied["rotate"] = {"yaw": angles[0], "pitch": angles[1], "roll": angles[2]}
    if "zoom" in applied or "rotate" in applied:
        img, lab = resample_affine(img, lab, spacing, scale, angles, shift, air)
    if on(cfg.crop.p):
        box = _random_crop(img.shape, cfg.crop.keep, rng)
        img, lab = crop(img, lab, box)
        applied["crop"] = {"box": [(b.start, b.stop) for b in box]}
    if on(cfg.truncate.p):
        box = _truncation(lab, cfg.truncate.depth, rng)
        if box is not None:
            img, lab = crop(img, lab, box)
            applied["truncate"] = {"box": [(b.start, b.stop) for b in box[1:]]}
    if on(cfg.metal.p):
        teeth = img[lab > 0]
        top = float(np.percentile(teeth, 99)) if teeth.size else air + contrast
        count = int(rng.integers(cfg.metal.count[0], cfg.metal.count[1] + 1))
        grey = air + _u(rng, cfg.metal.grey) * (top - air)
        objects = metal(img, lab, count, grey, _u(rng, cfg.metal.streak), cfg.metal.implant_p, contrast, rng)
        applied["metal"] = {"grey": grey, "objects": objects}
    if on(cfg.beam_hardening.p):
        c, b = _u(rng, cfg.beam_hardening.cupping), _u(rng, cfg.beam_hardening.bands)
        beam_hardening(img, c, b, air, contrast)
        applied["beam_hardening"] = {"cupping": c, "bands": b}
    if on(cfg.contrast.p):
        g = _u(rng, cfg.contrast.gamma)
        knots = 1.0 + cfg.contrast.jitter * rng.uniform(-1.0, 1.0, 6)
        tissue_contrast(img, g, knots, air, contrast)
        applied["contrast"] = {"gamma": g, "knots": knots.tolist()}
    if on(cfg.texture.p):
        a, s = _u(rng, cfg.texture.amplitude), _u(rng, cfg.texture.scale)
        add_texture(img, a, s, air, contrast, rng)
        applied["texture"] = {"amplitude": a, "scale": s}
    if on(cfg.clutter.p):
        k = int(rng.integers(cfg.clutter.count[0], cfg.clutter.count[1] + 1))
        covered = add_clutter(img, k, cfg.clutter.grey, air, contrast, rng)
        applied["clutter"] = {"count": k, "pixels": covered}
    if on(cfg.blur.p):
        sxy, sz = _u(rng, cfg.blur.sigma_xy), _u(rng, cfg.blur.sigma_z)
        sigma = (sz * spacing[2] / spacing[0], sxy, sxy * spacing[2] / spacing[1])
        img = ndimage.gaussian_filter(img, sigma)
        applied["blur"] = {"sigma_voxels": sigma}
    if on(cfg.noise.p):
        s, c, p = _u(rng, cfg.noise.sigma), _u(rng, cfg.noise.correlation), _u(rng, cfg.noise.poisson)
        add_noise(img, s, c, p, air, contrast, rng)
        applied["noise"] = {"sigma": s, "correlation": c, "poisson": p}
    if on(cfg.fov.p):
        r = _u(rng, cfg.fov.radius)
        value = air - _u(rng, cfg.fov.below_air) * contrast
        outside = fov_mask(img, r, value)
        lab[:, outside] = 0  # teeth outside the field of view are not in the image
        applied["fov"] = {"radius": r, "value": value}
    if on(cfg.intensity.p):
        a, b = _u(rng, cfg.intensity.scale), _u(rng, cfg.intensity.offset)
        img *= np.float32(a)
        img += np.float32(b)
        applied["intensity"] = {"scale": a, "offset": b}
    return Augmented(img, lab, applied)
