"""Image grids (size, spacing, origin, direction): comparing two, describing one, and a label map on its
image's grid."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

PathLike = Union[str, Path]


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within float precision of the formats)."""
    if a.GetSize() != b.GetSize():
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=tol, atol=0):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tol * max(1.0, float(sa.max())) * 10):
        return False
    return bool(np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol))


def describe_grid(image: sitk.Image) -> str:
    """A short human description of an image grid, for error messages."""
    size = "x".join(map(str, image.GetSize()))
    spacing = ", ".join(f"{s:.4g}" for s in image.GetSpacing())
    origin = ", ".join(f"{o:.4g}" for o in image.GetOrigin())
    return f"size {size}, spacing ({spacing}) mm, origin ({origin})"


def label_on_image_grid(labels: sitk.Image, image: sitk.Image, label_path: PathLike) -> sitk.Image:
    """Return ``labels`` on ``image``'s grid, or raise when they do not describe the same voxels.

    A label map cropped to its segments (as Slicer may save a ``.seg.nrrd``) is padded back onto the image grid
    when its voxels coincide with image voxels (same spacing and direction, origin a whole number of voxels away).
    """
    if same_grid(labels, image):
        out = sitk.Image(labels)
        out.CopyInformation(image)
        return out
    ok = (np.allclose(labels.GetSpacing(), image.GetSpacing(), rtol=1e-4)
          and np.allclose(labels.GetDirection(), image.GetDirection(), atol=1e-4))
    if ok:
        index = np.array(image.TransformPhysicalPointToContinuousIndex(labels.GetOrigin()))
        ok = bool(np.allclose(index, np.round(index), atol=1e-3))
    if not ok:
        raise InputError(f"label map grid ({describe_grid(labels)}) does not match its image's grid "
                         f"({describe_grid(image)})", label_path)
    return sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def label_image_like(labels: Union[np.ndarray, sitk.Image], reference: sitk.Image) -> sitk.Image:
    """A label array (z, y, x) or image as an unsigned integer image on exactly ``reference``'s grid."""
    if isinstance(labels, sitk.Image):
        if labels.GetSize() != reference.GetSize():
            raise ValueError(f"label image size {labels.GetSize()} differs from the reference {reference.GetSize()}")
        labels = sitk.GetArrayViewFromImage(labels)
    labels = np.asarray(labels)
    expected = tuple(reversed(reference.GetSize()))
    if labels.shape != expected:
        raise ValueError(f"label array shape {labels.shape} differs from the reference (z, y, x) {expected}")
    hi = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label values must be non-negative")
    dtype = np.uint8 if hi < 256 else np.uint16
    out = sitk.GetImageFromArray(labels.astype(dtype, copy=False))
    out.CopyInformation(reference)
    return out
