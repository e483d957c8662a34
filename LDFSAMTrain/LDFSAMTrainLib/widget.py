"""LDFSAM Train's panel: data, model and training settings, one button per step, Stop/Resume, the curve chart and
the evaluation table (Slicer layer)."""

from pathlib import Path

import qt
import slicer
from LDFSAMSegmentLib.bindings import path_text
from LDFSAMSegmentLib.lifecycle import LDFSAMModuleWidget
from slicer.i18n import tr as _

from .evaluation_table import read_evaluation_csv
from .logic import LDFSAMTrainLogic

STEP_TITLES = {"prepare": "Prepare data", "distill": "Phase 1", "finetune": "Phase 2", "evaluate": "Evaluate",
               "import": "Use for segmentation"}
STEP_BUTTONS = {"prepare": "prepareButton", "distill": "distillButton", "finetune": "finetuneButton",
                "evaluate": "evaluateButton"}
PANEL_SECTIONS = ("dataCollapsibleButton", "modelCollapsibleButton", "trainingCollapsibleButton")


class LDFSAMTrainWidget(LDFSAMModuleWidget):
    libPackage = "LDFSAMTrainLib"

    def __init__(self, parent=None):
        LDFSAMModuleWidget.__init__(self, parent)
        self.runStep = None
        self._curve, self._curvePrefix = [], []

    def newLogic(self):
        return LDFSAMTrainLogic()

    def setupModule(self):
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        qt.QVBoxLayout(self.ui.plotFrame).addWidget(self.plotWidget)
        for step, button in STEP_BUTTONS.items():
            getattr(self.ui, button).clicked.connect(lambda checked=False, step=step: self.onStep(step))
        self.ui.resumeButton.clicked.connect(self.onResume)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.useModelButton.clicked.connect(self.onUseModel)

    def setParameterNode(self, parameterNode):
        shown = self._parameterNode
        LDFSAMModuleWidget.setParameterNode(self, parameterNode)
        if parameterNode is not None and self._parameterNode is not shown:
            self.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(self._parameterNode))
            self.showEvaluation()

    def updateButtons(self, caller=None, event=None):
        if not hasattr(self, "ui"):
            return
        running = self.run is not None
        busy = running or self.installing
        p = self._parameterNode
        ready = bool(p and path_text(p.datasetFolder) and path_text(p.outputFolder))
        for button in STEP_BUTTONS.values():
            getattr(self.ui, button).enabled = ready and not busy
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = bool(ready and not busy and p.stoppedStep)
        model = self.logic.layout(p).model if ready else None
        self.ui.useModelButton.enabled = bool(model and model.is_file() and not busy)
        for name in PANEL_SECTIONS:
            getattr(self.ui, name).enabled = not busy

    # -- steps ----------------------------------------------------------------------------------------------
    def onStep(self, step, resume=False):
        if not self.ensureDependencies():
            return
        try:
            process = self.logic.stepProcess(step, self._parameterNode, resume=resume)
        except (ValueError, OSError) as e:
            slicer.util.errorDisplay(_("Cannot start {step}: {error}").format(step=STEP_TITLES[step], error=e))
            return
        # The chart shows the whole training: Phase 1 starts it afresh, Phase 2 and resumed runs add to it.
        self._curvePrefix = [] if step == "distill" and not resume else list(self._curve)
        self._parameterNode.stoppedStep = ""
        self.startRun(step, process)

    def onResume(self):
        self.onStep(self._parameterNode.stoppedStep, resume=True)

    def onStop(self):
        if self.run is None:
            return
        question = _("Stop {step}? Its last saved state is kept, and Resume continues from there.")
        if slicer.util.confirmYesNoDisplay(question.format(step=STEP_TITLES[self.runStep])):
            self.ui.statusLabel.text = _("Stopping...")
            self.run.cancel()

    def onUseModel(self):
        name = qt.QInputDialog.getText(self.parent, _("Use for segmentation"), _("Model name:"),
                                       qt.QLineEdit.Normal, Path(path_text(self._parameterNode.outputFolder)).name)
        if name:
            self.startRun("import", self.logic.importProcess(self._parameterNode, name))

    def startRun(self, step, process):
        self.runStep = step
        self.ui.statusLabel.text = _("Starting {step}...").format(step=STEP_TITLES.get(step, step))
        self.startBackgroundRun(process, intervalMs=500)

    def onRunUpdate(self, run):
        LDFSAMModuleWidget.onRunUpdate(self, run)
        if self.runStep in ("distill", "finetune"):
            self._curve = self._curvePrefix + run.state.curve
            self.logic.updateCurves(self._parameterNode, self._curve)

    def onRunFinished(self, run, error):
        self.onRunUpdate(run)
        step, self.run, self.runStep = self.runStep, None, None
        if error:
            if run.process.cancelled and step in ("distill", "finetune"):
                self._parameterNode.stoppedStep = step
            self.showRunError(run, error)
        else:
            self.ui.statusLabel.text = _("{step}: done.").format(step=STEP_TITLES.get(step, step))
            if step == "evaluate":
                self.logic.loadEvaluation(self._parameterNode)
                self.showEvaluation()
            if step == "import":
                slicer.util.infoDisplay(_("The model is installed; choose it in the LDFSAM Segment module."))
        self.updateButtons()

    def showEvaluation(self):
        table = self.ui.evaluationTableWidget
        table.clear()
        table.setRowCount(0)
        if not path_text(self._parameterNode.outputFolder):
            return
        path = self.logic.layout(self._parameterNode).evaluation_csv
        if not path.is_file():
            self.ui.evaluationSummaryLabel.text = _("No evaluation yet.")
            return
        data = read_evaluation_csv(path)
        table.setColumnCount(len(data.columns))
        table.setHorizontalHeaderLabels(data.columns)
        table.setRowCount(len(data.rows))
        for r, row in enumerate(data.rows):
            for c, value in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(value))
        means = ", ".join(f"{k} {v:.4f}" for k, v in data.means().items())
        self.ui.evaluationSummaryLabel.text = _("{n} case(s); mean {means}").format(n=len(data.rows), means=means)
