"""Finding the cases of a dataset folder: image volumes paired with label volumes, or 2D images with masks.

3D layouts (first match wins):
- nnU-Net: ``imagesTr/X_0000.nii.gz`` + ``labelsTr/X.nii.gz`` (and ``imagesTs``/``labelsTs``);
- ``images/`` + ``labels/`` (or ``masks/``, ``segmentations/``), paired by name (label names may carry a suffix);
- flat: ``X.nii.gz`` with ``X_label.nii.gz`` (also ``_labels``, ``-label``, ``_seg``, ``_mask``,
  ``_segmentation``, ``_gt``) or ``X.seg.nrrd``; a sub-folder holding a DICOM series is an image named after it.
2D layouts: an image folder (``images``, ``imgs``, ``*_Input``) and a mask folder (``masks``, ``labels``,
``annotations``, ``*GroundTruth``), paired by name where the mask may end in ``_segmentation`` (ISIC 2018),
``_binary`` (MMOTU, preferred over a colour annotation of the same name), ``_mask``, ``_gt`` or ``_label``.
Unpaired images and masks are skipped and reported; two cases with one name are an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InputError
from .volume import is_dicom_folder, strip_volume_suffix, volume_suffix

LABEL_SUFFIXES = ("_labels", "_label", "-labels", "-label", "_segmentation", "_seg", "_mask", "_gt")
MASK_SUFFIXES = ("_binary", "_segmentation", "_mask", "_gt", "_label", "_labels")
IMAGE_2D_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_IMAGE_DIRS = ("images", "imgs", "image", "img")
_LABEL_DIRS = ("labels", "label", "masks", "mask", "segmentations", "segmentation", "annotations", "gt")


@dataclass(frozen=True)
class Case:
    """One sample: its ID, image (file or DICOM folder) and label/mask file (None when unlabelled)."""

    case_id: str
    image: Path
    label: Optional[Path]


@dataclass
class Discovery:
    """The cases of a dataset folder, its layout name and the files skipped (path, reason)."""

    cases: List[Case]
    layout: str
    kind: str  # "3d" or "2d"
    skipped: List[Tuple[Path, str]]


def _children(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _find_dir(folder: Path, names, contains: Optional[str] = None) -> Optional[Path]:
    for p in _children(folder):
        if p.is_dir() and (p.name.lower() in names or (contains and contains.lower() in p.name.lower())):
            return p
    return None


def _strip_label_suffix(stem: str, suffixes) -> Optional[str]:
    low = stem.lower()
    for s in suffixes:
        if low.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return None


def _add(table: Dict[str, Path], cid: str, path: Path, what: str = "images") -> None:
    if cid in table:
        raise InputError(f"two {what} share the case name {cid!r} (also {table[cid]})", path)
    table[cid] = path


def _check_unique(cases: List[Case]) -> List[Case]:
    seen: Dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise InputError(f"two images share the case name {c.case_id!r} (also {seen[c.case_id]})", c.image)
        seen[c.case_id] = c.image
    return sorted(cases, key=lambda c: c.case_id)


def _pair(images: Dict[str, Path], labels: Dict[str, Path], require_labels: bool,
          skipped: List[Tuple[Path, str]]) -> List[Case]:
    cases = []
    for cid, img in images.items():
        lab = labels.get(cid)
        if lab is None and require_labels:
            skipped.append((img, "no label file pairs with this image"))
            continue
        cases.append(Case(cid, img, lab))
    for cid, lab in labels.items():
        if cid not in images:
            skipped.append((lab, "no image pairs with this label file"))
    return _check_unique(cases)


def _volume_entries(folder: Path) -> List[Path]:
    return [p for p in _children(folder) if (p.is_file() and volume_suffix(p)) or is_dicom_folder(p)]


def _nnunet(folder: Path, require_labels: bool, skipped) -> Optional[List[Case]]:
    img_dirs = [d for d in ("imagesTr", "imagesTs") if (folder / d).is_dir()]
    if not img_dirs:
        return None
    cases: List[Case] = []
    for d in img_dirs:
        images: Dict[str, Path] = {}
        for p in _volume_entries(folder / d):
            stem = strip_volume_suffix(p)
            m = re.match(r"^(.*)_(\d{4})$", stem)
            if m and m.group(2) != "0000":
                skipped.append((p, "extra input channel; only channel 0000 is used"))
                continue
            _add(images, m.group(1) if m else stem, p)
        lab_dir = folder / d.replace("images", "labels")
        labels: Dict[str, Path] = {}
        for p in _volume_entries(lab_dir) if lab_dir.is_dir() else []:
            _add(labels, strip_volume_suffix(p), p, "label files")
        cases += _pair(images, labels, require_labels and d == "imagesTr", skipped)
    return _check_unique(cases)


def _label_id(p: Path) -> str:
    stem = strip_volume_suffix(p)
    return _strip_label_suffix(stem, LABEL_SUFFIXES) or stem


def _images_labels(folder: Path, require_labels: bool, skipped) -> Optional[List[Case]]:
    img_dir = _find_dir(folder, _IMAGE_DIRS)
    lab_dir = _find_dir(folder, _LABEL_DIRS)
    if img_dir is None or lab_dir is None or not _volume_entries(img_dir):
        return None
    images: Dict[str, Path] = {}
    for p in _volume_entries(img_dir):
        _add(images, strip_volume_suffix(p), p)
    labels: Dict[str, Path] = {}
    for p in _volume_entries(lab_dir):
        stem = strip_volume_suffix(p)
        _add(labels, stem if stem in images else _label_id(p), p, "label files")
    return _pair(images, labels, require_labels, skipped)


def _flat(folder: Path, require_labels: bool, skipped) -> List[Case]:
    entries = _volume_entries(folder)
    images: Dict[str, Path] = {}
    labels: Dict[str, Path] = {}
    names = {strip_volume_suffix(p) for p in entries}
    for p in entries:
        stem = strip_volume_suffix(p)
        base = _strip_label_suffix(stem, LABEL_SUFFIXES)
        if volume_suffix(p) == ".seg.nrrd":
            _add(labels, stem, p, "label files")
        elif base is not None and base in names:
            _add(labels, base, p, "label files")
        else:
            _add(images, stem, p)
    return _pair(images, labels, require_labels, skipped)


def find_volume_cases(folder: Path, require_labels: bool = True) -> Discovery:
    """The 3D cases of ``folder`` (see the module docstring for the layouts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    skipped: List[Tuple[Path, str]] = []
    for name, finder in (("nnunet", _nnunet), ("images+labels", _images_labels)):
        cases = finder(folder, require_labels, skipped)
        if cases is not None:
            return Discovery(cases, name, "3d", skipped)
    return Discovery(_flat(folder, require_labels, skipped), "flat", "3d", skipped)


def _image_2d_entries(folder: Path) -> List[Path]:
    return [p for p in _children(folder) if p.is_file() and p.suffix.lower() in IMAGE_2D_SUFFIXES]


def find_image_cases(folder: Path, require_labels: bool = True) -> Discovery:
    """The 2D cases of ``folder``: an image folder and a mask folder paired by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    img_dir = _find_dir(folder, _IMAGE_DIRS, contains="_input")
    mask_dir = _find_dir(folder, _LABEL_DIRS, contains="groundtruth")
    if img_dir is None:
        raise InputError("no image folder found (expected images/ with masks/, or ISIC-style *_Input/ with "
                         "*_GroundTruth/)", folder)
    skipped: List[Tuple[Path, str]] = []
    images: Dict[str, Path] = {}
    for p in _image_2d_entries(img_dir):
        _add(images, p.stem, p)
    masks: Dict[str, Path] = {}
    if mask_dir is not None:
        rank: Dict[str, int] = {}
        for p in _image_2d_entries(mask_dir):
            base = _strip_label_suffix(p.stem, MASK_SUFFIXES)
            cid, r = (p.stem, 1) if p.stem in images or base is None else (base, 0)
            if base is not None and base in images and p.stem.lower().endswith("_binary"):
                cid, r = base, 0  # MMOTU: the binary mask wins over the colour annotation
            if cid in masks and rank[cid] <= r:
                continue
            masks[cid], rank[cid] = p, r
    layout = "isic" if "_input" in img_dir.name.lower() else "images+masks"
    return Discovery(_pair(images, masks, require_labels, skipped), layout, "2d", skipped)


def detect_kind(folder: Path) -> str:
    """'3d' when the folder holds volumes (any layout), '2d' when it holds 2D images with masks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    for d in [folder] + [p for p in _children(folder) if p.is_dir()]:
        if any(p.is_file() and volume_suffix(p) for p in _children(d)):
            return "3d"
    img_dir = _find_dir(folder, _IMAGE_DIRS, contains="_input")
    if img_dir is not None and _image_2d_entries(img_dir):
        return "2d"
    if any(is_dicom_folder(p) for p in _children(folder) if p.is_dir()):
        return "3d"
    raise InputError("holds no volumes (.nii.gz, .nrrd, .mha, DICOM series) and no images/ + masks/ folders",
                     folder)


def find_cases(folder: Path, kind: str = "auto", require_labels: bool = True) -> Discovery:
    kind = detect_kind(folder) if kind == "auto" else kind
    if kind == "3d":
        return find_volume_cases(folder, require_labels)
    if kind == "2d":
        return find_image_cases(folder, require_labels)
    raise ValueError(f"kind must be auto, 3d or 2d, not {kind!r}")
