"""The per-case preprocessing cache shared by both training phases.

Each case is preprocessed once into ``<cache>/<case_id>-<key>/``: ``image.npy`` (uint8, (z, y, x) or (z, y, x, 3)
for colour 2D images: the [0, 1] window quantised to 256 levels), ``classes.npy`` (uint8 class indices, same grid),
``boxes.npy`` (K×6 int32: slice, class 0-based, x_min, y_min, x_max, y_max) and ``meta.json``. The key hashes the
input files' size and modification time (every file of a DICOM series) and the preprocessing parameters, so a
changed input or parameter makes a new entry and the stale one is removed. An entry is built in a temporary
folder and renamed into place: an error or Ctrl-C never leaves a half-built entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import to_dict
from ..errors import InputError
from .boxes import instance_boxes
from .config import PreprocessConfig
from .labels import map_labels
from .layouts import Case

CACHE_VERSION = 1


def file_signature(path: Path) -> List[Any]:
    """(name, size, mtime_ns) of a file, of a MetaImage header and its data file, or of a DICOM folder's files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path] + [path.with_suffix(s) for s in (".raw", ".zraw") if path.suffix.lower() == ".mhd"]
    out = []
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def case_key(case: Case, cfg: PreprocessConfig, kind: str) -> str:
    """Hash of everything a cache entry depends on (model input sizes excluded: resizing happens on use)."""
    params = {k: v for k, v in to_dict(cfg).items() if k not in ("sam_size", "yolo_size")}
    doc = {"version": CACHE_VERSION, "kind": kind, "params": params, "image": file_signature(case.image),
           "label": file_signature(case.label) if case.label else None}
    review = _review_path(case)
    if review is not None:  # only then: the keys of ordinary cases stay what they were
        doc["review"] = file_signature(review)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CaseEntry:
    """A cached case: its folder and metadata; arrays are memory-mapped on demand."""

    case_id: str
    path: Path
    meta: Dict[str, Any]

    def image(self) -> np.ndarray:
        return np.load(self.path / "image.npy", mmap_mode="r")

    def classes(self) -> np.ndarray:
        return np.load(self.path / "classes.npy", mmap_mode="r")

    def boxes(self) -> np.ndarray:
        return np.load(self.path / "boxes.npy")

    def reviewed(self) -> Optional[np.ndarray]:
        """uint8 (z, y, x), 1 where a label counts (a partly reviewed case); None: every voxel counts."""
        if not self.meta.get("review"):
            return None
        return np.load(self.path / "reviewed.npy", mmap_mode="r")

    @property
    def review(self) -> Optional[Dict[str, Any]]:
        """A partly reviewed case's ``whole_slices`` (every voxel counts) and ``any_slices`` (some do)."""
        return self.meta.get("review") or None

    @property
    def num_slices(self) -> int:
        return int(self.meta["shape"][0])

    @property
    def teeth_slices(self) -> List[int]:
        return list(self.meta["foreground_slices"])


def _load_entry(path: Path) -> Optional[CaseEntry]:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not all((path / n).is_file() for n in ("image.npy", "classes.npy", "boxes.npy")):
        return None
    if meta.get("review") and not (path / "reviewed.npy").is_file():
        return None
    return CaseEntry(meta["case_id"], path, meta)


def _review_path(case: Case) -> Optional[Path]:
    """The case's review record (a training case written from a corrected result), when it has one."""
    if case.label is None or Path(case.image).is_dir():
        return None
    from .training_case import review_file

    path = review_file(case.image, case.case_id)
    return path if path.is_file() else None


def _reviewed_on_grid(case: Case, labels, prepared) -> Optional[np.ndarray]:
    """The review record's mask (1 = the label counts) on the working grid, or None when there is no record."""
    path = _review_path(case)
    if path is None:
        return None
    import SimpleITK as sitk

    from .preprocess import prepare_labels
    from .training_case import read_review

    record = read_review(path)
    mask = sitk.GetImageFromArray(record.mask(sitk.GetArrayViewFromImage(labels)))
    mask.CopyInformation(labels)
    return prepare_labels(mask, prepared).astype(np.uint8)


