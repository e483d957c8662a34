"""What the widgets of both LDFSAM modules share: the parameter node bound to the .ui, scene-close handling,
background runs polled by a timer, and the busy state while dependencies install (Slicer layer).

Supported: Slicer 5.8 and later. Slicer 5.8's ``parameterNodeWrapper.connectGui`` returns None instead of its tag
(fixed in 5.10 by Slicer commit b5a65a49a0), so ``disconnectGui`` cannot remove what it connected, and the stale
combo-box connectors write their first choice back when a new connection refills the combo boxes.
``connectParametersToGui`` returns the tag on every version, so the binding builds the mapping itself and is made
once per parameter node: ``enter`` does not connect again, and a new scene replaces the connection for real.
"""

import importlib
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .bindings import PARAMETER_PROPERTY, PATH_PROPERTY, bound_widgets, path_text
from .run_state import RunState, failure_message


class ParameterNodeBinding:
    """One parameter node wrapper bound to the widgets of a .ui, or none; ``bind`` replaces the previous one."""

    def __init__(self, ui, onModified):
        widgets = list(vars(ui).values())
        self.mapping = bound_widgets(widgets, PARAMETER_PROPERTY)
        self.paths = bound_widgets(widgets, PATH_PROPERTY)
        self.node = None
        self._tag = None
        self._observer = None
        self._onModified = onModified
        for name, widget in self.paths.items():
            widget.currentPathChanged.connect(lambda path, name=name: self._pathEdited(name, path))

    def bind(self, node):
        """Show ``node`` (a parameterNodeWrapper instance, or None); a no-op when it is already shown."""
        if node is not None and self.node is not None and node.parameterNode is self.node.parameterNode:
            return
        self.unbind()
        self.node = node
        if node is None:
            self._onModified()
            return
        self._tag = node.connectParametersToGui(self.mapping)
        self._observer = node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._nodeModified)
        self._nodeModified()

    def unbind(self):
        if self.node is not None:
            if self._tag is not None:
                self.node.disconnectGui(self._tag)
            if self._observer is not None:
                self.node.RemoveObserver(self._observer)
        self.node, self._tag, self._observer = None, None, None

    def _nodeModified(self, caller=None, event=None):
        for name, widget in self.paths.items():
            text = path_text(getattr(self.node, name))
            if widget.currentPath != text:
                blocked = widget.blockSignals(True)
                widget.currentPath = text
                widget.blockSignals(blocked)
        self._onModified()

    def _pathEdited(self, name, path):
        if self.node is not None and path_text(getattr(self.node, name)) != path_text(path):
            setattr(self.node, name, path_text(path))


class BackgroundRun:
    """Connects a BackgroundProcess to the GUI through a timer: events -> RunState (and ``onEvent``, for a state
    of the caller's own) -> callbacks."""

    def __init__(self, process, onUpdate, onFinished, intervalMs=200, onEvent=None):
        self.process, self.state = process, RunState()
        self.onUpdate, self.onFinished, self.onEvent = onUpdate, onFinished, onEvent
        self.abandoned = False  # cancelled because its scene was closed: its result belongs to no scene
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.timeout.connect(self._poll)

    def start(self):
        self.process.start()
        self.timer.start()
        return self

    def cancel(self):
        self.process.cancel()

    def abandon(self):
        """Cancel for good: the scene the run worked for is closing (the timer goes on until the tree has ended)."""
        self.abandoned = True
        self.process.cancel()

    @property
    def error(self):
        """None while running or after success; "Cancelled." or the failure's cause once finished."""
        return failure_message(self.process.returncode, self.state, self.process.stderr_tail(),
                               self.process.cancelled)

    def _poll(self):
        finished = self.process.finished  # before the poll: once finished, this poll reads the last lines
        out = self.process.poll()
        for event in out.events:
            self.state.feed(event)
            if self.onEvent is not None:
                self.onEvent(event)
        self.state.log.extend(out.stdout + out.stderr)
        if out.events or out.stdout or out.stderr:
            self.onUpdate(self)
        if finished:
            self.timer.stop()
            self.onFinished(self, self.error)


class LDFSAMModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The life cycle both module widgets share; subclasses set ``libPackage`` and implement ``setupModule``,
    ``newLogic`` and ``updateButtons``."""

    libPackage = ""  # the module's Lib package: "Reload" reloads its Slicer-layer modules too

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None
        self.run = None
        self.installing = False
        self._logShown = 0

    @property
    def _parameterNode(self):
        return self.binding.node if self.binding is not None else None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.newLogic()
        self.binding = ParameterNodeBinding(self.ui, self.updateButtons)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.setupModule()
        self.initializeParameterNode()

    def cleanup(self):
        if self.run is not None:
            self.run.cancel()
        if self.binding is not None:
            self.binding.unbind()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()  # the same node stays connected: nothing is connected twice

    def onSceneStartClose(self, caller, event):
        # A run works for the scene being closed: stop it (its whole process tree), and never load its result
        # into the next scene. Its timer goes on until the tree has ended, then restores the buttons.
        if self.run is not None:
            self.run.abandon()
            self.ui.statusLabel.text = _("Cancelling: the scene is closing...")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        self.binding.bind(parameterNode)

    def onReload(self):
        # Slicer reloads the module's own file only; the widget and logic classes live in the Lib package. Each
        # module is reloaded after the ones it imports, or it would keep their old classes.
        from .reload_order import reload_order

        folder = Path(sys.modules[self.libPackage].__file__).parent
        for name in reload_order(folder, self.libPackage):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # -- dependencies ---------------------------------------------------------------------------------------------
    def ensureDependencies(self, force=False):
        """Install the core's packages when needed (asking first), with the panel disabled meanwhile."""
        from .install_logic import InstallLogic

        self.installing = True
        self.updateButtons()
        try:
            return InstallLogic.shared().ensure(force=force)
        finally:
            self.installing = False
            self.updateButtons()

    # -- runs -----------------------------------------------------------------------------------------------------
    def startBackgroundRun(self, process, intervalMs=200, onEvent=None):
        self.ui.logTextEdit.appendPlainText("$ " + " ".join(process.argv))
        self._logShown = 0
        self.ui.progressBar.value = 0
        self.run = BackgroundRun(process, self._runUpdate, self._runFinished, intervalMs=intervalMs,
                                 onEvent=onEvent).start()
        self.updateButtons()

    def _runUpdate(self, run):
        if run.abandoned or self._parameterNode is None:
            LDFSAMModuleWidget.onRunUpdate(self, run)  # the log and the bar only: no node to update
        else:
            self.onRunUpdate(run)

    def _runFinished(self, run, error):
        """The end of a run: the subclass's ``onRunFinished``, unless the run was abandoned with its scene (or no
        parameter node is shown): then only what the run left behind is discarded and the buttons come back."""
        if not (run.abandoned or self._parameterNode is None):
            self.onRunFinished(run, error)
            return
        LDFSAMModuleWidget.onRunUpdate(self, run)
        self.run = None
        try:
            self.onRunAbandoned(run)
        finally:
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.") if run.abandoned else (error or "")
            self.updateButtons()

    def onRunAbandoned(self, run):
        """Discard what an abandoned run left (temporary files, the state of a run); subclasses add theirs."""

    def onRunUpdate(self, run):
        self.ui.progressBar.value = run.state.percent
        self.ui.statusLabel.text = run.state.status
        for line in run.state.log[self._logShown:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logShown = len(run.state.log)

    def onRunFinished(self, run, error):
        raise NotImplementedError

    def showRunError(self, run, error):
        """The failure in the status line; a dialog with the process's own error output unless cancelled."""
        self.ui.statusLabel.text = error
        if not run.process.cancelled:
            slicer.util.errorDisplay(error, detailedText=run.process.stderr_tail())
