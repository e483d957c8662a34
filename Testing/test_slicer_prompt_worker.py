"""The Segment module's client of ``ldfsam prompt-worker``: its requests (RAS in, LPS out), and a real worker
process answering them: ready, open, refused requests with the worker's own message, quit, a worker that fails
to start. No request here reaches the model, so the test stays fast; the segmentation itself is tested by
Testing/test_prompt_worker.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment")]

from LDFSAMSegmentLib import commands  # noqa: E402
from LDFSAMSegmentLib.prompt_client import (  # noqa: E402
    History,
    Prompt,
    PromptWorker,
    WorkerError,
    click_request,
    open_request,
    parse_reply,
    prompt_worker_argv,
    requests_for,
    segment_request,
    undo_request,
)
from LDFSAMSegmentLib.prompts import structure  # noqa: E402

PY = sys.executable


def test_requests_and_replies():
    assert prompt_worker_argv(python=PY) == [PY, "-m", "ldfsam", "prompt-worker"]
    assert prompt_worker_argv("my-lite", python=PY)[-2:] == ["--model", "my-lite"]
    from ldfsam.cli import build_parser

    assert build_parser().parse_args(prompt_worker_argv("my-lite", python=PY)[3:]).model == "my-lite"
    assert click_request("Tooth 21", (1.0, -2.0, 3.0), "exclude", "/o.nii.gz") == {
        "cmd": "click", "name": "Tooth 21", "position": [-1.0, 2.0, 3.0], "label": "exclude", "output": "/o.nii.gz"}
    with pytest.raises(ValueError, match="label must be one of include, exclude"):
        click_request("t", (0, 0, 0), "maybe", "/o")
    with pytest.raises(ValueError, match="three numbers"):
        click_request("t", (0, 0), "include", "/o")
    entry = structure("Tooth 21", (0, 0, 0), (2, 4, 6))
    assert segment_request(entry, "/o")["structure"]["box"] == {"min": [-1.0, -2.0, -3.0], "max": [1.0, 2.0, 3.0]}
    assert undo_request("t", "/o") == {"cmd": "undo", "name": "t", "output": "/o"}
    assert parse_reply('{"ok": true, "voxels": 3}')["voxels"] == 3
    with pytest.raises(WorkerError, match="nothing to undo"):
        parse_reply('{"ok": false, "error": "nothing to undo for \'t\'"}')
    with pytest.raises(WorkerError, match="not JSON"):
        parse_reply("Traceback (most recent call last):")


def test_a_real_worker_answers_and_refuses_clearly(tmp_path):
    from ldfsam.data.phantom import make_phantom

    volume = tmp_path / "v.nrrd"
    sitk.WriteImage(make_phantom((8, 32, 32), spacing=0.5, seed=0)[0], str(volume))
    env = {**commands.core_env(str(tmp_path / "home")), "OMP_NUM_THREADS": "1"}
    worker = PromptWorker(prompt_worker_argv(python=PY), env=env).start()
    try:
        with pytest.raises(WorkerError, match="no volume is open"):
            worker.ask(segment_request(structure("t", (0, 0, 0), (1, 1, 1)), str(tmp_path / "t.nii.gz")))
        with pytest.raises(WorkerError, match="missing.nrrd"):
            worker.ask(open_request(str(tmp_path / "missing.nrrd")))
        assert worker.ask(open_request(str(volume)))["size"] == [32, 32, 8]
        far = structure("t", (500.0, 500.0, 500.0), (2.0, 2.0, 2.0))  # a ROI outside the volume
        with pytest.raises(WorkerError) as refused:
            worker.ask(segment_request(far, str(tmp_path / "t.nii.gz")))
        assert refused.value.alive and "('t').box: lies outside the volume" in str(refused.value)
        with pytest.raises(WorkerError, match="send a \"segment\" request first"):
            worker.ask(click_request("t", (0, 0, 0), "include", str(tmp_path / "t.nii.gz")))
        with pytest.raises(WorkerError, match="nothing to undo"):
            worker.ask(undo_request("t", str(tmp_path / "t.nii.gz")))
        assert worker.running and not (tmp_path / "t.nii.gz").exists()
    finally:
        code = worker.stop()
    assert code == 0 and not worker.running


def test_a_worker_that_cannot_start_says_why(tmp_path):
    worker = PromptWorker(prompt_worker_argv(python=PY) + ["--no-such-flag"], env=commands.core_env()).start()
    with pytest.raises(WorkerError, match="unrecognized arguments: --no-such-flag") as gone:
        worker.ask(open_request(str(tmp_path / "v.nrrd")))
    assert not gone.value.alive and "exit status 2" in str(gone.value)
    with pytest.raises(WorkerError, match="ended"):
        worker.send(open_request(str(tmp_path / "v.nrrd")))
    assert worker.stop() == 2


def test_only_added_points_become_clicks_and_history_follows_the_answers():
    def prompt(include=(), exclude=(), size=(2, 2, 2)):
        include, exclude = [list(p) for p in include], [list(p) for p in exclude]
        return Prompt("t", structure("t", (0, 0, 0), size, None, include, exclude), include, exclude)

    first = prompt(include=[(1, 1, 1)])
    [(request, state)] = requests_for(None, first, "/o")
    assert request["cmd"] == "segment" and state is first
    history = History()
    history.answered(request, state)
    more = prompt(include=[(1, 1, 1), (2, 2, 2)], exclude=[(3, 3, 3)])
    steps = requests_for(history.last("t"), more, "/o")
    assert [(r["cmd"], r["label"], r["position"]) for r, _ in steps] == [("click", "include", [-2.0, -2.0, 2.0]),
                                                                         ("click", "exclude", [-3.0, -3.0, 3.0])]
    assert (steps[0][1].include, steps[0][1].exclude) == ([[1, 1, 1], [2, 2, 2]], [])
    assert (steps[1][1].include, steps[1][1].exclude) == (more.include, more.exclude)
    for step in steps:
        history.answered(*step)
    assert history.last("t") is steps[1][1] and len(history.states["t"]) == 3
    history.answered(undo_request("t", "/o"), None)
    assert history.last("t") is steps[0][1]
    # The undone point is still in the list: pressing again clicks it again.
    [(again, _)] = requests_for(history.last("t"), more, "/o")
    assert again["cmd"] == "click" and again["label"] == "exclude"
    # A moved point, a changed ROI, or nothing new: one segment request with every prompt.
    assert [r["cmd"] for r, _ in requests_for(first, prompt(include=[(9, 9, 9)]), "/o")] == ["segment"]
    assert [r["cmd"] for r, _ in requests_for(first, prompt(include=[(1, 1, 1)], size=(4, 4, 4)), "/o")] == \
        ["segment"]
    assert [r["cmd"] for r, _ in requests_for(first, first, "/o")] == ["segment"]
    history.answered(open_request("/v.nrrd"), None)
    assert history.last("t") is None


def test_the_panel_has_the_interactive_section():
    pytest.importorskip("PySide6")
    import xml.etree.ElementTree as ET

    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])  # noqa: F841 (kept alive while the panel is used)
    loader = QUiLoader()
    path = REPO / "LDFSAMSegment" / "Resources" / "UI" / "LDFSAMSegment.ui"
    panel = loader.load(str(path))  # kept: the children die with it
    section = panel.findChild(QWidget, "interactiveCollapsibleButton")
    assert section is not None
    inside = {w.objectName(): w for w in section.findChildren(QWidget)}
    assert inside["interactiveSegmentButton"].text() == "Segment in ROI"
    assert inside["interactiveUndoButton"].text() == "Undo"
    # The selectors are Slicer classes (QUiLoader makes them QWidget): their node types and scene come from the file.
    root = ET.parse(path).getroot()
    types = {w.get("name"): [s.text for s in w.find("property[@name='nodeTypes']/stringlist")]
             for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert types["roiSelector"] == ["vtkMRMLMarkupsROINode"]
    assert types["includePointsSelector"] == types["excludePointsSelector"] == ["vtkMRMLMarkupsFiducialNode"]
    assert {"roiSelector", "includePointsSelector", "excludePointsSelector"} <= set(inside)
    scene_fed = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot").startswith("setMRMLScene")}
    assert set(types) <= scene_fed
