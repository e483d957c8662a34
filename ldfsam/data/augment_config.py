"""Configuration of the phantom augmentations (``augment.py``): one dataclass per augmentation, each with its
probability ``p`` and strength ranges, and :class:`AugmentConfig` holding them all.

Grey-value strengths are fractions of the volume's contrast (its 0.5-99.5 percentile spread); geometric ones are
in voxels, degrees or fractions of the slice, as each field says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Tuple

from ..errors import ConfigError

Range = Tuple[float, float]


@dataclass
class Zoom:
    """Scale the anatomy in the axial plane about a shifted centre (the image keeps its shape); the outside is
    filled with air. Real heads fill about half of a head CT's width: zooming out brings the phantom there."""

    p: float = 0.8
    scale: Range = (0.45, 1.0)
    shift: float = 0.1  # the centre moves by up to this fraction of the slice size


@dataclass
class Rotate:
    """Turn the head: yaw in the axial plane, and a tilt of the occlusal plane (pitch, about x, and roll, about
    y) so that slices cut the teeth obliquely, as when a patient's head is not aligned with the scanner. Degrees."""

    p: float = 0.5
    yaw: Range = (-15.0, 15.0)
    pitch: Range = (-10.0, 10.0)
    roll: Range = (-5.0, 5.0)


@dataclass
class Crop:
    """Crop a sub-block of the slices (y, x) and of the slice range (z)."""

    p: float = 0.3
    keep: Range = (0.6, 0.95)  # kept fraction of each axis


@dataclass
class Truncate:
    """Cut the field of view through the tooth rows: one side of the slice moves inside the teeth's box, so
    teeth touch the border as in a small-field CBCT."""

    p: float = 0.15
    depth: Range = (0.1, 0.4)  # how far into the teeth's extent along that axis


@dataclass
class Metal:
    """Metal restorations (fillings, crowns, implants) in random teeth, with the streaks of their slices:
    thin bright and dark lines through the metal across the whole slice, and a dark band between metal objects.
    The metal stays inside the tooth's label (a restoration is part of the tooth)."""

    p: float = 0.4
    count: Tuple[int, int] = (1, 4)  # objects, inclusive
    grey: Range = (1.6, 3.0)  # metal grey value, in units of the tooth's brightest (99th percentile) grey
    streak: Range = (0.2, 1.0)  # streak amplitude, fraction of the contrast
    implant_p: float = 0.2  # share of objects that are implants (a post down the whole tooth)


@dataclass
class BeamHardening:
    """Cupping (the centre of the head darker than its rim) and dark bands between dense objects along x and y."""

    p: float = 0.5
    cupping: Range = (0.0, 0.12)  # fraction of the contrast at the head's centre
    bands: Range = (0.0, 0.15)  # fraction of the contrast in a band with bone on both sides


@dataclass
class Contrast:
    """Grey-value response: a gamma on the windowed range and random relative contrast between tissues (a
    monotone piecewise-linear curve), since CBCT grey values are not calibrated."""

    p: float = 0.8
    gamma: Range = (0.65, 1.25)
    jitter: float = 0.35  # each of the curve's 6 segments has its slope scaled by 1 +- jitter


@dataclass
class Blur:
    """Anisotropic Gaussian blur (reconstruction kernel, slice thickness). Sigmas are in in-plane voxels (z is
    converted through the spacing): the phantom's anatomy is scaled to its field of view, not to millimetres."""

    p: float = 0.6
    sigma_xy: Range = (0.2, 1.2)
    sigma_z: Range = (0.2, 2.0)


@dataclass
class Noise:
    """Additive noise, spatially correlated like reconstructed CBCT noise, with a Poisson-like share whose
    variance grows with the grey value. ``sigma`` is the added std in flat regions, fraction of the contrast."""

    p: float = 0.9
    sigma: Range = (0.0, 0.035)
    correlation: Range = (0.0, 1.0)  # smoothing of the noise (voxels); the std is kept at ``sigma``
    poisson: Range = (0.5, 1.0)  # share of the variance that scales with the grey value


@dataclass
class Texture:
    """Smooth random variation of the tissues (fat and muscle in soft tissue, marrow density in bone): a
    low-frequency field inside the body, amplitude a fraction of the contrast."""

    p: float = 0.7
    amplitude: Range = (0.0, 0.03)
    scale: Range = (2.0, 8.0)  # smoothing of the field, in-plane voxels


@dataclass
class FieldOfView:
    """A cylindrical field of view: outside a circle of the slice, a constant (air, or below it, as scanners
    write)."""

    p: float = 0.5
    radius: Range = (0.8, 1.0)  # fraction of half the slice's smaller side
    below_air: Range = (0.0, 0.1)  # the constant is air minus this fraction of the contrast


@dataclass
class Clutter:
    """What lies around a head in a real scan and is not anatomy: the headrest or table, blankets. Thin arcs
    behind the head (high y) in air, as bright as soft tissue up to bone."""

    p: float = 0.3
    count: Tuple[int, int] = (1, 4)  # arcs, inclusive
    grey: Range = (0.3, 0.8)  # fraction of the contrast above air


@dataclass
class Intensity:
    """Linear grey-value scale and offset (the scanner's units): invisible after the model's per-volume window,
    not after a fixed one."""

    p: float = 0.8
    scale: Range = (0.5, 2.0)
    offset: Range = (-1000.0, 1500.0)


@dataclass
class AugmentConfig:
    """Every augmentation with its probability and strength range. Defaults were chosen by comparing augmented
    phantoms with the real head CTs after the model's preprocessing (scripts/phantom_vs_real.py)."""

    zoom: Zoom = field(default_factory=Zoom)
    rotate: Rotate = field(default_factory=Rotate)
    crop: Crop = field(default_factory=Crop)
    truncate: Truncate = field(default_factory=Truncate)
    metal: Metal = field(default_factory=Metal)
    beam_hardening: BeamHardening = field(default_factory=BeamHardening)
    contrast: Contrast = field(default_factory=Contrast)
    blur: Blur = field(default_factory=Blur)
    noise: Noise = field(default_factory=Noise)
    texture: Texture = field(default_factory=Texture)
    clutter: Clutter = field(default_factory=Clutter)
    fov: FieldOfView = field(default_factory=FieldOfView)
    intensity: Intensity = field(default_factory=Intensity)

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range (probabilities in [0, 1], ranges low <= high,
        scales and kept fractions positive)."""
        for name, aug in vars(self).items():
            for key, value in vars(aug).items():
                where = f"AugmentConfig.{name}.{key}"
                if key == "p" and not 0.0 <= value <= 1.0:
                    raise ConfigError(f"{where} must be a probability in [0, 1], got {value}")
                if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                    raise ConfigError(f"{where} must be a range (low, high) with low <= high, got {value}")
        for where, (lo, hi), top in (("zoom.scale", self.zoom.scale, math.inf), ("crop.keep", self.crop.keep, 1.0),
                                     ("fov.radius", self.fov.radius, math.inf),
                                     ("metal.count", self.metal.count, math.inf)):
            if lo <= 0 or hi > top:
                raise ConfigError(f"AugmentConfig.{where} must lie in (0, {top}], got {(lo, hi)}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every probability 0: the identity (a starting point to switch single augmentations on)."""
        cfg = cls()
        for name in vars(cfg):
            getattr(cfg, name).p = 0.0
        return cfg
