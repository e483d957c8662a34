"""Writing volumes and label maps: atomically, by suffix, never over a file unless asked; a label map on exactly
its reference image's grid, a ``.seg.nrrd`` with Slicer's segment fields."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, cannot_write
from ..errors import OutputError, exists_already, itk_message
from .image_grid import label_image_like
from .suffixes import volume_suffix

PathLike = Union[str, Path]

LABEL_WRITE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _segment_metadata(image: sitk.Image, names: Optional[Dict[int, str]]) -> None:
    """Slicer segment fields so a ``.seg.nrrd`` opens as named segments, one per label value."""
    array = sitk.GetArrayViewFromImage(image)
    values = [int(v) for v in np.unique(array) if v != 0]
    if names:
        values = sorted(set(values) | {int(k) for k in names})
    size = image.GetSize()
    extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
    rng = np.random.default_rng(0)
    for i, value in enumerate(values):
        color = rng.uniform(0.2, 1.0, 3)
        name = (names or {}).get(value, f"label {value}")
        image.SetMetaData(f"Segment{i}_ID", f"Segment_{value}")
        image.SetMetaData(f"Segment{i}_Name", str(name))
        image.SetMetaData(f"Segment{i}_LabelValue", str(value))
        image.SetMetaData(f"Segment{i}_Layer", "0")
        image.SetMetaData(f"Segment{i}_Color", " ".join(f"{c:.4f}" for c in color))
        image.SetMetaData(f"Segment{i}_Extent", extent)
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")


def write_volume(image: sitk.Image, path: PathLike, overwrite: bool = False, compress: bool = True,
                 argument: str = "overwrite") -> Path:
    """Write ``image`` to ``path`` atomically (format from the suffix); refuses to overwrite unless asked
    (``argument``: how the caller asks). A failure to write is an OutputError naming ``path``."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise OutputError("unsupported output type; use .nii.gz, .nii, .nrrd, .seg.nrrd, .mha or .mhd", path)
    if path.exists() and not overwrite:
        raise exists_already(path, argument)
    if suffix == ".mhd":
        _write_mhd_atomic(image, path, overwrite, compress, argument)
        return path
    with atomic_path(path, overwrite=overwrite, argument=argument) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as e:
            raise OutputError(f"cannot be written ({itk_message(e)})", path) from None
    return path


def _write_mhd_atomic(image: sitk.Image, path: Path, overwrite: bool, compress: bool, argument: str) -> None:
    # A MetaImage header names its data file, so both are written under their final names in a private folder
    # beside the target and moved into place data first: a reader never finds a header without its data.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        sitk.WriteImage(image, str(tmpdir / path.name), useCompression=compress)
        files = sorted(tmpdir.iterdir(), key=lambda p: p.suffix == ".mhd")
        for f in files:
            if not overwrite and (path.parent / f.name).exists():
                raise exists_already(path.parent / f.name, argument)
        for f in files:
            os.replace(f, path.parent / f.name)
    except RuntimeError as e:
        raise OutputError(f"cannot be written ({itk_message(e)})", path) from None
    except OSError as e:
        raise cannot_write(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmpdir)


def write_label_volume(labels: Union[np.ndarray, sitk.Image], reference: sitk.Image, path: PathLike,
                       overwrite: bool = False, segment_names: Optional[Dict[int, str]] = None) -> Path:
    """Write a label map (array z×y×x or image) on exactly ``reference``'s grid to ``path``, atomically.

    ``.seg.nrrd`` files get Slicer segment fields (one segment per label value, named by ``segment_names``).
    """
    image = label_image_like(labels, reference)
    if volume_suffix(path) == ".seg.nrrd":
        _segment_metadata(image, segment_names)
    return write_volume(image, path, overwrite=overwrite)
