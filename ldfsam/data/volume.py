"""Reading volumes with SimpleITK: NIfTI, NRRD (incl. Slicer ``.seg.nrrd``), MetaImage, DICOM series.

Every read is validated (3D, scalar, non-empty, finite and, for images, not constant) and every problem raises
:class:`~ldfsam.errors.InputError` naming the file. A label map written for an input lies exactly on the input's
voxel grid (size, origin, spacing, direction), is written atomically and never overwrites a file unless asked.
Those parts live beside this module, and their names are importable from here too: ``dicom`` (DICOM series),
``image_grid`` (comparing grids, a label map on its image's grid), ``volume_writing`` (writing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import Arg, ConfigError, InputError, itk_message
from .dicom import is_dicom_folder, read_dicom_series, write_dicom_series
from .image_grid import describe_grid, label_image_like, label_on_image_grid, same_grid
from .integrity import check_volume_file, nifti_voxel_size
from .suffixes import VOLUME_SUFFIXES, strip_volume_suffix, volume_suffix
from .volume_writing import LABEL_WRITE_SUFFIXES, write_label_volume, write_volume

# Callers import these from here (reading and writing volumes is one subject to them).
__all__ = ["LABEL_WRITE_SUFFIXES", "VOLUME_SUFFIXES", "PathLike", "Spacing", "check_spacing", "describe_grid",
           "is_dicom_folder", "label_image_like", "label_on_image_grid", "read_volume", "same_grid",
           "strip_volume_suffix", "volume_suffix", "write_dicom_series", "write_label_volume", "write_volume"]

PathLike = Union[str, Path]

_FORMAT_NAMES = {".seg.nrrd": "Slicer segmentation", ".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD",
                 ".mha": "MetaImage", ".mhd": "MetaImage"}


def _read_file(path: Path) -> sitk.Image:
    suffix = volume_suffix(path)
    if suffix is None:
        raise InputError("unsupported file type; expected NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd), "
                         "MetaImage (.mha, .mhd) or a DICOM series folder", path)
    if not os.access(path, os.R_OK):
        raise InputError("is not readable (permission denied)", path)
    if path.stat().st_size == 0:
        raise InputError("is an empty file (0 bytes)", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        check_volume_file(path)  # a file cut short or corrupt gets that said rather than the reader's message
        raise InputError(f"cannot be read as a {_FORMAT_NAMES[suffix]} file ({itk_message(e)})", path) from None
    check_volume_file(path, image)
    return image


def _as_3d(image: sitk.Image, path: Path) -> sitk.Image:
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        # A 4D file with a single time point/component (common in NIfTI) is a 3D volume.
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
        dim, size = 3, image.GetSize()
    if dim == 2:
        raise InputError(f"is a 2D image ({size[0]}x{size[1]} pixels); a 3D volume is expected", path)
    if dim != 3:
        raise InputError(f"is a {dim}D image (size {'x'.join(map(str, size))}); a 3D volume is expected", path)
    if 0 in size:
        raise InputError(f"is empty (size {'x'.join(map(str, size))})", path)
    return image


def _merge_segmentation_layers(path: Path) -> sitk.Image:
    """A multi-layer Slicer ``.seg.nrrd`` (overlapping segments) as one label map, last segment on top."""
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    voxels = np.asarray(seg["voxels"])  # (layers, i, j, k) or (i, j, k)
    if voxels.ndim == 3:
        voxels = voxels[np.newaxis]
    segments = seg.get("segments", [])
    values = [int(s.get("labelValue", i + 1)) for i, s in enumerate(segments)]
    renumber = len(set(values)) != len(values)
    out = np.zeros(voxels.shape[1:], dtype=np.uint16)
    for i, s in enumerate(segments):
        mask = voxels[int(s.get("layer", 0))] == int(s.get("labelValue", i + 1))
        out[mask] = i + 1 if renumber else values[i]
    image = sitk.GetImageFromArray(np.ascontiguousarray(out.transpose(2, 1, 0)))
    m = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in m[:3, 3]])
    image.SetDirection([float(v) for v in (m[:3, :3] / spacing).ravel()])
    return image


Spacing = Sequence[float]


def check_spacing(spacing: Spacing, what: str = "spacing") -> tuple:
    """``spacing`` as three positive, finite floats (x, y, z) in mm; ConfigError naming ``what`` otherwise."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError("{}: give three positive voxel sizes in mm (x y z)", arguments=[Arg(what, spacing)])
    return values


def _check_stated_voxel_size(path: Path) -> None:
    """Refuse a NIfTI whose header gives a voxel size of 0 (or a negative or non-finite one): ITK would read it at
    1 mm, and the spacing decides every size in the pipeline (a dental CBCT has 0.2-0.4 mm voxels)."""
    try:
        size = nifti_voxel_size(path)
    except OSError:
        return  # the reader has already judged the file readable; nothing more to say here
    if size is None or all(np.isfinite(v) and v > 0 for v in size):
        return
    said = " x ".join(f"{v:g}" for v in size)
    raise InputError(f"states a voxel size of {said} mm in its header (pixdim); a voxel size must be positive, "
                     "and every size the segmentation uses follows from it. State the true voxel size: "
                     "`ldfsam segment --spacing X Y Z` (mm), or spacing=(x, y, z) in Python", path)


def read_volume(path: PathLike, label: bool = False, series_id: Optional[str] = None,
                spacing: Optional[Spacing] = None) -> sitk.Image:
    """Read and validate a 3D scalar volume from a file or a DICOM series folder.

    Images must be finite (no NaN/Inf) and not constant. With ``label=True`` the volume is a label map: whole,
    non-negative numbers (returned as an unsigned integer image); an all-background map is allowed.
    ``spacing``: the true voxel size (x, y, z) in mm, replacing the file's (a file whose header states a voxel
    size of 0 is refused without it).
    """
    if spacing is not None:
        spacing = check_spacing(spacing)
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        image = read_dicom_series(path, series_id)
    else:
        image = _read_file(path)
        if spacing is None and volume_suffix(path) in (".nii", ".nii.gz"):
            _check_stated_voxel_size(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        if label and volume_suffix(path) == ".seg.nrrd":
            image = _merge_segmentation_layers(path)
        else:
            raise InputError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (e.g. colour or "
                             "vector data); a scalar volume is expected", path)
    image = _as_3d(image, path)
    if spacing is not None:
        image.SetSpacing(spacing)
    array = sitk.GetArrayViewFromImage(image)
    lo, hi = array.min(), array.max()
    if array.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"has {bad} voxels that are NaN or infinite", path)
    if label:
        return _as_label_image(image, array, lo, hi, path)
    if lo == hi:
        raise InputError(f"is constant (every voxel is {lo}); nothing to segment", path)
    return image


def _as_label_image(image: sitk.Image, array: np.ndarray, lo, hi, path: Path) -> sitk.Image:
    if lo < 0:
        raise InputError(f"label map has negative values (minimum {lo})", path)
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise InputError("label map has fractional values; label values must be whole numbers", path)
    target = sitk.sitkUInt8 if hi < 256 else sitk.sitkUInt16 if hi < 65536 else sitk.sitkUInt32
    return image if image.GetPixelID() == target else sitk.Cast(image, target)
