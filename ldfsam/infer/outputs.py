"""Segmentation outputs, each written through a temporary file and a rename: a NIfTI (or any SimpleITK format)
label map, a 3D Slicer segmentation (.seg.nrrd with names, colours and SNOMED CT terminology), a probability map.

``reference`` is the input image or its ``ldfsam.data.preprocess.Grid``: the outputs take its size, spacing,
origin and direction exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, check_writable
from ..errors import OutputError, exists_already

# Slicer terminology: category "Anatomical Structure", type "Tooth" (SNOMED CT).
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
CATEGORY = ["SCT", "123037004", "Anatomical Structure"]
TOOTH = ["SCT", "38199008", "Tooth"]
TOOTH_COLOR = (0.98, 0.95, 0.80)  # ivory
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SEG_SUFFIX = ".seg.nrrd"


def output_kind(path: Path) -> str:
    """"seg" for .seg.nrrd, "labelmap" for .nii/.nii.gz/.nrrd/.mha; OutputError for anything else."""
    name = Path(path).name.lower()
    if name.endswith(SEG_SUFFIX):
        return "seg"
    if name.endswith(LABEL_SUFFIXES):
        return "labelmap"
    raise OutputError(f"unknown output format; use .nii.gz or .nii (label map) or {SEG_SUFFIX} (Slicer "
                      "segmentation)", path)


def _files_written(path: Path) -> List[Path]:
    """The files an output path becomes: a MetaImage header also writes its compressed data beside it."""
    path = Path(path)
    return [path, path.with_suffix(".zraw")] if path.name.lower().endswith(".mhd") else [path]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and a.samefile(b)  # hard links too
    return False


def check_outputs(outputs: Mapping[str, Optional[Union[str, Path]]], input: Union[str, Path],
                  force: bool) -> None:
    """Refuse, before any work, every output (argument name -> path; None: not asked for) that would destroy
    the input (the input itself, a link to it, its data file, a file inside its DICOM folder), that two outputs
    share, whose format is unknown, that is a folder, that exists already (unless ``force``), or that cannot be
    written where it is. With or without ``force`` an input is never overwritten."""
    from ..data.integrity import data_files

    source = Path(input)
    protected = [source, *data_files(source)] if source.is_file() else []
    folder = source.resolve() if source.is_dir() else None
    taken: dict = {}
    for argument, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        for written in _files_written(path):
            if any(_same_file(written, p) for p in protected):
                raise OutputError(f"is the input {'' if written == path else f'(its data file {written.name}) '}"
                                  "and would be overwritten by the result; choose another output name", path)
            if folder is not None and written.resolve().is_relative_to(folder):
                raise OutputError(f"is inside the input DICOM folder {source}; write the result elsewhere", path)
            real = written.resolve()
            if real in taken:
                raise OutputError(f"is given for both {taken[real]} and {argument}; give each its own file", path)
            taken[real] = argument
        if path.is_dir():
            raise OutputError("is a folder; give a file name for the output", path)
        if argument == "probabilities" and output_kind(path) != "labelmap":
            raise OutputError("probability maps are written as .nii.gz, .nii, .nrrd or .mha", path)
        output_kind(path)
        if not force and any(w.exists() for w in _files_written(path)):
            raise exists_already(next(w for w in _files_written(path) if w.exists()), "force")
        check_writable(path)


@contextlib.contextmanager
def _writing(path: Path, overwrite: bool) -> Iterator[Path]:
    """atomic_path, with the writer's own failures (full disk, say) as an OutputError naming ``path``."""
    with atomic_path(path, overwrite=overwrite, argument="force") as tmp:
        try:
            yield tmp
        except (OSError, RuntimeError) as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise OutputError(f"cannot be written ({first})", path) from None


def _grid(reference):
    """A Grid (size, spacing, origin, direction) from an image or a Grid."""
    from ..data.preprocess import Grid

    return reference if isinstance(reference, Grid) else Grid.of(reference)


def _image(array: np.ndarray, reference) -> sitk.Image:
    img = sitk.GetImageFromArray(array, isVector=False)
    _grid(reference).apply(img)
    return img


