"""LDFSAM Train's logic: builds the steps' processes and keeps the curve and evaluation tables; usable without the
GUI (Slicer layer). The command lines themselves are in ``commands`` (plain Python)."""

import os

import slicer
import vtk
from LDFSAMSegmentLib.commands import core_env
from LDFSAMSegmentLib.logic import removeNodeAndHelpers
from LDFSAMSegmentLib.parameters import cacheFolder
from LDFSAMSegmentLib.process import BackgroundProcess
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .commands import import_argv, layout, settings_from, step_argv
from .curves import COLUMNS, curve_columns
from .parameters import LDFSAMTrainParameterNode
from .run_all import report_figures, report_url, run_all_argv

# Training steps save their state before they exit: a longer grace period before Cancel kills them.
STEP_GRACE_S = 60.0


class LDFSAMTrainLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return LDFSAMTrainParameterNode(super().getParameterNode())

    @staticmethod
    def settings(p):
        return settings_from(p)

    def layout(self, p):
        return layout(self.settings(p))

    def stepProcess(self, step, p, resume=False):
        """The (not yet started) process of one step; ValueError naming the setting when one is wrong."""
        settings = self.settings(p)
        settings.check()
        os.makedirs(settings.output, exist_ok=True)
        return BackgroundProcess(step_argv(step, settings, resume=resume), env=core_env(cacheFolder()),
                                 grace_s=STEP_GRACE_S)

    def runAllProcess(self, p):
        """(the not yet started ``ldfsam train`` process, resumed?): a new run, or the output folder's run
        continued; ValueError naming the setting, or the output folder when it holds other files."""
        argv, resumed = run_all_argv(self.settings(p))
        return BackgroundProcess(argv, env=core_env(cacheFolder()), grace_s=STEP_GRACE_S), resumed

    def reportFigures(self, p):
        """(title, PNG bytes) of the figures in the run's report.html (none before Run all wrote one)."""
        return report_figures(self.layout(p).report)

    def reportUrl(self, p):
        return report_url(self.layout(p).report)

    def importProcess(self, p, name):
        """Installs the fine-tuned model in the model cache under ``name``."""
        return BackgroundProcess(import_argv(self.settings(p), name), env=core_env(cacheFolder()))

    # -- curves -----------------------------------------------------------------------------------------------
    # The table, chart, series and view nodes are made by the first curve point of a run (never merely by opening
    # the module, which would add five nodes to the user's scene).
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
            removeNodeAndHelpers(p.evaluationTable)  # with its storage node, which RemoveNode leaves behind
        p.evaluationTable = slicer.util.loadTable(str(path))
        p.evaluationTable.SetName("LDFSAM evaluation")
        return p.evaluationTable
