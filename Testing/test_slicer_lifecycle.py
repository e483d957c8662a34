"""The widget life cycle both modules share (``lifecycle``), driven outside Slicer: the real code, real processes,
real Qt timers (PySide6, offscreen); only the thin calls into Slicer are stand-ins (Testing/_fake_slicer.py).

Closing the scene during a run cancels the run's whole process tree; its end then restores the buttons without
touching a parameter node or loading a result into the next scene. "Reload" reloads the Lib modules in the order
of their imports.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain"), str(Path(__file__).resolve().parent)]

pytest.importorskip("PySide6.QtCore", reason="PySide6 drives the real Qt timers of these tests")

import _fake_slicer  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.reload_order import lib_imports, reload_order  # noqa: E402

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="checks the process group with os.killpg")

# A run that starts a child of its own, prints progress, and would go on for ten minutes.
LONG_RUN = textwrap.dedent("""
    import subprocess, sys, time
    from ldfsam.progress import Progress
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    p = Progress("json")
    p.start("segment", total=600)
    for i in range(600):
        p.update("segment", i, 600)
        time.sleep(1)
""")


class FakeNode:
    """The parameter node wrapper, as far as the binding uses it."""

    def __init__(self):
        self.parameterNode = object()

    def connectParametersToGui(self, mapping):  # noqa: N802
        return "tag"

    def disconnectGui(self, tag):  # noqa: N802
        pass

    def AddObserver(self, event, callback):  # noqa: N802
        return 1

    def RemoveObserver(self, tag):  # noqa: N802
        pass


def _widget(lifecycle, calls):
    class Widget(lifecycle.LDFSAMModuleWidget):
        libPackage = "LDFSAMSegmentLib"

        def updateButtons(self, caller=None, event=None):
            calls.append(("buttons", self.run is None))

        def onRunUpdate(self, run):
            assert self._parameterNode is not None  # the real widgets read it here
            calls.append("update")

        def onRunFinished(self, run, error):
            calls.append("finished")  # would load the result into the scene

        def onRunAbandoned(self, run):
            calls.append("abandoned")

    from _fake_slicer import Label, LogText, ProgressBar

    widget = Widget(parent=None)
    widget.ui = type("UI", (), {})()
    widget.ui.statusLabel, widget.ui.progressBar, widget.ui.logTextEdit = Label(), ProgressBar(), LogText()
    widget.binding = lifecycle.ParameterNodeBinding(widget.ui, widget.updateButtons)
    widget.binding.bind(FakeNode())
    return widget


def _run_until(app, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    return condition()


def _group_alive(pid):
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@posix_only
def test_closing_the_scene_cancels_the_run_and_its_end_restores_the_buttons_without_a_node():
    with _fake_slicer.install() as shown:
        lifecycle = importlib.import_module("LDFSAMSegmentLib.lifecycle")
        calls = []
        widget = _widget(lifecycle, calls)
        from LDFSAMSegmentLib.commands import core_env

        process = BackgroundProcess([sys.executable, "-c", LONG_RUN], env=core_env(), grace_s=5.0)
        widget.startBackgroundRun(process, intervalMs=20)
        assert _run_until(shown.app, lambda: "update" in calls), "no progress reached the widget"
        run = widget.run
        widget.onSceneStartClose(None, None)  # Slicer's StartCloseEvent
        assert widget._parameterNode is None and run.abandoned and process.cancelled
        assert widget.ui.statusLabel.text == "Cancelling: the scene is closing..."
        assert _run_until(shown.app, lambda: widget.run is None), "the run never ended"
        assert not _group_alive(process.pid)  # the child it started is gone too
        assert "finished" not in calls and calls.count("abandoned") == 1
        assert calls[-1] == ("buttons", True) and not shown.errors
        assert widget.ui.statusLabel.text == "Cancelled: the scene was closed."
        # A new scene's node is shown at once (the module is entered): a run of the old one still does nothing.
        widget.binding.bind(FakeNode())
        assert widget._parameterNode is not None


def test_a_run_that_ends_normally_still_reaches_the_widget():
    with _fake_slicer.install() as shown:
        lifecycle = importlib.import_module("LDFSAMSegmentLib.lifecycle")
        calls = []
        widget = _widget(lifecycle, calls)
        widget.startBackgroundRun(BackgroundProcess([sys.executable, "-c", "print('hello')"]), intervalMs=20)
        assert _run_until(shown.app, lambda: "finished" in calls)
        assert "abandoned" not in calls and "update" in calls and widget.run.state.log == ["hello"]


@pytest.mark.parametrize("package", ["LDFSAMSegmentLib", "LDFSAMTrainLib"])
def test_reload_order_puts_every_module_after_what_it_imports(package):
    folder = REPO / package.replace("Lib", "") / package
    order = reload_order(folder, package)
    assert sorted(order) == sorted(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")
    for position, name in enumerate(order):
        for dependency in lib_imports(folder / (name.split(".")[-1] + ".py"), package):
            if dependency in order:
                assert order.index(dependency) < position, (name, dependency)
    if package == "LDFSAMSegmentLib":
        # Alphabetical order got these wrong: they imported modules reloaded after them.
        assert order.index("LDFSAMSegmentLib.logic") < order.index("LDFSAMSegmentLib.interactive_logic")
        assert order.index("LDFSAMSegmentLib.run_state") < order.index("LDFSAMSegmentLib.lifecycle")
        assert order.index("LDFSAMSegmentLib.lifecycle") < order.index("LDFSAMSegmentLib.widget")


def test_reload_order_refuses_a_cycle(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("from pkg.a import y\n")
    (tmp_path / "c.py").write_text("import os\n")
    with pytest.raises(ValueError, match="import cycle between pkg.a, pkg.b"):
        reload_order(tmp_path, "pkg")
