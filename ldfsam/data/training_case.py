"""A training case from a corrected result: the volume, its segmentation and a review record.

``add_training_case`` writes three files into a training folder, in the flat layout ``ldfsam prepare`` reads::

    CASE.review.json     the review record (format ``ldfsam-review``): where each label came from, what was reviewed
    CASE_label.nii.gz    the segmentation as a label map on the volume's grid (a ``.seg.nrrd`` is merged into one)
    CASE.nii.gz          the volume

Partly reviewed volumes are the normal case: a clinician checks some slices or some teeth, not all. Only the
reviewed voxels count as labels; every other voxel is *ignored* by the losses, not taken as background:

* a reviewed slice (index K of the volume's third index axis, i.e. ``array[K]`` of the (z, y, x) array, Slicer's
  IJK slice K) counts whole: its labelled voxels are teeth, the rest is background;
* a reviewed structure (a label value) counts with its voxels and a one-voxel shell around them (its boundary was
  checked), wherever it lies;
* ``all`` reviewed: the whole volume counts (an ordinary, fully labelled case).

``ldfsam prepare`` turns the record into a per-voxel mask on its working grid (``reviewed.npy`` in the case's cache
entry): Phase 1 uses only wholly reviewed slices for its boxes, Phase 2 masks its loss per pixel.

The files are written under temporary names and put in place with hard links, which never replace an existing
file, in the order record, label map, volume: a folder never holds a volume with its label map but without its
record (which would make an unreviewed result count as fully reviewed). An existing case is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import InputError, OutputError

PathLike = Union[str, Path]
REVIEW_FORMAT = "ldfsam-review"
REVIEW_SUFFIX = ".review.json"
ORIGINS = ("automatic", "prompted", "edited")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


@dataclass
class ReviewRecord:
    """Where each label of a case came from and what a person checked.

    ``slices``: reviewed slice indices (K, the third index axis of the volume as written), or None;
    ``structures``: reviewed label values; ``all_reviewed``: the whole volume was checked;
    ``origins``: label value -> "automatic", "prompted" or "edited"; ``names``: label value -> segment name.
    """

    slices: Optional[List[int]] = None
    structures: List[int] = field(default_factory=list)
    all_reviewed: bool = False
    origins: Dict[int, str] = field(default_factory=dict)
    names: Dict[int, str] = field(default_factory=dict)
    case_id: str = ""
    source: Dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict:
        return {"format": REVIEW_FORMAT, "version": 1, "case_id": self.case_id, "created": self.created,
                "source": dict(self.source),
                "reviewed": {"all": self.all_reviewed, "slices": self.slices, "slice_axis": "k",
                             "structures": [int(v) for v in self.structures]},
                "structures": {str(v): {"name": self.names.get(v, f"label {v}"),
                                        "origin": self.origins.get(v, "automatic"),
                                        "reviewed": self.all_reviewed or v in self.structures}
                               for v in sorted(set(self.origins) | set(self.names) | set(self.structures))}}

    @classmethod
    def from_json(cls, doc: dict, path: PathLike) -> ReviewRecord:
        if not isinstance(doc, dict) or doc.get("format") != REVIEW_FORMAT:
            raise InputError(f"is not a review record (format {REVIEW_FORMAT!r} expected)", path)
        rev = doc.get("reviewed") or {}
        try:
            slices = None if rev.get("slices") is None else sorted({int(k) for k in rev["slices"]})
            structures = sorted({int(v) for v in rev.get("structures") or []})
            info = {int(k): v for k, v in (doc.get("structures") or {}).items()}
        except (TypeError, ValueError) as e:
            raise InputError(f"has a bad reviewed list ({e})", path) from None
        return cls(slices=slices, structures=structures, all_reviewed=bool(rev.get("all", False)),
                   origins={k: str(v.get("origin", "automatic")) for k, v in info.items()},
                   names={k: str(v.get("name", "")) for k, v in info.items()}, case_id=str(doc.get("case_id", "")),
                   source=dict(doc.get("source") or {}), created=str(doc.get("created", "")))

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """The reviewed voxels (uint8 (z, y, x), 1 = counts) of a label map on the volume's own grid."""
        out = np.zeros(labels.shape, np.uint8)
        if self.all_reviewed:
            out[:] = 1
            return out
        for k in self.slices or []:
            if 0 <= k < labels.shape[0]:
                out[k] = 1
        if self.structures:
            from scipy import ndimage

            own = np.isin(labels, np.asarray(self.structures, labels.dtype))
            out[ndimage.binary_dilation(own, iterations=1)] = 1
        return out


def review_file(image: PathLike, case_id: str) -> Path:
    """Where the review record of a case lies: ``CASE.review.json`` beside its volume."""
    image = Path(image)
    return image.parent / f"{case_id}{REVIEW_SUFFIX}"


