"""Where each segment came from, kept on the segment itself (Slicer layer; the rules are in ``training_set``).

The module tags every segment it makes (``automatic`` after "Segment teeth", ``prompted`` after each Interactive
answer) with a digest of its voxels; a training case reads the tags back and calls a segment whose voxels changed
since, or that carries no tag, ``edited``.
"""

import slicer
import vtk

from .training_set import FINGERPRINT_TAG, ORIGIN_TAG, CaseSegment, fingerprint, label_boxes, origin_of


def segmentFingerprints(segmentationNode, segmentIds):
    """{segment ID: digest of its voxels} (``training_set.fingerprint``) from the binary labelmaps; segments
    share labelmap layers (each with its own label value), so each layer is searched once. "" for a segment
    without a labelmap."""
    from vtk.util.numpy_support import vtk_to_numpy

    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentationNode.GetSegmentation()
    layers, out = {}, {}
    for segmentId in segmentIds:
        segment = segmentation.GetSegment(segmentId)
        image = segment.GetRepresentation(name) if segment is not None else None
        if image is None or image.GetPointData().GetScalars() is None:
            out[segmentId] = ""
            continue
        key = id(image)  # one Python object per VTK object (the image is kept in ``layers`` while it is used)
        if key not in layers:
            extent = image.GetExtent()
            dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
            array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
            matrix = vtk.vtkMatrix4x4()
            image.GetImageToWorldMatrix(matrix)
            geometry = [matrix.GetElement(r, c) for r in range(3) for c in range(4)]
            layers[key] = (array, (extent[0], extent[2], extent[4]), geometry, label_boxes(array), image)
        array, start, geometry, boxes, _ = layers[key]
        value = segment.GetLabelValue()
        out[segmentId] = fingerprint(array, value, start, geometry, boxes.get(value))
    return out


def tagSegments(segmentationNode, segmentIds, origin):
    """Record that the module made these segments (``automatic`` or ``prompted``) and what their voxels are now."""
    segmentation = segmentationNode.GetSegmentation()
    for segmentId, digest in segmentFingerprints(segmentationNode, segmentIds).items():
        segment = segmentation.GetSegment(segmentId)
        if segment is not None:
            segment.SetTag(ORIGIN_TAG, origin)
            segment.SetTag(FINGERPRINT_TAG, digest)


def segmentTag(segment, tag):
    value = (vtk.reference if hasattr(vtk, "reference") else vtk.mutable)("")  # VTK 9.1+ / older
    return str(value) if segment.GetTag(tag, value) else ""


def caseSegments(segmentationNode, node):
    """The segments of one segmentation (``node``: "automatic" or "prompted"), each with its origin now."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    digests = segmentFingerprints(segmentationNode, ids)
    out = []
    for segmentId in ids:
        segment = segmentation.GetSegment(segmentId)
        origin = origin_of(segmentTag(segment, ORIGIN_TAG), segmentTag(segment, FINGERPRINT_TAG), digests[segmentId])
        out.append(CaseSegment(node, segmentId, segment.GetName(), origin))
    return out
