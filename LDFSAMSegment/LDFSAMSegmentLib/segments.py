"""From the core's ``.seg.nrrd`` to the segments Slicer shows: names, colours and SNOMED CT terminology.

``ldfsam segment`` writes its result with slicerio, with a name, colour and terminology per segment; this module
reads that metadata back (no voxels) and fills in whatever a file lacks, so that every segment of a result is a
"Tooth" (SNOMED CT 38199008) with a name and a colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

TOOTH_CODE = ("SCT", "38199008", "Tooth")
TOOTH_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list"
                     "~SCT^123037004^Anatomical Structure~SCT^38199008^Tooth~^^"
                     "~Anatomic codes - DICOM master list~^^~^^")
TOOTH_COLOR = (0.98, 0.95, 0.80)  # ivory


@dataclass
class SegmentSpec:
    """One segment of a result file: how Slicer should name, colour and code it."""

    segment_id: str
    name: str
    color: Tuple[float, float, float]
    terminology: str
    label_value: int
    layer: int


def terminology_string(term: object) -> str:
    """Slicer's TerminologyEntry tag text for a slicerio terminology (dict or string); a tooth when missing."""
    if isinstance(term, dict) and term.get("category") and term.get("type"):
        from slicerio.segmentation import terminology_entry_to_string

        return terminology_entry_to_string(term)
    if isinstance(term, str) and term.count("~") >= 6:
        return term
    return TOOTH_TERMINOLOGY


def terminology_type_code(terminology: str) -> str:
    """The code value of the terminology's type (for example "38199008" for Tooth)."""
    fields = terminology.split("~")
    return fields[2].split("^")[1] if len(fields) > 2 and fields[2].count("^") >= 2 else ""


def segment_specs(path: str | Path) -> List[SegmentSpec]:
    """Read the segments of a ``.seg.nrrd`` written by ``ldfsam segment`` (metadata only)."""
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the segmentation result was not written")
    seg = slicerio.read_segmentation(str(path), skip_voxels=True)
    segments = seg.get("segments") or []
    specs = []
    for index, segment in enumerate(segments):
        default_name = "Tooth" if len(segments) == 1 else f"Tooth {index + 1}"
        color = segment.get("color")
        specs.append(SegmentSpec(
            segment_id=str(segment.get("id") or f"Segment_{index + 1}"),
            name=str(segment.get("name") or "").strip() or default_name,
            color=tuple(float(c) for c in color) if color is not None and len(color) == 3 else TOOTH_COLOR,
            terminology=terminology_string(segment.get("terminology")),
            label_value=int(segment.get("labelValue", index + 1)),
            layer=int(segment.get("layer", 0))))
    return specs
