"""LDFSAM Segment: tooth segmentation of dental CBCT in 3D Slicer.

The work runs in a background ``python -m ldfsam segment`` process (Slicer stays responsive); its JSON progress
events drive the progress bar, and its ``.seg.nrrd`` result becomes a segmentation node. Everything that does not
need Slicer lives in ``LDFSAMSegmentLib`` and is tested outside Slicer.
"""

import logging
import os
import shutil
import tempfile
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SETTINGS_CACHE = "LDFSAM/CacheFolder"
SETTINGS_DEVICE = "LDFSAM/Device"


class LDFSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDFSAM Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LDFSAM contributors"]
        self.parent.helpText = _(
            "Segments the teeth in a dental CBCT volume with LDFSAM (a SAM fine-tuned with feature prompts from a "
            "distilled YOLO detector). Choose the volume and a model, then click <b>Segment teeth</b>. "
            "See <a href=\"https://github.com/LDFSAM/SlicerLDFSAM/blob/main/docs/slicer.md\">the documentation</a>.")
        self.parent.acknowledgementText = _(
            "Method: LDFSAM, localization-distilled feature prompting of the Segment Anything Model.")


@parameterNodeWrapper
class LDFSAMSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = "ldfsam-demo"
    device: Annotated[str, Choice(["auto", "CPU", "GPU"])] = "auto"
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    minIslandMm3: Annotated[float, WithinRange(0.0, 100000.0)] = 10.0
    splitTeeth: bool = False
    sliceSpacing: Annotated[str, Choice(["auto", "2px", "native"])] = "auto"


def cacheFolder() -> Optional[str]:
    """The model cache folder chosen in the module (remembered in the application settings), or None."""
    return qt.QSettings().value(SETTINGS_CACHE, "") or None


class BackgroundRun:
    """Connects a BackgroundProcess to the GUI through a timer: events -> RunState -> callbacks."""

    def __init__(self, process, onUpdate, onFinished, intervalMs=200):
        from LDFSAMSegmentLib.run_state import RunState

        self.process, self.state = process, RunState()
        self.onUpdate, self.onFinished = onUpdate, onFinished
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.timeout.connect(self._poll)

    def start(self):
        self.process.start()
        self.timer.start()
        return self

    def cancel(self):
        self.process.cancel()

    def _poll(self):
        finished = self.process.finished  # before the poll: once finished, this poll reads the last lines
        out = self.process.poll()
        for event in out.events:
            self.state.feed(event)
        self.state.log.extend(out.stdout + out.stderr)
        if out.events or out.stdout or out.stderr:
            self.onUpdate(self)
        if finished:
            self.timer.stop()
            from LDFSAMSegmentLib.run_state import failure_message

            error = failure_message(self.process.returncode, self.state, self.process.stderr_tail(),
                                    self.process.cancelled)
            self.onFinished(self, error)


class LDFSAMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self._choices = []
        self._logShown = 0

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LDFSAMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LDFSAMSegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cacheFolderPathLineEdit.currentPath = cacheFolder() or ""
        self.ui.cacheFolderPathLineEdit.currentPathChanged.connect(self.onCacheFolderChanged)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.refreshModelsButton.clicked.connect(self.refreshModels)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        self.ui.installDependenciesButton.clicked.connect(lambda: self.logic.ensureDependencies(force=True))
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):
        if self.run is not None:
            self.run.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are bound to the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    # -- models -----------------------------------------------------------------------------------------------
    def refreshModels(self):
        from LDFSAMSegmentLib.model_choices import model_choices

        self._choices = model_choices(cacheFolder())
        wanted = self._parameterNode.model if self._parameterNode else None
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for choice in self._choices:
            self.ui.modelComboBox.addItem(choice.label, choice.name)
        names = [c.name for c in self._choices]
        self.ui.modelComboBox.currentIndex = names.index(wanted) if wanted in names else 0
        self.ui.modelComboBox.blockSignals(False)
        self.onModelChanged()

    def selectedChoice(self):
        index = self.ui.modelComboBox.currentIndex
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def onModelChanged(self, *_args):
        choice = self.selectedChoice()
        self.ui.modelDescriptionLabel.text = choice.description if choice else _("No model installed.")
        self.ui.downloadModelButton.enabled = bool(choice and choice.state == "available")
        if choice and self._parameterNode:
            self._parameterNode.model = choice.name
        self.updateButtons()

    def onDeviceChanged(self, *_args):
        qt.QSettings().setValue(SETTINGS_DEVICE, self.ui.deviceComboBox.currentText)

    def onCacheFolderChanged(self, path):
        qt.QSettings().setValue(SETTINGS_CACHE, path)
        self.refreshModels()

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import LDFSAM model"), "",
                                              _("LDFSAM model (*.safetensors)"))
        if path:
            self.startRun(self.logic.importModelProcess(path), self.refreshModels)

    def onDownloadModel(self):
        choice = self.selectedChoice()
        if choice:
            self.startRun(self.logic.downloadModelProcess(choice.name), self.refreshModels)

    # -- running --------------------------------------------------------------------------------------------
    def updateButtons(self, caller=None, event=None):
        running = self.run is not None
        p = self._parameterNode
        choice = self.selectedChoice()
        ready = bool(p and p.inputVolume and choice and choice.state != "available")
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment teeth")
        self.ui.segmentButton.enabled = running or ready
        for name in ("inputsCollapsibleButton", "modelCollapsibleButton", "optionsCollapsibleButton",
                     "advancedCollapsibleButton"):
            getattr(self.ui, name).enabled = not running
        if not running and p and not ready:
            self.ui.segmentButton.toolTip = _("Select an input volume and an installed model.")

    def onSegmentButton(self):
        if self.run is not None:
            self.ui.statusLabel.text = _("Cancelling...")
            self.run.cancel()
            return
        if not self.logic.ensureDependencies():
            return
        try:
            process = self.logic.startSegmentation(self._parameterNode, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not start the segmentation: {error}").format(error=e))
            return
        self.startRun(process, self.onSegmentationDone)

    def startRun(self, process, onSuccess):
        self.ui.logTextEdit.clear()
        self._logShown = 0
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self.ui.logTextEdit.appendPlainText("$ " + " ".join(process.argv))
        self._onSuccess = onSuccess
        self.run = BackgroundRun(process, self.onRunUpdate, self.onRunFinished).start()
        self.updateButtons()

    def onRunUpdate(self, run):
        self.ui.progressBar.value = run.state.percent
        self.ui.statusLabel.text = run.state.status
        for line in run.state.log[self._logShown:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logShown = len(run.state.log)

    def onRunFinished(self, run, error):
        self.onRunUpdate(run)
        self.run = None
        self.updateButtons()
        if error:
            self.ui.statusLabel.text = error
            self.logic.discardRun()
            if not run.process.cancelled:
                slicer.util.errorDisplay(error, detailedText=run.process.stderr_tail())
            return
        try:
            self._onSuccess()
        except Exception as e:
            logging.exception("LDFSAM: loading the result failed")
            self.ui.statusLabel.text = _("Failed: {error}").format(error=e)
            slicer.util.errorDisplay(str(e))

    def onSegmentationDone(self):
        node = self.logic.finishSegmentation()
        self._parameterNode.outputSegmentation = node
        count = node.GetSegmentation().GetNumberOfSegments()
        if count == 0:
            self.ui.statusLabel.text = _("Done: the model found no teeth in this volume.")
        else:
            self.ui.statusLabel.text = _("Done: {count} segment(s) in '{name}'.").format(count=count,
                                                                                         name=node.GetName())


class LDFSAMSegmentLogic(ScriptedLoadableModuleLogic):
    """Starts the core's processes and turns their results into MRML nodes; usable without the GUI."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._pending = None  # (process, temporary folder, output path, input node, output node or None)
        self._dependenciesChecked = False

    def getParameterNode(self):
        raw = super().getParameterNode()
        isNew = not raw.GetParameter("device")
        node = LDFSAMSegmentParameterNode(raw)
        device = qt.QSettings().value(SETTINGS_DEVICE, "")
        if isNew and device in ("auto", "CPU", "GPU"):
            node.device = device  # a new scene starts with the device chosen last time
        return node

    # -- dependencies -----------------------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation=True, force=False):
        """Install what the core needs (asking once). True when everything is there."""
        if self._dependenciesChecked and not force:
            return True
        from LDFSAMSegmentLib import dependencies, requirements_file

        plan = dependencies.plan(dependencies.read_requirements(requirements_file()))
        if plan.conflicts:
            logging.warning("LDFSAM: requirements that conflict with packages Slicer ships: %s", plan.conflicts)
        if plan.empty:
            self._dependenciesChecked = True
            if force:
                slicer.util.infoDisplay(_("All LDFSAM dependencies are installed."))
            return True
        if askConfirmation and not slicer.app.commandOptions().testingEnabled:
            if not slicer.util.confirmOkCancelDisplay(plan.message(), windowTitle=_("LDFSAM dependencies")):
                return False
        with slicer.util.WaitCursor():
            if plan.torch:
                self._installTorch(plan.torch)
            if plan.pip:
                with tempfile.TemporaryDirectory() as folder:
                    constraintsPath = os.path.join(folder, "constraints.txt")
                    with open(constraintsPath, "w", encoding="utf-8") as f:
                        f.write(dependencies.constraints())
                    slicer.util.pip_install(dependencies.pip_install_args(plan.pip, constraintsPath))
        self._dependenciesChecked = True
        import sys

        if dependencies.needs_restart(plan.torch + plan.pip, sys.modules):
            if slicer.util.confirmYesNoDisplay(_("Packages were updated that Slicer had already loaded. "
                                                 "Restart Slicer now to use them?")):
                slicer.util.restart()
        return True

    @staticmethod
    def _installTorch(lines):
        from LDFSAMSegmentLib.dependencies import torch_version_requirement

        try:
            import PyTorchUtils
        except ImportError:
            logging.warning("LDFSAM: the PyTorch extension is not installed; installing torch with pip")
            slicer.util.pip_install(list(lines))
            return
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=torch_version_requirement(lines))
        if torch is None:
            raise RuntimeError("PyTorch was not installed")

    # -- processes --------------------------------------------------------------------------------------------
    def startSegmentation(self, parameters, ldfsamHome=None, start=False):
        """Write the input volume to a temporary file and prepare the ``ldfsam segment`` process."""
        from LDFSAMSegmentLib.commands import core_env, segment_argv
        from LDFSAMSegmentLib.process import BackgroundProcess

        volume = parameters.inputVolume
        if volume is None or volume.GetImageData() is None:
            raise ValueError(_("Select an input volume that has image data."))
        folder = tempfile.mkdtemp(prefix="LDFSAM-")
        inputPath = os.path.join(folder, "input.nrrd")
        outputPath = os.path.join(folder, "teeth.seg.nrrd")
        if not slicer.util.exportNode(volume, inputPath):
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"{inputPath}: could not write the input volume")
        argv = segment_argv(inputPath, outputPath, parameters.model, parameters.device, parameters.threshold,
                            parameters.minIslandMm3, parameters.splitTeeth, slice_spacing=parameters.sliceSpacing)
        process = BackgroundProcess(argv, env=core_env(ldfsamHome))
        self._pending = (process, folder, outputPath, volume, parameters.outputSegmentation)
        return process.start() if start else process

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

    def importModelProcess(self, path):
        from LDFSAMSegmentLib.commands import core_env, models_import_argv
        from LDFSAMSegmentLib.process import BackgroundProcess

        return BackgroundProcess(models_import_argv(path), env=core_env(cacheFolder()))

    def downloadModelProcess(self, name):
        from LDFSAMSegmentLib.commands import core_env, models_download_argv
        from LDFSAMSegmentLib.process import BackgroundProcess

        return BackgroundProcess(models_download_argv(name), env=core_env(cacheFolder()))

    def segment(self, parameters, ldfsamHome=None, timeoutS=3600):
        """Segment and wait (scripts and self-tests); raises with the process's error message on failure."""
        from LDFSAMSegmentLib.run_state import RunState, failure_message

        process = self.startSegmentation(parameters, ldfsamHome, start=True)
        state = RunState()
        import time

        deadline = time.monotonic() + timeoutS
        finished = False
        while not finished:
            finished = process.finished
            for event in process.poll().events:
                state.feed(event)
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                process.cancel()
                raise TimeoutError("ldfsam segment did not finish in time")
            time.sleep(0.05)
        error = failure_message(process.returncode, state, process.stderr_tail(), process.cancelled)
        if error:
            self.discardRun()
            raise RuntimeError(f"{error}\n{process.stderr_tail()}")
        return self.finishSegmentation()

    # -- results ----------------------------------------------------------------------------------------------
    def loadResult(self, path, volume, segmentationNode=None):
        """A segmentation node on the volume's geometry with named, coloured, coded segments, under its study."""
        from LDFSAMSegmentLib.segments import segment_specs

        specs = segment_specs(path)
        loaded = slicer.util.loadSegmentation(str(path))
        if segmentationNode is None:
            segmentationNode = loaded
            segmentationNode.SetName(slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} teeth"))
        else:
            segmentationNode.GetSegmentation().DeepCopy(loaded.GetSegmentation())
            slicer.mrmlScene.RemoveNode(loaded)
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
        return segmentationNode


class LDFSAMSegmentTest(ScriptedLoadableModuleTest):
    """Runs the self-test in Testing/Python/LDFSAMSegmentSelfTest.py (also registered with CTest)."""

    def runTest(self):
        import importlib.util

        path = os.path.join(os.path.dirname(__file__), "Testing", "Python", "LDFSAMSegmentSelfTest.py")
        spec = importlib.util.spec_from_file_location("LDFSAMSegmentSelfTest", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        test = module.LDFSAMSegmentSelfTest()
        test.runTest()