def read_review(path: PathLike) -> ReviewRecord:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot be read as a review record ({e})", path) from None
    return ReviewRecord.from_json(doc, path)


def parse_slices(spec: str) -> List[int]:
    """``"10-40,55"`` -> [10, ..., 40, 55] (inclusive ranges, 0-based slice indices)."""
    out = set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise InputError(f"slice list {spec!r}: {part!r} is not a slice index or a range a-b")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise InputError(f"slice list {spec!r}: range {part!r} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise InputError(f"slice list {spec!r} names no slice")
    return sorted(out)


def _link_into_place(tmp: Path, final: Path) -> None:
    # os.link never replaces an existing file: two writers racing for one name cannot overwrite each other.
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputError("exists already: a training case is never overwritten (choose another case id)",
                          final) from None
    except OSError as e:
        raise OutputError(f"cannot be written there ({e.strerror or e})", final) from None


def add_training_case(volume: PathLike, segmentation: PathLike, folder: PathLike, case_id: Optional[str] = None,
                      reviewed_slices: Optional[Sequence[int]] = None, reviewed_structures: Sequence[int] = (),
                      all_reviewed: bool = False, origins: Optional[Dict[int, str]] = None,
                      names: Optional[Dict[int, str]] = None) -> Dict[str, Path]:
    """Write one training case (volume, label map, review record) into ``folder``; returns the three paths.

    At least one of ``reviewed_slices``, ``reviewed_structures`` or ``all_reviewed`` must be given: a case with
    nothing reviewed teaches nothing. ``origins`` maps label values to automatic / prompted / edited.
    """
    from ..data.volume import label_on_image_grid, read_volume, strip_volume_suffix, write_label_volume, write_volume

    volume, segmentation, folder = Path(volume), Path(segmentation), Path(folder)
    case_id = case_id or strip_volume_suffix(volume)
    if not _CASE_ID.match(case_id):
        raise InputError(f"case id {case_id!r}: use letters, digits, '-', '_' or '.' (starting with a letter or "
                         "digit)")
    if not all_reviewed and not reviewed_slices and not reviewed_structures:
        raise InputError("nothing is marked as reviewed: give the reviewed slices, the reviewed structures, or "
                         "state that the whole segmentation was reviewed", segmentation)
    paths = {"review": folder / f"{case_id}{REVIEW_SUFFIX}", "label": folder / f"{case_id}_label.nii.gz",
             "volume": folder / f"{case_id}.nii.gz"}
    for p in paths.values():
        if p.exists():
            raise OutputError("exists already: a training case is never overwritten (choose another case id)", p)
    image = read_volume(volume)
    labels_img = label_on_image_grid(read_volume(segmentation, label=True), image, segmentation)
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(labels_img)
    nz = labels.shape[0]
    slices = None if reviewed_slices is None else sorted({int(k) for k in reviewed_slices})
    if slices and (slices[0] < 0 or slices[-1] >= nz):
        raise InputError(f"reviewed slices {slices[0]}-{slices[-1]} fall outside the volume's {nz} slices "
                         "(0-based, third index axis)", segmentation)
    present = {int(v) for v in np.unique(labels) if v}
    structures = sorted({int(v) for v in reviewed_structures})
    absent = [v for v in structures if v not in present]
    if absent:
        raise InputError(f"reviewed structure(s) {absent} are not in the segmentation (its labels: "
                         f"{sorted(present) or 'none'})", segmentation)
    origins = {int(k): v for k, v in (origins or {}).items()}
    bad = {k: v for k, v in origins.items() if v not in ORIGINS}
    if bad:
        raise InputError(f"label origins must be one of {', '.join(ORIGINS)}: {bad}", segmentation)
    record = ReviewRecord(slices=slices, structures=structures, all_reviewed=all_reviewed,
                          origins={v: origins.get(v, "automatic") for v in present},
                          names={int(k): str(v) for k, v in (names or {}).items()}, case_id=case_id,
                          source={"volume": str(volume.resolve()), "segmentation": str(segmentation.resolve())},
                          created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    from ..atomic import make_folder

    make_folder(folder)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".case.tmp", dir=folder))
    try:
        tmp = {k: tmpdir / p.name for k, p in paths.items()}
        tmp["review"].write_text(json.dumps(record.to_json(), indent=1) + "\n", encoding="utf-8")
        write_label_volume(labels, image, tmp["label"])
        write_volume(image, tmp["volume"])
        for key in ("review", "label", "volume"):
            with open(tmp[key], "rb") as f:
                os.fsync(f.fileno())
        done: List[Path] = []
        try:
            for key in ("review", "label", "volume"):
                _link_into_place(tmp[key], paths[key])
                done.append(paths[key])
        except BaseException:
            for p in reversed(done):  # ours, made a moment ago: no half case is left behind
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
    return paths
