"""LDFSAM Segment's "Training set" section without Slicer: where each segment came from, what goes into a training
case, and the command lines of ``ldfsam add-case`` and ``ldfsam train --from`` (plain Python: no ``slicer``).

Provenance. Every segment the module makes is tagged when it is made: :data:`ORIGIN_TAG` says ``automatic`` (the
"Segment teeth" run) or ``prompted`` (the Interactive section), and :data:`FINGERPRINT_TAG` holds a digest of its
voxels at that moment (:func:`fingerprint`). Tags are saved with the segmentation (``.seg.nrrd``) and copied with
the segment. When a case is added, a segment whose voxels no longer match its digest, or that has no origin tag
(drawn by hand), is ``edited``: anything the user changed after the module made it.

A case is the input volume with the segments of its automatic segmentation and of its prompted segmentation, one
label value each (1, 2, ... in that order; the bundled models read any non-zero value as tooth). A prompted segment
with the name of an automatic one replaces it: the user segmented that tooth again because the automatic one was
wrong.

What was reviewed (:data:`REVIEW_CHOICES`): the whole segmentation, the prompted and edited segments (those the user
worked on: each counts with its voxels and a one-voxel shell, the rest of the volume is ignored), or a list of
slices (K index, checked whole). Anything else is ignored by training, never taken as background.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .commands import ldfsam_argv

ORIGIN_TAG = "LDFSAM.Origin"
FINGERPRINT_TAG = "LDFSAM.Fingerprint"
ORIGINS = ("automatic", "prompted", "edited")
REVIEW_CHOICES = ("all segments, all slices", "the prompted and edited segments", "the slices listed below")
IMPROVE_FOLDER = "improve"  # $LDFSAM_HOME/improve/NAME: the run folder of the model NAME
MIX_PHANTOMS = 4  # phantoms of the bundled model's training data mixed in, so that it does not forget


def label_boxes(labels: object) -> Dict[int, Tuple[slice, slice, slice]]:
    """The bounding box of every label value of an array, in one pass (``scipy.ndimage.find_objects``)."""
    import numpy as np
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.size == 0:
        return {}
    return {i + 1: box for i, box in enumerate(ndimage.find_objects(labels))
            if box is not None}


def fingerprint(labels: object, value: int, extent_min: Sequence[int] = (0, 0, 0),
                geometry: Sequence[float] = (), box: Optional[Tuple[slice, slice, slice]] = None) -> str:
    """A digest of the voxels equal to ``value`` in a (k, j, i) label array whose first voxel is at IJK
    ``extent_min`` of a grid described by ``geometry`` (its image-to-world matrix): the same voxels give the same
    digest whatever the array's extent (Slicer grows a shared labelmap's extent when another segment is painted).
    ``box``: the value's bounding box when known (:func:`label_boxes`), else found here."""
    import numpy as np

    labels = np.asarray(labels)
    digest = hashlib.sha1(b"ldfsam-segment-1")
    digest.update(np.asarray([round(float(g), 6) for g in geometry], np.float64).tobytes())
    if box is None:
        mask = labels == value
        if mask.any():
            lo = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]) for axis in range(3)]
            hi = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[-1]) + 1
                  for axis in range(3)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
    if box is not None:
        crop = labels[box] == value
        start = [box[0].start + int(extent_min[2]), box[1].start + int(extent_min[1]),
                 box[2].start + int(extent_min[0])]
        digest.update(np.asarray(start + list(crop.shape), np.int64).tobytes())
        digest.update(np.packbits(crop, axis=None).tobytes())
    return digest.hexdigest()


def origin_of(tagged_origin: Optional[str], tagged_fingerprint: Optional[str], current_fingerprint: str) -> str:
    """``automatic`` or ``prompted`` while the segment is as the module made it, else ``edited`` (also a segment
    the module did not make)."""
    if tagged_origin not in ("automatic", "prompted") or not tagged_fingerprint:
        return "edited"
    return tagged_origin if tagged_fingerprint == current_fingerprint else "edited"


@dataclass
class CaseSegment:
    """One segment of a case: which node it is in (``automatic`` or ``prompted`` segmentation), its ID and name,
    and where its voxels came from (:func:`origin_of`)."""

    node: str
    segment_id: str
    name: str
    origin: str


@dataclass
class CasePlan:
    """The segments that go into a case, in label-value order (value = index + 1)."""

    segments: List[CaseSegment]

    def values(self, node: str) -> List[Tuple[str, int]]:
        """(segment ID, label value) of the segments of one node."""
        return [(s.segment_id, i + 1) for i, s in enumerate(self.segments) if s.node == node]

    def provenance(self) -> Dict[str, Dict[str, str]]:
        """The record ``ldfsam add-case --provenance`` reads."""
        return {"origins": {str(i + 1): s.origin for i, s in enumerate(self.segments)},
                "names": {str(i + 1): s.name for i, s in enumerate(self.segments)}}

    def worked_on(self) -> List[int]:
        """Label values of the segments the user made or changed (prompted or edited)."""
        return [i + 1 for i, s in enumerate(self.segments) if s.origin in ("prompted", "edited")]


