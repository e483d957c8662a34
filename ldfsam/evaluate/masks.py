"""Reading masks for evaluation: 3D label volumes (SimpleITK) and 2D mask images (Pillow), with their spacing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..data.images import IMAGE_SUFFIXES
from ..data.volume import VOLUME_SUFFIXES
from ..errors import InputError


@dataclass
class Mask:
    """A label array in array axis order with the voxel size (mm) along each array axis."""

    array: np.ndarray
    spacing: Tuple[float, ...]
    path: Path
    origin: Optional[Tuple[float, ...]] = None
    direction: Optional[Tuple[float, ...]] = None


def case_id(path: Path) -> Optional[str]:
    """The file name without its mask suffix, or None when the file is not a mask format we read."""
    name = path.name
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def list_masks(folder: Path) -> Dict[str, Path]:
    """Case id -> file of every mask file directly in ``folder``; duplicate case ids are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        cid = case_id(path)
        if cid is None or not path.is_file() or path.name.startswith("."):
            continue
        if cid in found:
            raise InputError(f"two files for case '{cid}': {found[cid].name} and {path.name}", folder)
        found[cid] = path
    return found


def read_mask(path: Path, spacing_2d: float = 1.0) -> Mask:
    """Read a label volume or a 2D mask image.

    8-bit images whose values go above 1 (JPEG masks) are thresholded at 127 to a 0/1 mask; other images keep
    their values as labels. 2D images get ``spacing_2d`` per pixel (so distances are in pixels by default).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        from ..data.images import read_label_image

        return Mask(read_label_image(path), (float(spacing_2d),) * 2, path)
    import SimpleITK as sitk

    from ..data.integrity import check_volume_file

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        check_volume_file(path)  # cut short or corrupt, said as such
        raise InputError(f"not a readable image volume ({str(e).strip().splitlines()[-1]})", path) from None
    check_volume_file(path, img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("a label map must have one component per voxel (a multi-layer segmentation "
                         "file is not supported; export a label map)", path)
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3 and img.GetDimension() == 3:
        spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    elif arr.ndim == 2:
        spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    else:
        raise InputError(f"expected a 2D or 3D label map, got {arr.ndim} dimensions", path)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("label map has non-finite values", path)
        if not np.all(arr == np.round(arr)):
            raise InputError("label map has non-integer values (is this an image rather than a label map?)", path)
    return Mask(arr.astype(np.int32), spacing, path, tuple(img.GetOrigin()), tuple(img.GetDirection()))


def check_same_grid(pred: Mask, ref: Mask) -> None:
    """Raise InputError naming the prediction when it is not on the reference's voxel grid."""
    if pred.array.shape != ref.array.shape:
        raise InputError(f"shape {pred.array.shape} differs from the reference's {ref.array.shape} "
                         f"({ref.path.name})", pred.path)
    if not np.allclose(pred.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
        raise InputError(f"spacing {pred.spacing} differs from the reference's {ref.spacing} ({ref.path.name})",
                         pred.path)
    if pred.origin is not None and ref.origin is not None and not np.allclose(pred.origin, ref.origin, atol=1e-3):
        raise InputError(f"origin {pred.origin} differs from the reference's {ref.origin} ({ref.path.name})",
                         pred.path)


def class_masks(label: np.ndarray, classes: List[Tuple[str, List[int]]]) -> Dict[str, np.ndarray]:
    """Boolean mask per named class, each class being a list of label values."""
    return {name: np.isin(label, values) for name, values in classes}