def _read_3d(case: Case, cfg: PreprocessConfig, strict: bool):
    from .preprocess import prepare_labels, prepare_volume, quantize, slice_axis
    from .volume import label_on_image_grid, read_volume

    image = read_volume(case.image)
    labels = label_on_image_grid(read_volume(case.label, label=True), image, case.label)
    prepared = prepare_volume(image, cfg)
    del image
    raw = prepare_labels(labels, prepared)
    classes, report = map_labels(raw, cfg, case.label, strict=strict)
    grid = prepared.grid
    extra = {"input_grid": to_dict(prepared.input_grid), "grid": to_dict(grid), "window": list(prepared.window),
             "spacing": list(grid.spacing), "slice_axis": slice_axis(grid)}
    reviewed = _reviewed_on_grid(case, labels, prepared)
    if reviewed is not None:
        extra["_reviewed"] = reviewed
    return quantize(prepared.array), classes, raw, report, extra


def _read_2d(case: Case, cfg: PreprocessConfig, strict: bool):
    from .images import binary_mask, read_grey_mask, read_image

    image, mask = read_image(case.image), read_grey_mask(case.label)
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                         f"{image.shape[1]}x{image.shape[0]} ({case.image.name})", case.label)
    if image.ndim == 3 and np.ptp(image.astype(np.int16), axis=2).max() == 0:
        image = image[..., 0]  # a grey image stored as RGB
    if image.max() == image.min():
        raise InputError("image is constant; nothing to segment", case.image)
    # Masks are binary: JPEG compression noise is removed by the threshold; 0/1 masks are taken as they are.
    binary = binary_mask(mask).astype(np.uint8)
    classes, report = map_labels(binary, cfg, case.label, strict=strict)
    extra = {"size": [int(image.shape[1]), int(image.shape[0])], "colour": bool(image.ndim == 3)}
    return image[None], classes[None], binary[None], report, extra


def build_case(case: Case, cfg: PreprocessConfig, root: Path, kind: str, strict_labels: bool = False) -> CaseEntry:
    """Preprocess one case into the cache (atomically), or return its valid existing entry."""
    if case.label is None:
        raise InputError("has no label file; training data needs one", case.image)
    root = Path(root)
    key = case_key(case, cfg, kind)
    final = root / f"{case.case_id}-{key}"
    entry = _load_entry(final)
    if entry is not None:
        return entry
    root.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a damaged entry (e.g. from a foreign tool): rebuild it
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.case_id}-{key}.", suffix=".tmp", dir=root))
    try:
        reader = _read_3d if kind == "3d" else _read_2d
        image, classes, raw, report, extra = reader(case, cfg, strict_labels)
        num_classes = len(cfg.class_names)
        nz = classes.shape[0]
        fg = np.flatnonzero(classes.reshape(nz, -1).any(axis=1))
        rows = []
        for z in fg:
            for b in instance_boxes(classes[z], num_classes, instances=raw[z]):
                rows.append((int(z), *[int(v) for v in b]))
        boxes = np.array(rows, np.int32).reshape(-1, 6)
        np.save(tmp / "image.npy", image)
        np.save(tmp / "classes.npy", classes)
        np.save(tmp / "boxes.npy", boxes)
        reviewed = extra.pop("_reviewed", None)
        if reviewed is not None:
            np.save(tmp / "reviewed.npy", reviewed)
            flat = reviewed.reshape(nz, -1)
            extra["review"] = {"whole_slices": [int(z) for z in np.flatnonzero(flat.all(axis=1))],
                               "any_slices": [int(z) for z in np.flatnonzero(flat.any(axis=1))],
                               "reviewed_fraction": float(flat.mean()) if flat.size else 0.0,
                               # teeth that were reviewed: what decides whether a slice is a slice with teeth
                               "foreground_slices": [int(z) for z in np.flatnonzero(
                                   ((classes.reshape(nz, -1) > 0) & (flat > 0)).any(axis=1))]}
        meta = {"case_id": case.case_id, "kind": kind, "image_file": str(case.image), "label_file": str(case.label),
                "shape": list(image.shape), "foreground_slices": [int(z) for z in fg], "num_boxes": int(len(boxes)),
                "label_counts": {str(k): v for k, v in report.counts.items()},
                "unexpected_labels": {str(k): v for k, v in report.unexpected.items()}, **extra}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if _load_entry(final) is None:  # lost a race against a broken entry: surface the problem
                raise
        for stale in root.glob(f"{case.case_id}-*"):
            if stale != final and stale.is_dir() and re.fullmatch(r"[0-9a-f]{16}", stale.name[len(case.case_id) + 1:]):
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    entry = _load_entry(final)
    assert entry is not None
    return entry


def clean_temporaries(root: Path) -> int:
    """Remove temporary folders left by a killed process (never a finished entry); returns how many."""
    n = 0
    for p in Path(root).glob(".*.tmp"):
        if p.is_dir() and re.fullmatch(r"\..+\.[a-z0-9_]+\.tmp", p.name):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n
