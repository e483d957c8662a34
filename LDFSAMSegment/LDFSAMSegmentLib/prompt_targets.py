"""Where the Interactive section's results go (plain Python over the few MRML calls it makes; no ``slicer``
import): one segmentation per input volume, found by its reference to the volume, and one segment per structure,
made once and then filled in place.

A segmentation made here references its volume with Slicer's reference-geometry role
(``SetReferenceImageGeometryParameterFromVolumeNode`` sets ``referenceImageGeometryRef``) and is marked with
:data:`PROMPTED_ATTRIBUTE`, so that choosing another volume sends the segments to that volume's segmentation, and
choosing the first volume again finds the first one (also in a saved and reloaded scene: references survive
loading, node IDs do not). The segment of a structure keeps its ID, so every click updates it where it is in the
list, with the user's colour and visibility.
"""

from __future__ import annotations

from typing import Iterable, Optional

REFERENCE_ROLE = "referenceImageGeometryRef"  # vtkMRMLSegmentationNode::GetReferenceImageGeometryReferenceRole()
PROMPTED_ATTRIBUTE = "LDFSAMSegment.PromptedVolume"


def references(segmentation: object, volume: object) -> bool:
    """Whether ``segmentation`` (still in a scene) has ``volume`` as its reference geometry."""
    return (segmentation is not None and segmentation.GetScene() is not None
            and segmentation.GetNodeReferenceID(REFERENCE_ROLE) == volume.GetID())


def find_segmentation(volume: object, current: Optional[object], candidates: Iterable[object]) -> Optional[object]:
    """The segmentation that receives ``volume``'s prompted segments: ``current`` (the one the panel shows) when it
    references the volume, else the first prompted segmentation of ``candidates`` (the scene's segmentation
    nodes) that does; None when the volume has none yet (the caller makes one and marks it)."""
    if references(current, volume):
        return current
    for node in candidates:
        if node.GetAttribute(PROMPTED_ATTRIBUTE) and references(node, volume):
            return node
    return None


def segment_id_for(segmentation: object, name: str) -> str:
    """The ID of the segment called ``name`` in a ``vtkSegmentation``, added (empty) when there is none."""
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    if not segment_id:
        segment_id = segmentation.AddEmptySegment("", name)
    if not segment_id:
        raise RuntimeError(f"could not add the segment {name!r}")
    return segment_id
