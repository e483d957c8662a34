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
        self.refreshPriors()
        self.onModelChanged()

    def refreshPriors(self):
        """The priors the Interactive section offers: the worker's default, none, or an installed model (the
        worker says so when the one chosen has no saliency head)."""
        combo = self.ui.promptPriorComboBox
        blocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("the default model's prior (when it has one)"), "auto")
        combo.addItem(_("nothing: take every click as given"), "none")
        for choice in self._choices:
            if choice.state != "available":
                combo.addItem(_("the prior of {name}").format(name=choice.name), choice.name)
        wanted = self._parameterNode.interactivePrior if self._parameterNode else "auto"
        index = combo.findData(wanted)
        combo.currentIndex = index if index >= 0 else 0
        combo.blockSignals(blocked)

    def onPriorChanged(self, *_args):
        prior = self.ui.promptPriorComboBox.currentData
        if self._parameterNode and prior and self._parameterNode.interactivePrior != prior:
            self._parameterNode.interactivePrior = prior

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

    # -- training set ---------------------------------------------------------------------------------------------
    def trainingLogic(self):
        from .training_logic import TrainingSetLogic

        self._training = self._training or TrainingSetLogic()
        return self._training

    def updateTrainingButtons(self, running, busy):
        from .bindings import path_text
        from .training_set import REVIEW_CHOICES

        p = self._parameterNode
        folder = bool(p and path_text(p.trainingFolder))
        self.ui.addToTrainingSetButton.enabled = bool(folder and p.inputVolume and not busy)
        self.ui.reviewedSlicesLineEdit.enabled = bool(p and p.reviewed == REVIEW_CHOICES[2])
        name = p.newModelName.strip() if p else ""
        installed = {c.name for c in self._choices if c.state != "available"}
        if self._improving is not None:
            self.ui.improveModelButton.text = _("Cancel improving '{name}'").format(name=self._improving)
            self.ui.improveModelButton.enabled = True
        else:
            # A run of that name that was started and not installed yet (cancelled, or it crashed) continues.
            resumable = bool(name) and name not in installed and self._improveRunStarted(name)
            self.ui.improveModelButton.text = (_("Resume improving '{name}'").format(name=name) if resumable
                                               else _("Improve model from my training set"))
            self.ui.improveModelButton.enabled = bool(folder and name and self.selectedChoice() and not busy)
        self.ui.useNewModelButton.enabled = bool(p and p.improvedModel in installed and p.model != p.improvedModel)

    def _improveRunStarted(self, name):
        from .training_set import can_resume

        try:
            return can_resume(self.trainingLogic().improveRun(name, cacheFolder()))
        except Exception:  # a name the core refuses: the button's run says why
            return False

    def onAddToTrainingSet(self):
        from .bindings import path_text

        if self.run is not None or not self.ensureDependencies():
            return
        p = self._parameterNode
        folder = path_text(p.trainingFolder)
        try:
            process, plan = self.trainingLogic().addCaseProcess(
                p.inputVolume, p.outputSegmentation, p.interactiveSegmentation, folder, p.reviewed,
                p.reviewedSlices, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not add the volume to the training set: {error}").format(error=e))
            return
        caseId = self._training.caseId
        origins = [s.origin for s in plan.segments]
        counts = ", ".join(f"{origins.count(o)} {o}" for o in ("automatic", "prompted", "edited") if o in origins)

        def done():
            self._training.discard()
            self.ui.statusLabel.text = _("Added '{case}' to {folder} ({counts} segment(s)).").format(
                case=caseId, folder=folder, counts=counts)

        self.startRun(process, done)

    def onImproveModel(self):
        from .bindings import path_text

        if self._improving is not None:
            self.ui.statusLabel.text = _("Cancelling (the run keeps its last saved state; the button resumes it)...")
            self.run.cancel()
            return
        if self.run is not None or not self.ensureDependencies():
            return
        p = self._parameterNode
        name, choice = p.newModelName.strip(), self.selectedChoice()
        try:
            process, resumed = self.trainingLogic().improveProcess(
                path_text(p.trainingFolder), choice.name if choice else "", name, p.device, cacheFolder())
        except Exception as e:
            slicer.util.errorDisplay(_("Could not start improving the model: {error}").format(error=e))
            return

        def done():
            p.improvedModel = name
            self.refreshModels()
            self.ui.statusLabel.text = _("'{name}' is installed: press \"Use the new model\" to segment with "
                                         "it.").format(name=name)

        self._improving = name
        self.startRun(process, done)
        if resumed:
            self.ui.statusLabel.text = _("Resuming the improvement of '{name}'...").format(name=name)

    def onUseNewModel(self):
        p = self._parameterNode
        p.model = p.improvedModel
        self.refreshModels()  # selects the parameter node's model
        self.ui.statusLabel.text = _("Segmenting with '{name}'.").format(name=p.model)

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
                cacheFolder(), lineNode=self.ui.lineSelector.currentNode(),
                prior=self._parameterNode.interactivePrior)
        except Exception as e:
            slicer.util.errorDisplay(_("Could not segment in the ROI: {error}").format(error=e))
            return
        self.ui.statusLabel.text = _("Segmenting '{name}' (the first run loads LiteMedSAM)...").format(
            name=self.interactiveName())
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

    def interactiveName(self):
        """The structure's name: the ROI's, or the line's when there is no ROI (as ``segmentInRoi`` names it)."""
        node = self.ui.roiSelector.currentNode() or self.ui.lineSelector.currentNode()
        return node.GetName() if node else ""

    def onInteractiveUndo(self):
        try:
            self._interactive.undo(self.interactiveName(), self._parameterNode.inputVolume,
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
        report = self._interactive.notUsedText(reply)  # clicks SPD's prior dropped or moved (``not_used``)
        if report:
            self.ui.statusLabel.text += " " + report
            self.ui.logTextEdit.appendPlainText(f"{reply.get('name', '')}: {report}")  # kept when the line is long
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