def plan_case(automatic: Iterable[CaseSegment], prompted: Iterable[CaseSegment]) -> CasePlan:
    """Automatic segments first, then prompted ones; a prompted segment replaces the automatic one of its name.
    ValueError when there is no segment at all."""
    prompted = list(prompted)
    again = {s.name for s in prompted}
    segments = [s for s in automatic if s.name not in again] + prompted
    if not segments:
        raise ValueError("the volume has no segment to add: segment it (or prompt a tooth) first")
    return CasePlan(segments)


def review_args(choice: str, slices: str, plan: CasePlan) -> List[str]:
    """The ``add-case`` options for what the user says was reviewed; ValueError saying what is missing."""
    if choice == REVIEW_CHOICES[0]:
        return ["--all-reviewed"]
    if choice == REVIEW_CHOICES[1]:
        values = plan.worked_on()
        if not values:
            raise ValueError("no segment was prompted or edited: choose what you reviewed (all segments, or slices)")
        return ["--reviewed-structures", ",".join(str(v) for v in values)]
    if choice == REVIEW_CHOICES[2]:
        from ldfsam.data.training_case import parse_slices
        from ldfsam.errors import LDFSAMError

        try:
            parse_slices(slices)  # the core's own reading, so that the panel refuses what it would refuse
        except LDFSAMError as e:
            raise ValueError(f"reviewed slices: {e}") from None
        return ["--reviewed-slices", re.sub(r"\s+", "", slices)]
    raise ValueError(f"unknown review choice {choice!r}")


def case_id_for(name: str, folder: str) -> str:
    """A case name from the volume's name (letters, digits, '-', '_', '.'), made unique in ``folder``: an added
    case is never overwritten, so a second addition of a volume gets ``NAME_2``."""
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name.strip()).strip("_.-")[:90] or "case"
    if not base[0].isalnum():
        base = "case_" + base
    taken = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    case, n = base, 1
    while any(f in taken for f in (f"{case}.nii.gz", f"{case}_label.nii.gz", f"{case}.review.json")):
        n += 1
        case = f"{base}_{n}"
    return case


def add_case_argv(volume: str, labels: str, folder: str, case_id: str, provenance: str, review: Sequence[str],
                  python: Optional[str] = None) -> List[str]:
    """``ldfsam add-case VOLUME LABELS --to FOLDER --id CASE --provenance JSON REVIEW... --json``."""
    if not folder:
        raise ValueError("choose a training folder")
    return ldfsam_argv("add-case", volume, labels, "--to", folder, "--id", case_id, "--provenance", provenance,
                       *review, "--json", python=python)


def training_cases(folder: str) -> List[str]:
    """The cases of a training folder (names of its review records)."""
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(f[:-len(".review.json")] for f in os.listdir(folder) if f.endswith(".review.json"))


def improve_run_folder(models_dir: Path, name: str) -> Path:
    """Where the improvement that makes the model ``name`` runs: beside the model cache, one folder per name."""
    return Path(models_dir).parent / IMPROVE_FOLDER / name


def can_resume(run: Path) -> bool:
    """True when ``run`` holds an ``ldfsam train`` run that was started (its ``train.json``)."""
    return (Path(run) / "train.json").is_file()


def improve_argv(folder: str, run: Path, from_model: str, name: str, resume: bool = False,
                 mix_phantoms: int = MIX_PHANTOMS, device: str = "auto", python: Optional[str] = None) -> List[str]:
    """``ldfsam train FOLDER -o RUN --from MODEL --name NAME --mix-phantoms N`` (the short schedule of ``--from``),
    or ``ldfsam train -o RUN --resume`` (the run's own settings), with JSON progress."""
    from .commands import device_arg

    if resume:
        return ldfsam_argv("train", "-o", run, "--resume", "--progress", "json", python=python)
    if not folder:
        raise ValueError("choose a training folder")
    if not training_cases(folder):
        raise ValueError(f"the training folder {folder} has no case yet: add a corrected volume first")
    if not from_model:
        raise ValueError("select the model to improve")
    args: List[object] = ["train", folder, "-o", run, "--from", from_model, "--name", name, "--device",
                          device_arg(device), "--progress", "json"]
    if mix_phantoms:
        args += ["--mix-phantoms", mix_phantoms]
    return ldfsam_argv(*args, python=python)
