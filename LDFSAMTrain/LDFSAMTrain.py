"""LDFSAM Train: train an LDFSAM tooth model on your own CBCT data from 3D Slicer.

Each step (prepare, Phase 1 distillation, Phase 2 fine-tuning, evaluation) runs the core's command line in a
background process; its JSON progress events drive the progress bar and the loss / validation-Dice chart.
Command lines live in ``LDFSAMTrainLib``; process handling, progress and dependencies in ``LDFSAMSegmentLib``.
"""

import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
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

STEP_TITLES = {"prepare": "Prepare data", "distill": "Phase 1", "finetune": "Phase 2", "evaluate": "Evaluate"}


class LDFSAMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDFSAM Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # The Segment module installs the ldfsam core and the shared process / dependency helpers.
        self.parent.dependencies = ["LDFSAMSegment"]
        self.parent.contributors = ["LDFSAM contributors"]
        self.parent.helpText = _(
            "Trains an LDFSAM tooth segmentation model: prepare the data, Phase 1 (YOLOv8 teacher and a student "
            "trained with localization distillation), Phase 2 (SAM fine-tuned with dense and sparse feature "
            "prompts), evaluation, then use the model in LDFSAM Segment.")
        self.parent.acknowledgementText = _(
            "Method: LDFSAM, localization-distilled feature prompting of the Segment Anything Model.")


@parameterNodeWrapper
class LDFSAMTrainParameterNode:
    datasetFolder: Path
    outputFolder: Path
    annotationBudget: Annotated[int, WithinRange(1, 100)] = 100
    teacherScale: Annotated[str, Choice(["n", "s", "m", "l", "x"])] = "x"
    studentScale: Annotated[str, Choice(["n", "s", "m", "l", "x"])] = "n"
    samPreset: Annotated[str, Choice(["vit_b", "vit_l", "vit_h", "small"])] = "vit_b"
    samCheckpoint: Path
    distillEpochs: Annotated[int, WithinRange(1, 10000)] = 100
    finetuneEpochs: Annotated[int, WithinRange(1, 10000)] = 200
    batchSize: Annotated[int, WithinRange(1, 1024)] = 16
    device: Annotated[str, Choice(["auto", "CPU", "GPU"])] = "auto"
    stoppedStep: str = ""
    curveTable: vtkMRMLTableNode
    curveChart: vtkMRMLPlotChartNode
    evaluationTable: vtkMRMLTableNode


def _pathText(path):
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


class LDFSAMTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self.runStep = None
        self._logShown = 0
        self._curve, self._curvePrefix = [], []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LDFSAMTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LDFSAMTrainLogic()
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        qt.QVBoxLayout(self.ui.plotFrame).addWidget(self.plotWidget)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.prepareButton.clicked.connect(lambda: self.onStep("prepare"))
        self.ui.distillButton.clicked.connect(lambda: self.onStep("distill"))
        self.ui.finetuneButton.clicked.connect(lambda: self.onStep("finetune"))
        self.ui.evaluateButton.clicked.connect(lambda: self.onStep("evaluate"))
        self.ui.resumeButton.clicked.connect(self.onResume)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.useModelButton.clicked.connect(self.onUseModel)
        self.initializeParameterNode()

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

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(self._parameterNode))
            self.showEvaluation()
        self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        running = self.run is not None
        p = self._parameterNode
        ready = bool(p and _pathText(p.datasetFolder) and _pathText(p.outputFolder))
        for name in ("prepareButton", "distillButton", "finetuneButton", "evaluateButton"):
            getattr(self.ui, name).enabled = ready and not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = bool(ready and not running and p.stoppedStep)
        model = self.logic.layout(p).model if ready else None
        self.ui.useModelButton.enabled = bool(model and model.is_file() and not running)
        for name in ("dataCollapsibleButton", "modelCollapsibleButton", "trainingCollapsibleButton"):
            getattr(self.ui, name).enabled = not running

    # -- steps ----------------------------------------------------------------------------------------------
    def onStep(self, step, resume=False):
        from LDFSAMSegment import LDFSAMSegmentLogic

        if not LDFSAMSegmentLogic().ensureDependencies():
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
        from LDFSAMSegmentLib.process import BackgroundProcess

        name = qt.QInputDialog.getText(self.parent, _("Use for segmentation"), _("Model name:"),
                                       qt.QLineEdit.Normal, Path(_pathText(self._parameterNode.outputFolder)).name)
        if name:
            self.startRun("import", BackgroundProcess(*self.logic.importArgs(self._parameterNode, name)))

    def startRun(self, step, process):
        from LDFSAMSegment import BackgroundRun

        self.runStep = step
        self.ui.logTextEdit.appendPlainText("$ " + " ".join(process.argv))
        self._logShown = 0
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting {step}...").format(step=STEP_TITLES.get(step, step))
        self.run = BackgroundRun(process, self.onRunUpdate, self.onRunFinished, intervalMs=500).start()
        self.updateButtons()

    def onRunUpdate(self, run):
        self.ui.progressBar.value = run.state.percent
        self.ui.statusLabel.text = run.state.status
        for line in run.state.log[self._logShown:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logShown = len(run.state.log)
        if self.runStep in ("distill", "finetune"):
            self._curve = self._curvePrefix + run.state.curve
            self.logic.updateCurves(self._parameterNode, self._curve)

    def onRunFinished(self, run, error):
        self.onRunUpdate(run)
        step, self.run, self.runStep = self.runStep, None, None
        if error:
            if run.process.cancelled and step in ("distill", "finetune"):
                self._parameterNode.stoppedStep = step
            self.ui.statusLabel.text = error
            if not run.process.cancelled:
                slicer.util.errorDisplay(error, detailedText=run.process.stderr_tail())
        else:
            self.ui.statusLabel.text = _("{step}: done.").format(step=STEP_TITLES.get(step, step))
            if step == "evaluate":
                self.logic.loadEvaluation(self._parameterNode)
                self.showEvaluation()
            if step == "import":
                slicer.util.infoDisplay(_("The model is installed; choose it in the LDFSAM Segment module."))
        self.updateButtons()

    def showEvaluation(self):
        from LDFSAMTrainLib.evaluation_table import read_evaluation_csv

        table = self.ui.evaluationTableWidget
        table.clear()
        table.setRowCount(0)
        if not _pathText(self._parameterNode.outputFolder):
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


class LDFSAMTrainLogic(ScriptedLoadableModuleLogic):
    """Builds the steps' processes and keeps the curve and evaluation tables; usable without the GUI."""

    def getParameterNode(self):
        return LDFSAMTrainParameterNode(super().getParameterNode())

    @staticmethod
    def settings(p):
        from LDFSAMTrainLib.commands import TrainSettings

        return TrainSettings(
            dataset=_pathText(p.datasetFolder), output=_pathText(p.outputFolder), budget_percent=p.annotationBudget,
            teacher_scale=p.teacherScale, student_scale=p.studentScale, sam_preset=p.samPreset,
            sam_checkpoint=_pathText(p.samCheckpoint) or None, distill_epochs=p.distillEpochs,
            finetune_epochs=p.finetuneEpochs, batch_size=p.batchSize, device=p.device)

    def layout(self, p):
        from LDFSAMTrainLib.commands import layout

        return layout(self.settings(p))

    def stepProcess(self, step, p, resume=False):
        from LDFSAMSegmentLib.commands import core_env
        from LDFSAMSegmentLib.process import BackgroundProcess
        from LDFSAMTrainLib.commands import step_argv

        from LDFSAMSegment import cacheFolder

        settings = self.settings(p)
        settings.check()
        os.makedirs(settings.output, exist_ok=True)
        # Long runs get a longer grace period: the trainers save their state before they exit.
        return BackgroundProcess(step_argv(step, settings, resume=resume), env=core_env(cacheFolder()),
                                 grace_s=60.0)

    def importArgs(self, p, name):
        from LDFSAMSegmentLib.commands import core_env
        from LDFSAMTrainLib.commands import import_argv

        from LDFSAMSegment import cacheFolder

        return import_argv(self.settings(p), name), core_env(cacheFolder())

    # -- curves -----------------------------------------------------------------------------------------------
    def plotViewNode(self, p):
        chart = self.curveChart(p)
        # A view node of our own: the layout's plot views keep showing what the user chose.
        viewNode = slicer.mrmlScene.GetFirstNodeByName("LDFSAMTrainPlotView")
        if viewNode is None:
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "LDFSAMTrainPlotView")
        viewNode.SetPlotChartNodeID(chart.GetID())
        return viewNode

    def curveChart(self, p):
        if p.curveTable is None:
            p.curveTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "LDFSAM training curves")
        if p.curveChart is None:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "LDFSAM training")
            chart.SetXAxisTitle("epoch (Phase 2 continues after Phase 1)")
            chart.SetYAxisTitle("loss / validation Dice")
            for column, name in (("loss", "loss"), ("val_dice", "validation Dice")):
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"LDFSAM {name}")
                series.SetAndObserveTableNodeID(p.curveTable.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(column)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            p.curveChart = chart
        return p.curveChart

    def updateCurves(self, p, points):
        from LDFSAMTrainLib.curves import COLUMNS, curve_columns

        self.curveChart(p)
        columns = curve_columns(points)
        table = p.curveTable.GetTable()
        wasModifying = p.curveTable.StartModify()
        table.Initialize()
        for name in COLUMNS:
            array = vtk.vtkStringArray() if name == "phase" else vtk.vtkDoubleArray()
            array.SetName(name)
            for value in columns[name]:
                array.InsertNextValue(value)
            table.AddColumn(array)
        p.curveTable.Modified()
        p.curveTable.EndModify(wasModifying)

    # -- evaluation -------------------------------------------------------------------------------------------
    def loadEvaluation(self, p):
        """Load the evaluation CSV into a table node (saved with the scene)."""
        path = self.layout(p).evaluation_csv
        if p.evaluationTable is not None:
            slicer.mrmlScene.RemoveNode(p.evaluationTable)
        p.evaluationTable = slicer.util.loadTable(str(path))
        p.evaluationTable.SetName("LDFSAM evaluation")
        return p.evaluationTable


class LDFSAMTrainTest(ScriptedLoadableModuleTest):
    """Runs the self-test in Testing/Python/LDFSAMTrainSelfTest.py (also registered with CTest)."""

    def runTest(self):
        import importlib.util

        path = os.path.join(os.path.dirname(__file__), "Testing", "Python", "LDFSAMTrainSelfTest.py")
        spec = importlib.util.spec_from_file_location("LDFSAMTrainSelfTest", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.LDFSAMTrainSelfTest().runTest()
