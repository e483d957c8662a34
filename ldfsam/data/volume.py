"""Reading and writing volumes with SimpleITK: NIfTI, NRRD (incl. Slicer ``.seg.nrrd``), MetaImage, DICOM series.

Every read is validated (3D, scalar, non-empty, finite and, for images, not constant) and every problem raises
:class:`~ldfsam.errors.InputError` naming the file. A label map written for an input lies exactly on the input's
voxel grid (size, origin, spacing, direction), is written atomically and never overwrites a file unless asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, cannot_write
from ..errors import Arg, ConfigError, InputError, OutputError, exists_already
from .integrity import check_volume_file, nifti_voxel_size
from .suffixes import VOLUME_SUFFIXES, strip_volume_suffix, volume_suffix  # noqa: F401 (this module's names too)

PathLike = Union[str, Path]

LABEL_WRITE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_FORMAT_NAMES = {".seg.nrrd": "Slicer segmentation", ".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD",
                 ".mha": "MetaImage", ".mhd": "MetaImage"}


@contextlib.contextmanager
def _keep_locale():
    """GDCM switches the whole process to the "C" locale (ASCII text I/O): put the caller's locale back."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


def is_dicom_folder(path: PathLike) -> bool:
    """True when ``path`` is a folder that holds at least one DICOM series."""
    path = Path(path)
    if not path.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" is the answer, not a warning
    try:
        with _keep_locale():
            return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    except RuntimeError:
        return False
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    # ITK messages start with a file:line banner; the last non-empty line is the useful part.
    lines = [t.strip() for t in text if t.strip()]
    return lines[-1] if lines else type(e).__name__


def _read_dicom_series(path: Path, series_id: Optional[str]) -> sitk.Image:
    with _keep_locale():
        return _read_dicom_series_unguarded(path, series_id)


def _read_dicom_series_unguarded(path: Path, series_id: Optional[str]) -> sitk.Image:
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot list DICOM series ({_first_line(e)})", path) from None
    if not ids:
        raise InputError("folder holds no DICOM series (expected a folder of .dcm files of one scan)", path)
    if series_id is None:
        if len(ids) > 1:
            raise InputError(f"folder holds {len(ids)} DICOM series ({', '.join(ids)}); pick one with series_id",
                             path)
        series_id = ids[0]
    elif series_id not in ids:
        raise InputError(f"no DICOM series {series_id!r} in this folder (found {', '.join(ids)})", path)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"cannot read the DICOM series ({_first_line(e)})", path) from None
    _check_slice_positions(reader, len(files), path, ids)
    return image


def _check_slice_positions(reader: sitk.ImageSeriesReader, n: int, path: Path, ids: Sequence[str]) -> None:
    """Refuse a series with a missing slice (a gap of 1.5 or more times the usual spacing) or two slices at one
    position: GDCM leaves out a file it cannot read (cut short, say) and ITK would stack the rest regardless."""
    if n < 3:
        return
    try:
        row_col = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
        points = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
    except (RuntimeError, ValueError):
        return  # no position tags: nothing to compare
    if len(row_col) != 6 or points.shape != (n, 3):
        return
    normal = np.cross(row_col[:3], row_col[3:])
    z = np.sort(points @ normal)
    gaps = np.diff(z)
    usual = float(np.median(gaps))
    if usual <= 0:
        raise InputError(f"holds a DICOM series whose {n} slices are not at distinct positions", path)
    bad = np.flatnonzero((gaps > 1.5 * usual) | (gaps < 0.5 * usual))
    if bad.size == 0:
        return
    i = int(bad[0])
    listed = {Path(f).name for sid in ids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid)}
    unread = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"
                    and p.name not in listed)
    why = (f"; {len(unread)} file(s) could not be read as DICOM: {', '.join(unread[:5])}" if unread else "")
    raise InputError(f"holds a DICOM series with missing or misplaced slices: slices {i} and {i + 1} (of {n}) are "
                     f"{gaps[i]:.3g} mm apart where the others are {usual:.3g} mm apart{why}", path)


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
        raise InputError(f"cannot be read as a {_FORMAT_NAMES[suffix]} file ({_first_line(e)})", path) from None
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
        image = _read_dicom_series(path, series_id)
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


# -- geometry ----------------------------------------------------------------------------------------------------


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


# -- writing -----------------------------------------------------------------------------------------------------


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
            raise OutputError(f"cannot be written ({_first_line(e)})", path) from None
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
        raise OutputError(f"cannot be written ({_first_line(e)})", path) from None
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


def write_dicom_series(image: sitk.Image, folder: PathLike, series_description: str = "ldfsam") -> Sequence[Path]:
    """Write a 3D image as a DICOM series of int16 slices (for tests and demos of DICOM input)."""
    with _keep_locale():
        return _write_dicom_series(image, Path(folder), series_description)


def _write_dicom_series(image: sitk.Image, folder: Path, series_description: str) -> Sequence[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash((image.GetSize(), image.GetOrigin()))) % 10 ** 20)
    out = []
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|103e": series_description,
            "0020|000d": uid,
            "0020|000e": uid + ".1",
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
            "0020|0013": str(k + 1),
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        target = folder / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(target))
        writer.Execute(s)
        out.append(target)
    return out
