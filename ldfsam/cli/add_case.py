"""``ldfsam add-case``: a corrected segmentation becomes a training case (``ldfsam.data.training_case``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMAND = "add-case"
HELP = ("Add a volume and its corrected segmentation to a training folder, with the record of what was reviewed "
        "(only reviewed slices or structures count as labels; the rest is ignored by training).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume", type=Path, help="the image volume (.nii.gz, .nrrd, .mha, DICOM folder)")
    p.add_argument("segmentation", type=Path, help="its segmentation: a label map or a Slicer .seg.nrrd")
    p.add_argument("--to", dest="folder", required=True, type=Path, help="the training folder (made if needed)")
    p.add_argument("--id", dest="case_id", help="case name (default: the volume's file name)")
    p.add_argument("--reviewed-slices", metavar="LIST",
                   help="reviewed slices, 0-based along the volume's third index axis (Slicer's K): e.g. 20-45,60")
    p.add_argument("--reviewed-structures", metavar="VALUES",
                   help="label values whose whole structure was reviewed, e.g. 11,12,21")
    p.add_argument("--all-reviewed", action="store_true", help="the whole segmentation was reviewed")
    p.add_argument("--origin", action="append", default=[], metavar="VALUE=ORIGIN",
                   help="where a label came from: automatic (default), prompted or edited; repeatable")
    p.add_argument("--provenance", type=Path, metavar="JSON",
                   help='a JSON file {"origins": {"11": "edited"}, "names": {"11": "tooth 11"}} (Slicer writes one)')
    p.add_argument("--json", action="store_true", help="print the written files as JSON")


def _values(spec: str, what: str):
    from ..errors import InputError

    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} {spec!r}: give label values separated by commas") from None


def run(args: argparse.Namespace) -> int:
    from ..data.training_case import add_training_case, parse_slices
    from ..errors import InputError

    origins, names = {}, {}
    if args.provenance:
        try:
            doc = json.loads(args.provenance.read_text(encoding="utf-8"))
            origins = {int(k): str(v) for k, v in (doc.get("origins") or {}).items()}
            names = {int(k): str(v) for k, v in (doc.get("names") or {}).items()}
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f"cannot be read as a provenance record ({e})", args.provenance) from None
    for item in args.origin:
        value, sep, origin = item.partition("=")
        if not sep:
            raise InputError(f"--origin {item!r}: use VALUE=ORIGIN, e.g. 11=edited")
        origins[_values(value, "--origin")[0]] = origin.strip()
    paths = add_training_case(
        args.volume, args.segmentation, args.folder, case_id=args.case_id,
        reviewed_slices=parse_slices(args.reviewed_slices) if args.reviewed_slices else None,
        reviewed_structures=_values(args.reviewed_structures, "--reviewed-structures")
        if args.reviewed_structures else (), all_reviewed=args.all_reviewed, origins=origins, names=names)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        print(f"added training case {paths['volume'].name[:-len('.nii.gz')]} to {args.folder}")
    return 0
