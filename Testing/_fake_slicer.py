"""Stand-ins for the few Slicer calls the modules' widget life cycle makes, so that the real ``lifecycle`` code can be
driven outside Slicer: ``qt`` is PySide6's QtCore (real timers, offscreen), ``slicer`` and ``vtk`` are the thin parts
the code touches (scene events, observers, dialogs, ``tr``). Install with :func:`install` (a context manager) and
import the Lib modules inside it; everything is removed again afterwards."""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator, List


class FakeScene:
    StartCloseEvent, EndCloseEvent = "StartCloseEvent", "EndCloseEvent"


class VTKObservationMixin:
    def __init__(self):
        self.observations: List[tuple] = []

    def addObserver(self, obj, event, method):  # noqa: N802 - Slicer's API
        self.observations.append((obj, event, method))

    def removeObservers(self):  # noqa: N802
        self.observations = []


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class Label:
    text = ""
    toolTip = ""


class ProgressBar:
    value = 0


class LogText:
    def __init__(self):
        self.lines: List[str] = []

    def appendPlainText(self, line):  # noqa: N802
        self.lines.append(line)

    def clear(self):
        self.lines = []


class StringArray:
    """vtkStringArray, as far as the modules fill it."""

    def __init__(self):
        self.values: List[str] = []

    def InsertNextValue(self, value):  # noqa: N802
        self.values.append(value)


@contextlib.contextmanager
def install() -> Iterator[types.SimpleNamespace]:
    """Put ``qt``, ``vtk``, ``slicer`` (and ``slicer.util``, ``slicer.i18n``, ``slicer.ScriptedLoadableModule``) in
    ``sys.modules``; yields a namespace with the dialogs shown (``errors``)."""
    from PySide6 import QtCore, QtWidgets

    # Slicer runs a QApplication. A QCoreApplication here would stay the process's application, and a later test
    # that builds widgets would abort the whole run ("Fatal Python error: Aborted" when run after this one alone).
    app = QtCore.QCoreApplication.instance() or QtWidgets.QApplication([])
    shown = types.SimpleNamespace(errors=[], app=app)
    qt = types.ModuleType("qt")
    qt.QTimer = QtCore.QTimer
    vtk = types.ModuleType("vtk")
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent="ModifiedEvent")
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = FakeScene()
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = VTKObservationMixin
    util.errorDisplay = lambda text, **kw: shown.errors.append(text)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = object
    slicer.util, slicer.i18n, slicer.ScriptedLoadableModule = util, i18n, module
    # What the parameter modules declare (types of parameters, the wrapper's decorator and validators).
    qt.QSettings = QtCore.QSettings
    vtk.vtkStringArray = StringArray
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args: None
    slicer.parameterNodeWrapper = wrapper
    for name in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode", "vtkMRMLScalarVolumeNode",
                 "vtkMRMLMarkupsCurveNode", "vtkMRMLMarkupsLineNode",
                 "vtkMRMLSegmentationNode", "vtkMRMLPlotChartNode", "vtkMRMLTableNode"):
        setattr(slicer, name, type(name, (), {}))
    fakes = {"qt": qt, "vtk": vtk, "slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
             "slicer.ScriptedLoadableModule": module, "slicer.parameterNodeWrapper": wrapper}
    saved = {name: sys.modules.get(name) for name in fakes}
    before = set(sys.modules)
    sys.modules.update(fakes)
    try:
        yield shown
    finally:
        for name in set(sys.modules) - before:  # Lib modules imported against the fakes go with them
            if name.startswith(("LDFSAMSegmentLib.", "LDFSAMTrainLib.")):
                sys.modules.pop(name, None)
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
