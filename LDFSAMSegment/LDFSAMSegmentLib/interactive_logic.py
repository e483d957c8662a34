"""LDFSAM Segment's "Interactive" section: a markups ROI and include/exclude points -> the prompt worker -> one
segment per ROI (named after the ROI) in a segmentation node (Slicer layer).

The worker (``prompt_client.PromptWorker``) is started once and kept while the module lives, so LiteMedSAM and
the slice embeddings stay loaded; the volume is saved and opened again only when another volume is chosen.
Requests are queued (``pending``) and the widget calls :meth:`poll` from a timer: the GUI never waits.
"""

import os
import shutil
import tempfile

import slicer

from .commands import core_env
from .logic import exportVolume, removeNodeAndHelpers
from .prompt_client import (
    History,
    Prompt,
    PromptWorker,
    open_request,
    prompt_worker_argv,
    requests_for,
    undo_request,
)
from .prompts import structure


class InteractiveLogic:
    def __init__(self):
        self.worker = None
        self.folder = None  # the saved volume and the masks the worker writes
        self.volumeID = None  # the volume the worker has open
        self.history = History()  # what the worker holds per structure
        self.queue = []  # (request, state it leaves) still to send for the current action
        self.sent = None  # the one being answered
        self.target = None  # (volume node, segmentation node, name) of the current action

    @property
    def busy(self):
        return bool(self.queue) or (self.worker is not None and self.worker.pending is not None)

    def ensureWorker(self, ldfsamHome=None):
        if self.worker is None or not self.worker.running:
            self.worker = PromptWorker(prompt_worker_argv(), env=core_env(ldfsamHome)).start()
            self.volumeID, self.history = None, History()
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="LDFSAM-interactive-")

    def _openIfNeeded(self, volume):
        if self.volumeID == volume.GetID():
            return []
        path = os.path.join(self.folder, "volume.nrrd")
        exportVolume(volume, path)
        self.volumeID = volume.GetID()
        return [(open_request(path), None)]

    def segmentInRoi(self, volume, roi, includeNode=None, excludeNode=None, segmentationNode=None,
                     ldfsamHome=None):
        """Queue what segments the ROI's structure (or only the clicks added since); returns the segmentation
        node that receives it. ValueError for a missing input."""
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Select an input volume that has image data.")
        if roi is None:
            raise ValueError("Select the ROI around the structure.")
        center, size = [0.0] * 3, [0.0] * 3
        roi.GetCenterWorld(center)
        roi.GetSizeWorld(size)  # along the world axes below (a parent transform may scale)
        matrix = roi.GetObjectToWorldMatrix()
        axes = [[matrix.GetElement(r, c) for r in range(3)] for c in range(3)]
        axes = [[v / (sum(a * a for a in axis) ** 0.5 or 1.0) for v in axis] for axis in axes]
        include, exclude = controlPoints(includeNode), controlPoints(excludeNode)
        name = roi.GetName()
        current = Prompt(name, structure(name, center, size, axes, include, exclude), include, exclude)
        self.ensureWorker(ldfsamHome)
        requests = self._openIfNeeded(volume)
        previous = self.history.last(name) if not requests else None
        requests += requests_for(previous, current, self._maskPath(name))
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} prompted"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        self.target = (volume, segmentationNode, name)
        self.queue = requests
        self._sendNext()
        return segmentationNode

    def undo(self, name, volume, segmentationNode):
        """Queue the undo of the structure's last change (the worker says when there is nothing to undo)."""
        if self.worker is None or self.volumeID != (volume.GetID() if volume else None):
            raise ValueError(f"nothing to undo for {name!r}")
        self.target = (volume, segmentationNode, name)
        self.queue = [(undo_request(name, self._maskPath(name)), None)]
        self._sendNext()

    def poll(self):
        """The final answer of the current action once it is there (its mask loaded), else None; WorkerError
        (``prompt_client``) when the worker refused a request or ended: the rest of the action is dropped."""
        try:
            reply = self.worker.poll()
        except Exception:
            if self.sent is not None and self.sent[0]["cmd"] == "open":
                self.volumeID = None  # not open: the next action opens it again
            self.queue, self.sent = [], None
            raise
        if reply is None:
            return None
        if self.sent is not None:
            self.history.answered(*self.sent)
            self.sent = None
        if self.queue:
            self._sendNext()
            return None
        if reply.get("output"):
            self.loadMask(reply["output"], *self.target)
        return reply

    def _sendNext(self):
        if self.worker.pending is None and self.queue:
            self.sent = self.queue.pop(0)
            self.worker.send(self.sent[0])

    def _maskPath(self, name):
        safe = "".join(c if c.isalnum() else "_" for c in name) or "structure"
        return os.path.join(self.folder, f"{safe}.nii.gz")

    @staticmethod
    def loadMask(path, volume, segmentationNode, name):
        """Replace the segment called ``name`` with the worker's mask: a label map on the block of the volume's
        grid that holds the structure (its origin places it; Slicer imports it onto the segmentation's geometry)."""
        labelmap = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            labelmap.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
            segmentation = segmentationNode.GetSegmentation()
            old = segmentation.GetSegmentIdBySegmentName(name)
            if old:
                segmentation.RemoveSegment(old)
            before = set(segmentation.GetSegmentIDs())
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
            for segmentId in set(segmentation.GetSegmentIDs()) - before:
                segmentation.GetSegment(segmentId).SetName(name)
        finally:
            removeNodeAndHelpers(labelmap)

    def stop(self):
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.volumeID, self.history, self.queue, self.sent = None, History(), [], None


def controlPoints(node):
    """RAS positions of a markups point list's control points (none for no list)."""
    if node is None:
        return []
    points = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        points.append(p)
    return points