def write_label_map(path: Path, labels: np.ndarray, reference, overwrite: bool = False) -> Path:
    """``labels`` (z×y×x, 0 = background) on ``reference``'s grid, compressed, atomically."""
    from ..data.volume import write_volume

    labels = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.uint16)
    return write_volume(_image(labels, reference), path, overwrite=overwrite, argument="force")


def write_probabilities(path: Path, probabilities: np.ndarray, reference,
                        overwrite: bool = False) -> Path:
    """Tooth probability (z×y×x float in [0, 1]) on ``reference``'s grid, as float32, atomically."""
    from ..data.volume import write_volume

    return write_volume(_image(probabilities.astype(np.float32, copy=False), reference), path,
                        overwrite=overwrite, argument="force")


def _palette(n: int) -> List[Tuple[float, float, float]]:
    """Distinct, light colours for individual teeth (golden-ratio hues)."""
    import colorsys

    return [tuple(round(c, 4) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.45, 0.95)) for i in range(n)]


def ijk_to_lps(reference) -> np.ndarray:
    """4×4 matrix from voxel (i, j, k) to LPS millimetres (SimpleITK's physical space is LPS)."""
    grid = _grid(reference)
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(grid.spacing)
    m[:3, 3] = grid.origin
    return m


def write_segmentation(path: Path, labels: np.ndarray, reference, names: Optional[Sequence[str]] = None,
                       overwrite: bool = False) -> Path:
    """A Slicer .seg.nrrd: one segment per label value 1..n of ``labels`` (z×y×x), named ``names[i-1]``
    (default "Tooth" or "Tooth N"), each with the SNOMED CT terminology of a tooth."""
    import slicerio

    n = int(labels.max(initial=0))
    if names is None:
        names = ["Tooth"] if n <= 1 else [f"Tooth {i}" for i in range(1, n + 1)]
    n = max(n, len(names))
    if len(names) != n:
        raise ValueError(f"{len(names)} segment names for {n} labels")
    dtype = np.uint8 if n < 256 else np.uint16
    # slicerio indexes voxels (i, j, k); the transposed view of the z×y×x array is that, without a copy.
    labels = np.ascontiguousarray(labels.astype(dtype, copy=False))
    voxels = labels.transpose(2, 1, 0)
    boxes = _extents(labels, n) if n > 1 else [_extent(labels)]
    colors = [TOOTH_COLOR] if n == 1 else _palette(n)
    segments = []
    for i in range(n):
        segments.append({
            "id": f"Segment_{i + 1}",
            "name": names[i],
            "nameAutoGenerated": False,
            "color": list(colors[i]),
            "colorAutoGenerated": False,
            "labelValue": i + 1,
            "layer": 0,
            "extent": boxes[i],
            "terminology": {"contextName": TERMINOLOGY_CONTEXT, "category": CATEGORY, "type": TOOTH},
        })
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps(reference),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    with _writing(path, overwrite) as tmp:
        # zlib level 1: a tooth mask is mostly zeros, so level 6 only shrinks a 420×650² mask from 1.1 to 0.36 MB
        # but takes 1.3 s instead of 0.7 s to write it.
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)
    return Path(path)


def _extent(labels: np.ndarray) -> List[int]:
    """The extent [i0, i1, j0, j1, k0, k1] of all nonzero voxels (a single segment)."""
    from .postprocess import bounding_box

    box = bounding_box(labels)
    if box is None:
        return [0, -1, 0, -1, 0, -1]
    return [v for s in box[::-1] for v in (int(s.start), int(s.stop) - 1)]


def _extents(labels: np.ndarray, n: int) -> List[List[int]]:
    """Each label's extent [i0, i1, j0, j1, k0, k1] (inclusive) from the contiguous z×y×x array: scanning it in
    memory order is ~10× faster than scanning its transposed (i, j, k) view."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, max_label=n)
    out = []
    for b in boxes:
        if b is None:
            out.append([0, -1, 0, -1, 0, -1])
        else:
            out.append([v for s in b[::-1] for v in (int(s.start), int(s.stop) - 1)])
    return out
