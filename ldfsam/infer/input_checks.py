"""Reading the input volume and checking that it is one the model can segment (geometry only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

PathLike = Union[str, Path]
# Largest ratio of voxel spacings accepted: the model works on near-isotropic CBCT (paper: 0.25 mm).
MAX_ANISOTROPY = 8.0
# The smallest volume that can hold a tooth: the narrowest tooth (a lower central incisor) is about 5 mm across,
# and fewer than 8 voxels along an axis show no shape at all.
MIN_EXTENT_MM = 5.0
MIN_VOXELS = 8

def read_input(path: PathLike, spacing: Optional[Sequence[float]] = None) -> sitk.Image:
    """Read a CBCT volume (file or DICOM folder) and check that it is one the model can segment. ``spacing``:
    the true voxel size (x, y, z) in mm, replacing the file's."""
    from ..data.volume import read_volume

    image = read_volume(path, spacing=spacing)
    check_geometry(image, Path(path))
    return image


def check_geometry(image: sitk.Image, path: Optional[Path] = None) -> None:
    """Raise InputError naming ``path`` for a volume the model cannot segment: bad or too anisotropic voxel
    spacing, a single slice, or too small to hold a tooth."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"has an invalid voxel spacing {tuple(spacing)}", path)
    ratio = spacing.max() / spacing.min()
    if ratio > MAX_ANISOTROPY:
        sp = " x ".join(f"{s:g}" for s in spacing)
        raise InputError(f"voxel spacing {sp} mm is too anisotropic (ratio {ratio:.1f} > {MAX_ANISOTROPY:g}); the "
                         "model works on near-isotropic CBCT: resample the volume to isotropic voxels first", path)
    size = image.GetSize()
    if min(size) < 2:
        raise InputError(f"is a single slice thick (size {'x'.join(map(str, size))}); a 3D volume is expected",
                         path)
    extent = spacing * np.asarray(size)
    if min(size) < MIN_VOXELS or extent.min() < MIN_EXTENT_MM:
        mm = " x ".join(f"{e:.3g}" for e in extent)
        raise InputError(f"is too small to hold a tooth: {'x'.join(map(str, size))} voxels, {mm} mm; a volume "
                         f"needs at least {MIN_VOXELS} voxels and {MIN_EXTENT_MM:g} mm along every axis", path)
