"""LDFSAM Train's panel: data, model and training settings, one button per step and Run all, Stop/Resume, the curve
chart, the evaluation table and the figures of Run all's report (Slicer layer)."""

from pathlib import Path

import qt
import slicer
from LDFSAMSegmentLib.bindings import path_text
from LDFSAMSegmentLib.lifecycle import LDFSAMModuleWidget
from slicer.i18n import tr as _

from .evaluation_table import fill_table, read_evaluation_csv
from .logic import LDFSAMTrainLogic
from .run_all import overall_percent

STEP_TITLES = {"prepare": "Prepare data", "distill": "Phase 1", "finetune": "Phase 2", "evaluate": "Evaluate",
               "all": "Run all", "import": "Use for segmentation"}
STEP_BUTTONS = {"prepare": "prepareButton", "distill": "distillButton", "finetune": "finetuneButton",
                "evaluate": "evaluateButton"}
PANEL_SECTIONS = ("dataCollapsibleButton", "modelCollapsibleButton", "trainingCollapsibleButton")


class LDFSAMTrainWidget(LDFSAMModuleWidget):
    libPackage = "LDFSAMTrainLib"

    def __init__(self, parent=None):
        LDFSAMModuleWidget.__init__(self, parent)
        self.runStep = None
        self._curve, self._curvePrefix = [], []
        self._overall = 0
        self._figureLabels = []

    def newLogic(self):
        return LDFSAMTrainLogic()

    def setupModule(self):
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        qt.QVBoxLayout(self.ui.plotFrame).addWidget(self.plotWidget)
        for step, button in STEP_BUTTONS.items():
            getattr(self.ui, button).clicked.connect(lambda checked=False, step=step: self.onStep(step))
        self.ui.runAllButton.clicked.connect(self.onRunAll)
        self.ui.openReportButton.clicked.connect(self.onOpenReport)
        self.ui.resumeButton.clicked.connect(self.onResume)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.useModelButton.clicked.connect(self.onUseModel)

    def setParameterNode(self, parameterNode):
        shown = self._parameterNode
        LDFSAMModuleWidget.setParameterNode(self, parameterNode)
        if parameterNode is not None and self._parameterNode is not shown:
            if self._parameterNode.curveChart is None:
                self.plotWidget.setMRMLPlotViewNode(None)  # nothing of a closed scene stays shown
            self.showEvaluation()
            self.showReport()
        self.showCurves()

    def showCurves(self):
        """Show the scene's training chart once it has one (a run makes it with its first curve point; opening the
        module makes no node)."""
        p = self._parameterNode
        if p is None or p.curveChart is None:
            return
        view = self.plotWidget.mrmlPlotViewNode()
        if view is None or view.GetPlotChartNodeID() != p.curveChart.GetID():
            self.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(p))

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
        out = self.logic.layout(p) if ready else None
        # On a folder that holds an ``ldfsam train`` run, the button continues it.
        self.ui.runAllButton.text = _("Resume all") if out and out.train_config.is_file() else _("Run all")
        self.ui.runAllButton.enabled = ready and not busy
        self.ui.openReportButton.enabled = bool(out and out.report.is_file())
        model = out.model if out else None
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

    def onRunAll(self):
        if not self.ensureDependencies():
            return
        try:
            process, resumed = self.logic.runAllProcess(self._parameterNode)
        except (ValueError, OSError) as e:
            # A folder the step buttons filled is the usual case: say so in the panel, not only in a dialog.
            message = _("Cannot start Run all: {error}").format(error=e)
            self.ui.statusLabel.text = message
            slicer.util.errorDisplay(message)
            return
        self._curvePrefix = list(self._curve) if resumed else []
        self._overall = 0
        self._parameterNode.stoppedStep = ""
        self.startRun("all", process)

    def onResume(self):
        if self._parameterNode.stoppedStep == "all":
            self.onRunAll()
        else:
            self.onStep(self._parameterNode.stoppedStep, resume=True)

    def onOpenReport(self):
        qt.QDesktopServices.openUrl(qt.QUrl(self.logic.reportUrl(self._parameterNode)))

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
        if self.runStep == "all":
            # One bar over the four stages (the status line names the running phase and its own progress).
            percent = overall_percent(run.state.last_event)
            self._overall = self._overall if percent is None else percent
            self.ui.progressBar.value = self._overall
        curves = run.state.curve or self._parameterNode.curveChart is not None  # no node made before a point
        if self.runStep in ("distill", "finetune", "all") and curves:
            self._curve = self._curvePrefix + run.state.curve
            self.logic.updateCurves(self._parameterNode, self._curve)
            self.showCurves()  # the first curve point of the scene makes its chart

    def onRunFinished(self, run, error):
        self.onRunUpdate(run)
        step, self.run, self.runStep = self.runStep, None, None
        if error:
            if run.process.cancelled and step in ("distill", "finetune", "all"):
                self._parameterNode.stoppedStep = step
            self.showRunError(run, error)
        else:
            self.ui.statusLabel.text = _("{step}: done.").format(step=STEP_TITLES.get(step, step))
            evaluated = self.logic.layout(self._parameterNode).evaluation_csv.is_file()
            if step == "evaluate" or (step == "all" and evaluated):
                self.logic.loadEvaluation(self._parameterNode)
                self.showEvaluation()
            if step == "import":
                slicer.util.infoDisplay(_("The model is installed; choose it in the LDFSAM Segment module."))
        if step == "all":
            self.showReport()  # the core writes it when the run finishes (a stopped run keeps an earlier one)
        self.updateButtons()

    def onRunAbandoned(self, run):
        self.runStep = None  # its scene was closed: nothing to update, nothing to resume in the new scene

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
        fill_table(table, data, qt.QTableWidgetItem)
        means = ", ".join(f"{k} {v:.4f}" for k, v in data.means().items())
        self.ui.evaluationSummaryLabel.text = _("{n} case(s); mean {means}").format(n=len(data.rows), means=means)

    def showReport(self):
        """The figures of the run's report.html, one titled image each (as the chart shows the curves)."""
        for label in self._figureLabels:
            label.setParent(None)
            label.deleteLater()
        self._figureLabels = []
        figures = self.logic.reportFigures(self._parameterNode) if path_text(self._parameterNode.outputFolder) else []
        if not figures:
            self.ui.reportSummaryLabel.text = _("No report yet: Run all writes one.")
            return
        self.ui.reportSummaryLabel.text = _("{n} figure(s) of {report}").format(
            n=len(figures), report=self.logic.layout(self._parameterNode).report)
        layout = self.ui.figuresFrame.layout()
        for title, png in figures:
            pixmap = qt.QPixmap()
            pixmap.loadFromData(qt.QByteArray(png))  # Qt reads the format from the data
            caption, image = qt.QLabel(title), qt.QLabel()
            image.setPixmap(pixmap.scaledToWidth(min(pixmap.width(), 480), qt.Qt.SmoothTransformation))
            image.toolTip = title
            for label in (caption, image):
                layout.addWidget(label)
                self._figureLabels.append(label)
