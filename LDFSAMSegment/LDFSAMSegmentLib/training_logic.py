"""LDFSAM Segment's "Training set" section in Slicer: "Add to training set" (``ldfsam add-case``) and "Improve model
from my training set" (``ldfsam train --from``), each a background process (Slicer layer; the decisions are in
``training_set``, the segments' origins in ``segment_origin``)."""

import json
import os
import shutil
import tempfile

import slicer
import vtk

from .commands import core_env
from .logic import exportVolume, removeNodeAndHelpers
from .model_choices import _home
from .process import BackgroundProcess
from .prompt_targets import references
from .segment_origin import caseSegments
from .training_set import (
    add_case_argv,
    can_resume,
    case_id_for,
    improve_argv,
    improve_run_folder,
    plan_case,
    review_args,
)

# ``ldfsam train`` saves its state before it exits: a longer grace period before Cancel kills it.
TRAIN_GRACE_S = 60.0


class TrainingSetLogic:
    def __init__(self):
        self.folder = None  # the temporary files of the case being added
        self.caseId = None

    def addCaseProcess(self, volume, automatic, prompted, trainingFolder, reviewed, slices, ldfsamHome=None):
        """Write the volume, its merged label map and the provenance record to a temporary folder and prepare
        ``ldfsam add-case`` into ``trainingFolder``; returns (process, plan). A segmentation that does not belong
        to ``volume`` is left out. ValueError saying what is missing."""
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Select an input volume that has image data.")
        if not trainingFolder:
            raise ValueError("Choose a training folder.")
        nodes = {"automatic": automatic if references(automatic, volume) else None,
                 "prompted": prompted if references(prompted, volume) else None}
        plan = plan_case(*[caseSegments(nodes[k], k) if nodes[k] is not None else [] for k in nodes])
        review = review_args(reviewed, slices, plan)
        self.discard()
        self.folder = tempfile.mkdtemp(prefix="LDFSAM-case-")
        try:
            volumePath = os.path.join(self.folder, "volume.nrrd")
            labelsPath = os.path.join(self.folder, "labels.nrrd")
            provenancePath = os.path.join(self.folder, "provenance.json")
            exportVolume(volume, volumePath)
            self.writeLabels(volume, nodes, plan, labelsPath)
            with open(provenancePath, "w", encoding="utf-8") as f:
                json.dump(plan.provenance(), f, indent=1)
            self.caseId = case_id_for(volume.GetName(), trainingFolder)
            argv = add_case_argv(volumePath, labelsPath, trainingFolder, self.caseId, provenancePath, review)
        except Exception:
            self.discard()
            raise
        return BackgroundProcess(argv, env=core_env(ldfsamHome)), plan

    @staticmethod
    def writeLabels(volume, nodes, plan, path):
        """One label map on the volume's grid: each planned segment with its value (later ones on top)."""
        import numpy as np

        merged = None
        logic = slicer.modules.segmentations.logic()
        for key, node in nodes.items():
            values = plan.values(key)
            if node is None or not values:
                continue
            ids = vtk.vtkStringArray()
            for segmentId, _ in values:
                ids.InsertNextValue(segmentId)
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            try:
                # The whole grid of the volume (the default extent is the segments' union, which would shift it);
                # label values 1..n in the order of ``ids`` (no colour table given).
                if not logic.ExportSegmentsToLabelmapNode(node, ids, labelmap, volume,
                                                          slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
                    raise RuntimeError(f"Slicer could not export the segments of '{node.GetName()}'")
                exported = slicer.util.arrayFromVolume(labelmap)
                if merged is None:
                    merged = np.zeros(exported.shape, np.uint16)
                for index, (_, value) in enumerate(values):
                    merged[exported == index + 1] = value
            finally:
                display = labelmap.GetDisplayNode()
                colors = display.GetColorNode() if display is not None else None
                removeNodeAndHelpers(labelmap)
                if colors is not None and colors.GetAttribute("Category") == "Segmentations":
                    slicer.mrmlScene.RemoveNode(colors)  # the export's own colour table, made for this node
        if merged is None:
            raise ValueError("the volume has no segment to add")
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            labelmap.CopyOrientation(volume)  # the volume's grid, in its own frame (as exportVolume saves it)
            slicer.util.updateVolumeFromArray(labelmap, merged)
            if not slicer.util.exportNode(labelmap, path, properties={"useCompression": 1}):
                raise RuntimeError(f"{path}: could not write the label map")
        finally:
            removeNodeAndHelpers(labelmap)

    def discard(self):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @staticmethod
    def improveProcess(trainingFolder, model, name, device="auto", ldfsamHome=None):
        """(``ldfsam train --from`` process, resumed?): the run of the model ``name`` continues when it was
        started before (Cancel, a crash), else a new run; ValueError/OSError naming the problem (a name that
        is taken is refused before anything runs)."""
        with _home(ldfsamHome):
            from ldfsam.errors import LDFSAMError
            from ldfsam.models.cache import models_dir
            from ldfsam.models.lineage import check_new_name

            try:
                check_new_name(name)
            except LDFSAMError as e:
                raise ValueError(str(e)) from None
            run = improve_run_folder(models_dir(), name)
        resumed = can_resume(run)
        argv = improve_argv(trainingFolder, run, model, name, resume=resumed, device=device)
        return BackgroundProcess(argv, env=core_env(ldfsamHome), grace_s=TRAIN_GRACE_S), resumed

    @staticmethod
    def improveRun(name, ldfsamHome=None):
        """The run folder of the model ``name`` (whether or not it exists)."""
        with _home(ldfsamHome):
            from ldfsam.models.cache import models_dir

            return improve_run_folder(models_dir(), name)
