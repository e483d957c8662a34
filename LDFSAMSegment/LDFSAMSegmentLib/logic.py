"""LDFSAM Segment's logic: starts the core's processes and turns their results into MRML nodes; usable without
the GUI, from scripts and tests (Slicer layer)."""

import os
import shutil
import tempfile
import time

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .cohort import (
    SOURCES,
    check_input_folder,
    check_output_folder,
    segment_many_argv,
    single_component_scalar_volumes,
    volume_file_names,
    write_list_file,
)
from .commands import core_env, models_download_argv, models_import_argv, segment_argv
from .parameters import LDFSAMSegmentParameterNode, cacheFolder, lastDevice
from .process import BackgroundProcess
from .run_state import RunState, failure_message
from .segments import segment_specs


class LDFSAMSegmentLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._pending = None  # (process, temporary folder, output path, input node, output node or None)
        self._cohort = None  # (process, temporary folder or None, {exported file: volume node})

    def getParameterNode(self):
        raw = super().getParameterNode()
        isNew = not raw.GetParameter("device")
        node = LDFSAMSegmentParameterNode(raw)
        if isNew and lastDevice():
            node.device = lastDevice()  # a new scene starts with the device chosen last time
        return node

    @staticmethod
    def ensureDependencies(askConfirmation=True, force=False):
        """Install what the core needs (asking once); True when everything is there."""
        from .install_logic import InstallLogic

        return InstallLogic.shared().ensure(askConfirmation=askConfirmation, force=force)

    # -- processes --------------------------------------------------------------------------------------------
    def startSegmentation(self, parameters, ldfsamHome=None, start=False):
        """Write the input volume to a temporary file and prepare the ``ldfsam segment`` process."""
        volume = parameters.inputVolume
        if volume is None or volume.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        self.discardRun()
        folder = tempfile.mkdtemp(prefix="LDFSAM-")
        inputPath = os.path.join(folder, "input.nrrd")
        outputPath = os.path.join(folder, "teeth.seg.nrrd")
        try:
            exportVolume(volume, inputPath)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        argv = segment_argv(inputPath, outputPath, parameters.model, parameters.device, parameters.threshold,
                            parameters.minIslandMm3, parameters.splitTeeth, slice_spacing=parameters.sliceSpacing)
        process = BackgroundProcess(argv, env=core_env(ldfsamHome))
        self._pending = (process, folder, outputPath, volume, parameters.outputSegmentation)
        return process.start() if start else process

    @property
    def pendingOutputPath(self):
        """Where the running segmentation writes its result (None when no run is pending)."""
        return self._pending[2] if self._pending else None

    @property
    def pendingFolder(self):
        return self._pending[1] if self._pending else None

    def finishSegmentation(self):
        """Load the finished process's result as a segmentation node and remove the temporary files."""
        process, folder, outputPath, volume, segmentationNode = self._pending
        try:
            return self.loadResult(outputPath, volume, segmentationNode)
        finally:
            self.discardRun()

    def discardRun(self):
        if self._pending is not None:
            shutil.rmtree(self._pending[1], ignore_errors=True)
            self._pending = None

    # -- many volumes ----------------------------------------------------------------------------------------
    def startCohort(self, parameters, ldfsamHome=None, start=False):
        """Prepare ``ldfsam segment INPUT... -o FOLDER`` over every volume of the scene (saved to temporary files
        named in a list file) or over the chosen folder (``parameters.cohortSource``)."""
        outputFolder = check_output_folder(parameters.cohortOutputFolder)
        self.discardCohort()
        folder, volumes = None, {}
        if parameters.cohortSource == SOURCES[1]:
            inputs = [check_input_folder(parameters.cohortFolder)]
        else:
            nodes = single_component_scalar_volumes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
            if not nodes:
                raise ValueError(_("The scene has no volume to segment."))
            folder = tempfile.mkdtemp(prefix="LDFSAM-many-")
            try:
                for node, name in zip(nodes, volume_file_names([n.GetName() for n in nodes])):
                    path = os.path.join(folder, name)
                    exportVolume(node, path)
                    volumes[path] = node
                inputs = [write_list_file(list(volumes), os.path.join(folder, "volumes.txt"))]
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        argv = segment_many_argv(inputs, outputFolder, parameters.model, parameters.device, parameters.threshold,
                                 parameters.minIslandMm3, parameters.splitTeeth,
                                 slice_spacing=parameters.sliceSpacing)
        process = BackgroundProcess(argv, env=core_env(ldfsamHome))
        self._cohort = (process, folder, volumes)
        return process.start() if start else process

    def finishCohort(self, state):
        """Load what the run wrote (``state``: its CohortState) as segmentation nodes, on their scene volume's
        geometry when the volumes came from the scene; remove the temporary files. Returns the nodes."""
        volumes = self._cohort[2] if self._cohort else {}
        nodes = []
        try:
            for volume in state.done():
                node = volumes.get(os.path.abspath(volume.input))
                if node is not None:
                    nodes.append(self.loadResult(volume.output, node))
                else:
                    nodes.append(slicer.util.loadSegmentation(volume.output))
        finally:
            self.discardCohort()
        return nodes

    def discardCohort(self):
        if self._cohort is not None:
            if self._cohort[1]:
                shutil.rmtree(self._cohort[1], ignore_errors=True)
            self._cohort = None

    @staticmethod
    def importModelProcess(path):
        return BackgroundProcess(models_import_argv(path), env=core_env(cacheFolder()))

    @staticmethod
    def downloadModelProcess(name):
        return BackgroundProcess(models_download_argv(name), env=core_env(cacheFolder()))

    def segment(self, parameters, ldfsamHome=None, timeoutS=3600):
        """Segment and wait (scripts and self-tests); raises with the process's error message on failure."""
        process = self.startSegmentation(parameters, ldfsamHome, start=True)
        state = RunState()
        deadline = time.monotonic() + timeoutS
        finished = False
        while not finished:
            finished = process.finished
            for event in process.poll().events:
                state.feed(event)
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                process.cancel()
                self.discardRun()
                raise TimeoutError("ldfsam segment did not finish in time")
            time.sleep(0.05)
        error = failure_message(process.returncode, state, process.stderr_tail(), process.cancelled)
        if error:
            self.discardRun()
            raise RuntimeError(f"{error}\n{process.stderr_tail()}")
        return self.finishSegmentation()

    # -- results ----------------------------------------------------------------------------------------------
    def loadResult(self, path, volume, segmentationNode=None):
        """A segmentation node on the volume's geometry with named, coloured, coded segments, under its study.

        The file is read into a node of its own and copied: the node returned never points at the temporary file
        (its storage node is a fresh one, so "Save" proposes a new file instead of the deleted folder).
        """
        specs = segment_specs(path)
        loaded = slicer.util.loadSegmentation(str(path))
        try:
            if segmentationNode is None:
                segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} teeth"))
            segmentationNode.GetSegmentation().DeepCopy(loaded.GetSegmentation())
        finally:
            removeNodeAndHelpers(loaded)
        segmentationNode.AddDefaultStorageNode()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentationNode.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        tag = slicer.vtkSegment.GetTerminologyEntryTagName()
        for index, spec in enumerate(specs):
            segment = segmentation.GetSegment(spec.segment_id) or segmentation.GetNthSegment(index)
            if segment is None:
                continue
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.SetTag(tag, spec.terminology)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = shNode.GetItemParent(shNode.GetItemByDataNode(volume))
        if study != shNode.GetInvalidItemID():
            shNode.SetItemParent(shNode.GetItemByDataNode(segmentationNode), study)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.CreateClosedSurfaceRepresentation()
        from .segment_origin import tagSegments

        # "automatic", with a digest of the voxels: a later edit makes the segment "edited" in a training case.
        tagSegments(segmentationNode, list(segmentation.GetSegmentIDs()), "automatic")
        return segmentationNode


def exportVolume(volume, path):
    """Save a volume node to ``path`` (uncompressed); RuntimeError naming the file when Slicer cannot."""
    # A properties dict of our own: exportNode's default one is shared between calls and Slicer writes into it.
    if not slicer.util.exportNode(volume, path, properties={"useCompression": 0}):
        raise RuntimeError(f"{path}: could not write the volume '{volume.GetName()}'")


def removeNodeAndHelpers(node):
    """Remove a node with its display and storage nodes (removing the node alone leaves them in the scene)."""
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] + [node.GetStorageNode()]
    slicer.mrmlScene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(helper)
