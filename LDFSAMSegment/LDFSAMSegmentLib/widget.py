"""LDFSAM Segment's panel: volume, model and options, the Segment/Cancel button, progress and log (Slicer layer).

The panel's sections beside the automatic run are parts of the widget class, each in its own module:
``model_section`` (models, cache folder, device), ``interactive_section`` (prompted structures) and
``training_section`` (training set, improving the model).
"""

import logging

import qt
import slicer
from slicer.i18n import tr as _

from .cohort import SOURCES, CohortState, single_component_scalar_volumes
from .interactive_section import InteractiveSection
from .lifecycle import LDFSAMModuleWidget
from .logic import LDFSAMSegmentLogic
from .model_section import ModelSection
from .parameters import cacheFolder
from .training_section import TrainingSetSection

PANEL_SECTIONS = ("inputsCollapsibleButton", "modelCollapsibleButton", "optionsCollapsibleButton",
                  "advancedCollapsibleButton")


class LDFSAMSegmentWidget(ModelSection, InteractiveSection, TrainingSetSection, LDFSAMModuleWidget):
    libPackage = "LDFSAMSegmentLib"

    def __init__(self, parent=None):
        LDFSAMModuleWidget.__init__(self, parent)
        self._choices = []
        self._onSuccess = None
        self._cohort = None  # the CohortState of a running "Segment all volumes"
        self._interactive = None  # InteractiveLogic, made on first use (it starts the prompt worker)
        self._interactiveTimer = None
        self._training = None  # TrainingSetLogic ("Training set" section)
        self._improving = None  # the name of the model an "Improve model" run is making

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
        self.ui.lineSelector.currentNodeChanged.connect(self.updateButtons)
        self.ui.promptPriorComboBox.currentIndexChanged.connect(self.onPriorChanged)
        self.ui.addToTrainingSetButton.clicked.connect(self.onAddToTrainingSet)
        self.ui.improveModelButton.clicked.connect(self.onImproveModel)
        self.ui.useNewModelButton.clicked.connect(self.onUseNewModel)
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
        improving = self._improving is not None
        own = cohort or improving  # runs that their own button cancels
        self.ui.segmentButton.text = _("Cancel") if running and not own else _("Segment teeth")
        self.ui.segmentButton.enabled = (running and not own) or (ready and not busy)
        fromFolder = bool(p and p.cohortSource == SOURCES[1])
        cohortReady = bool(p and choice and choice.state != "available" and p.cohortOutputFolder
                           and (p.cohortFolder if fromFolder else True))
        self.ui.cohortButton.text = _("Cancel") if cohort else _("Segment all volumes")
        self.ui.cohortButton.enabled = cohort or (cohortReady and not busy)
        self.ui.cohortFolderPathLineEdit.enabled = fromFolder and not busy
        for name in ("cohortSourceComboBox", "cohortOutputPathLineEdit"):
            getattr(self.ui, name).enabled = not busy
        waiting = self._interactive is not None and self._interactive.busy
        structure = self.ui.roiSelector.currentNode() or self.ui.lineSelector.currentNode()
        canPrompt = bool(p and p.inputVolume and structure) and not waiting
        self.ui.interactiveSegmentButton.enabled = canPrompt and not self.installing
        # Undo needs the worker's history of this session, and the segmentation its results went to.
        self.ui.interactiveUndoButton.enabled = (canPrompt and self._interactive is not None
                                                 and p.interactiveSegmentation is not None)
        self.ui.downloadModelButton.enabled = bool(choice and choice.state == "available" and not busy)
        self.updateTrainingButtons(running, busy)
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
        self._improving = None
        if error and self._training is not None:
            self._training.discard()
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
        self._cohort, self._onSuccess, self._improving = None, None, None
        if self._training is not None:
            self._training.discard()
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

    def cleanup(self):
        self.stopInteractive()
        LDFSAMModuleWidget.cleanup(self)

    def onSceneStartClose(self, caller, event):
        self.stopInteractive()  # the worker's volume and history belong to the scene being closed
        LDFSAMModuleWidget.onSceneStartClose(self, caller, event)
