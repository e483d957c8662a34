"""LDFSAM Segment's "Interactive" section: a markups ROI, include/exclude points and a line of clicks -> the prompt
worker -> one segment per structure (named after the ROI, or the line without a ROI) in a segmentation node (Slicer
layer). With a prior (``--prior``: SPD's saliency head) the worker says which clicks it did not use and why
(:meth:`InteractiveLogic.notUsedText`).

The worker (``prompt_client.PromptWorker``) is started once and kept while the module lives, so LiteMedSAM and
the slice embeddings stay loaded; the volume is saved and opened again only when another volume is chosen.
Requests are queued (``pending``) and the widget calls :meth:`poll` from a timer: the GUI never waits.

The volume is saved in its own frame (without its parent transform); the ROI and the points, which markups give
in world coordinates, are mapped into that frame, and the segmentation is put under the volume's transform, so a
transformed volume gets its prompts and its masks where its anatomy is. Each input volume has its own
segmentation (``prompt_targets``); each structure's segment is made once and refilled in place by every answer.
"""

import os
import shutil
import tempfile

import slicer
import vtk

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
from .prompt_targets import PROMPTED_ATTRIBUTE, find_segmentation, segment_id_for
from .prompts import click_names, not_used_text, placed_labels, placed_points, structure


class InteractiveLogic:
    def __init__(self):
        self.worker = None
        self.folder = None  # the saved volume and the masks the worker writes
        self.volumeID = None  # the volume the worker has open
        self.history = History()  # what the worker holds per structure
        self.queue = []  # (request, state it leaves) still to send for the current action
        self.sent = None  # the one being answered
        self.target = None  # (volume node, segmentation node, name) of the current action
        self.prior = "auto"  # the worker's --prior (it is started again when this changes)
        self.labels = {}  # the current action's control point labels: {"include": [...], "exclude": [...]}

    @property
    def busy(self):
        return bool(self.queue) or (self.worker is not None and self.worker.pending is not None)

    def ensureWorker(self, ldfsamHome=None, prior=None):
        prior = prior or self.prior
        argv = prompt_worker_argv(prior=prior)
        if self.worker is not None and self.worker.running and self.worker.argv != argv:
            self.worker.stop()  # another prior: a worker of its own (the open volume is sent again)
        if self.worker is None or not self.worker.running or self.worker.argv != argv:
            self.worker = PromptWorker(argv, env=core_env(ldfsamHome)).start()
            self.volumeID, self.history, self.prior = None, History(), prior
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
                     ldfsamHome=None, lineNode=None, prior=None):
        """Queue what segments the structure of the ROI (or of the line of clicks without a ROI), or only the
        clicks added since; returns the segmentation node that receives it. ``prior``: the worker's ``--prior``
        (auto, none or a model). ValueError for a missing input."""
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Select an input volume that has image data.")
        if roi is None and lineNode is None:
            raise ValueError("Select the ROI around the structure, or a line of clicks through it.")
        center = size = axes = None
        if roi is not None:
            center, size = [0.0] * 3, [0.0] * 3
            roi.GetCenterWorld(center)
            roi.GetSizeWorld(size)  # along the world axes below (a parent transform may scale)
            matrix = roi.GetObjectToWorldMatrix()
            axes = [[matrix.GetElement(r, c) for r in range(3)] for c in range(3)]
            axes = [[v / (sum(a * a for a in axis) ** 0.5 or 1.0) for v in axis] for axis in axes]
        toLocal = worldToVolume(volume)
        defined = slicer.vtkMRMLMarkupsNode.PositionDefined
        include = placed_points(includeNode, defined, toLocal)
        exclude = placed_points(excludeNode, defined, toLocal)
        line = placed_points(lineNode, defined, toLocal)
        if lineNode is not None and not line:
            raise ValueError(f"The line of clicks '{lineNode.GetName()}' has no placed point.")
        name = (roi or lineNode).GetName()
        current = Prompt(name, structure(name, center, size, axes, include, exclude, to_local=toLocal, line=line),
                         include, exclude)
        self.labels = {"include": placed_labels(includeNode, defined), "exclude": placed_labels(excludeNode, defined)}
        self.ensureWorker(ldfsamHome, prior)
        requests = self._openIfNeeded(volume)
        previous = self.history.last(name) if not requests else None
        requests += requests_for(previous, current, self._maskPath(name))
        segmentationNode = segmentationFor(volume, segmentationNode)
        self.target = (volume, segmentationNode, name)
        self.queue = requests
        self._sendNext()
        return segmentationNode

    def undo(self, name, volume, segmentationNode):
        """Queue the undo of the structure's last change (the worker says when there is nothing to undo)."""
        if self.worker is None or self.volumeID != (volume.GetID() if volume else None):
            raise ValueError(f"nothing to undo for {name!r}")
        self.target = (volume, segmentationFor(volume, segmentationNode), name)
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
            from .segment_origin import tagSegments

            volume, segmentationNode, name = self.target
            # "prompted", with a digest of its voxels: a later edit makes it "edited" in a training case.
            tagSegments(segmentationNode, [segment_id_for(segmentationNode.GetSegmentation(), name)], "prompted")
        return reply

    def notUsedText(self, reply):
        """The panel's line for the worker's ``not_used`` report of an answer: each click named as the panel shows
        it (the include/exclude lists' control point labels, a line's clicks by their position)."""
        state = self.history.last(reply.get("name", ""))
        if state is None:
            return not_used_text(reply)
        return not_used_text(reply, click_names(state.order, self.labels.get("include", ()),
                                                self.labels.get("exclude", ())))

    def _sendNext(self):
        if self.worker.pending is None and self.queue:
            self.sent = self.queue.pop(0)
            self.worker.send(self.sent[0])

    def _maskPath(self, name):
        safe = "".join(c if c.isalnum() else "_" for c in name) or "structure"
        return os.path.join(self.folder, f"{safe}.nii.gz")

    @staticmethod
    def loadMask(path, volume, segmentationNode, name):
        """Fill the segment called ``name`` (made once, then kept with its ID, colour and visibility) with the
        worker's mask: a label map (1 = the structure) on the block of the volume's grid that holds it. Slicer's
        import with the IDs to update clears the segment and refills it in place; an empty mask leaves an empty
        segment. RuntimeError when Slicer refuses the import."""
        segmentId = segment_id_for(segmentationNode.GetSegmentation(), name)
        labelmap = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            labelmap.SetAndObserveTransformNodeID(volume.GetTransformNodeID())  # the volume's frame, as the mask
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode,
                                                                                       ids):
                raise RuntimeError(f"Slicer could not import the mask of {name!r} ({path}) into "
                                   f"'{segmentationNode.GetName()}'; see the application log")
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


def worldToVolume(volume):
    """A function mapping a world RAS position into the volume's own frame (the frame it is saved in), or None
    when the volume is not under a transform. Non-linear transforms are mapped point by point too."""
    parent = volume.GetParentTransformNode()
    if parent is None:
        return None
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, transform)  # world -> volume's parent
    return lambda p: list(transform.TransformPoint([float(v) for v in p]))


def segmentationFor(volume, current=None):
    """The segmentation of ``volume``'s prompted segments: ``current`` or another one that references the volume,
    else a new one, under the volume's transform and on its geometry."""
    found = find_segmentation(volume, current, slicer.util.getNodesByClass("vtkMRMLSegmentationNode"))
    if found is not None:
        return found
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                              slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} prompted"))
    node.SetAttribute(PROMPTED_ATTRIBUTE, "1")
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())  # masks come in the volume's frame
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # also the reference found next time
    return node
