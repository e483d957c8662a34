"""DICOM series: finding one in a folder, reading it whole (no slice missing or doubled), and writing one (for
tests and demos of DICOM input). GDCM's change of the process locale is undone around every call."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, itk_message

PathLike = Union[str, Path]


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


def read_dicom_series(path: Path, series_id: Optional[str]) -> sitk.Image:
    with _keep_locale():
        return _read_dicom_series_unguarded(path, series_id)


def _read_dicom_series_unguarded(path: Path, series_id: Optional[str]) -> sitk.Image:
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot list DICOM series ({itk_message(e)})", path) from None
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
        raise InputError(f"cannot read the DICOM series ({itk_message(e)})", path) from None
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
