"""What the Segment module needs to segment many volumes: its command line (checked by the core's parser) and
the per-volume state it shows, computed from a real ``ldfsam segment INPUT... -o FOLDER`` run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment")]

from LDFSAMSegmentLib import commands  # noqa: E402
from LDFSAMSegmentLib.cohort import (  # noqa: E402
    CohortState,
    check_input_folder,
    check_output_folder,
    segment_many_argv,
    volume_file_names,
    write_list_file,
)
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState  # noqa: E402

PY = sys.executable


def parse(argv):
    from ldfsam.cli import build_parser

    assert argv[:3] == [PY, "-m", "ldfsam"]
    return build_parser().parse_args(argv[3:])


def test_the_command_is_accepted_by_the_core(tmp_path):
    at = write_list_file(["a.nrrd", "/x/b.nii.gz"], str(tmp_path / "lists" / "scene.txt"))
    assert at == f"@{tmp_path / 'lists' / 'scene.txt'}"
    assert (tmp_path / "lists" / "scene.txt").read_text().splitlines() == [str(Path("a.nrrd").absolute()),
                                                                           "/x/b.nii.gz"]
    args = parse(segment_many_argv([at, "/data/folder"], "/out", "my-model", "CPU", 0.4, split_teeth=True,
                                   fmt="nii.gz", force=True, python=PY))
    assert (args.input, args.output, args.format, args.model, args.device) == ([at, "/data/folder"], "/out",
                                                                               "nii.gz", "my-model", "cpu")
    assert (args.threshold, args.split_teeth, args.force, args.progress) == (0.4, True, True, "json")
    defaults = parse(segment_many_argv(["/data/folder"], "/out", "m", python=PY))
    assert defaults.format == "seg.nrrd" and not defaults.force and not defaults.split_teeth
    with pytest.raises(ValueError, match="no volumes"):
        segment_many_argv([], "/out", "m", python=PY)
    with pytest.raises(ValueError, match="unknown format"):
        segment_many_argv(["a"], "/out", "m", fmt="nrrd", python=PY)


@pytest.mark.slow  # over 9 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_a_real_run_gives_per_volume_progress_outputs_and_failures(tmp_path):
    from ldfsam.data.phantom import make_phantom

    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        sitk.WriteImage(make_phantom((12, 40, 40), spacing=0.5, seed=i)[0], str(folder / f"c{i}.nrrd"))
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    argv = segment_many_argv([str(folder)], str(tmp_path / "out"), "ldfsam-demo", "CPU", python=PY)
    env = {**commands.core_env(str(tmp_path / "home")), "OMP_NUM_THREADS": "1"}
    process = BackgroundProcess(argv, env=env).start()
    state, run_state, seen = CohortState(), RunState(), []
    out = process.wait(timeout=600)
    for event in out.events:
        state.feed(event)
        run_state.feed(event)  # the module's general log and bar take these events too
        seen.append((state.percent, state.status))
    assert process.returncode == 1, process.stderr_tail()
    assert state.total == 3 and state.finished == 3 and state.percent == 100
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)  # the bar never goes back
    assert any("segmenting c1.nrrd" in s for _, s in seen)
    assert state.status == "3 of 3 volume(s), 1 failed"
    assert sorted(Path(p).name for p in state.outputs()) == ["c0.seg.nrrd", "c1.seg.nrrd"]
    assert all(Path(p).is_file() for p in state.outputs())
    message = state.message(process.returncode)
    assert "1 of 3 volume(s) could not be segmented" in message and str(folder / "broken.nii.gz") in message
    assert state.summary.startswith("2 volume(s) segmented, 1 failed") and run_state.error is None

    again = CohortState()
    rerun = BackgroundProcess(argv, env=env).start()
    for event in rerun.wait(timeout=600).events:
        again.feed(event)
    assert rerun.returncode == 1 and again.skipped == 2 and again.total == 3 and again.percent == 100
    assert again.outputs() == [] and len(again.failures()) == 1


def test_scene_volumes_get_safe_unique_file_names():
    assert volume_file_names(["CT head", "CT head", "ct HEAD", "a/b:c", "..", "Scan.1"]) == \
        ["CT_head.nrrd", "CT_head-2.nrrd", "ct_HEAD-3.nrrd", "a_b_c.nrrd", "volume.nrrd", "Scan.1.nrrd"]


def test_folders_are_checked_with_a_clear_message(tmp_path):
    for empty in (None, "", " ", "."):
        with pytest.raises(ValueError, match="choose an output folder"):
            check_output_folder(empty)
        with pytest.raises(ValueError, match="choose the folder of volumes"):
            check_input_folder(empty)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt: the output folder is a file"):
        check_output_folder(str(tmp_path / "file.txt"))
    with pytest.raises(ValueError, match="missing: no such folder"):
        check_input_folder(str(tmp_path / "missing"))
    assert check_output_folder(str(tmp_path / "new")) == str(tmp_path / "new")
    assert check_input_folder(str(tmp_path)) == str(tmp_path)


def test_a_refused_run_gives_the_cores_reason(tmp_path):
    # A folder without volumes: the core refuses the whole run (status 2), writes nothing, names the folder.
    (tmp_path / "empty").mkdir()
    argv = segment_many_argv([str(tmp_path / "empty")], str(tmp_path / "out"), "ldfsam-demo", "CPU", python=PY)
    process = BackgroundProcess(argv, env=commands.core_env(str(tmp_path / "home"))).start()
    state = CohortState()
    for event in process.wait(timeout=120).events:
        state.feed(event)
    assert process.returncode == 2 and state.outputs() == [] and state.done() == []
    message = state.message(process.returncode)
    assert message.startswith("Failed (exit status 2): ") and f"{tmp_path / 'empty'}: holds no volumes" in message
    assert state.status == f"Error: {state.error}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_panel_has_the_many_volumes_section():
    pytest.importorskip("PySide6")
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])  # noqa: F841 (kept alive while the panel is used)
    loader = QUiLoader()
    panel = loader.load(str(REPO / "LDFSAMSegment" / "Resources" / "UI" / "LDFSAMSegment.ui"))
    section = panel.findChild(QWidget, "cohortCollapsibleButton")
    assert section is not None
    inside = {w.objectName(): w for w in section.findChildren(QWidget)}
    wanted = {"cohortSourceComboBox", "cohortFolderPathLineEdit", "cohortOutputPathLineEdit", "cohortButton"}
    assert wanted <= set(inside)
    assert inside["cohortSourceComboBox"].property("SlicerParameterName") == "cohortSource"
    assert inside["cohortFolderPathLineEdit"].property("LDFSAMPathParameter") == "cohortFolder"
    assert inside["cohortOutputPathLineEdit"].property("LDFSAMPathParameter") == "cohortOutputFolder"
    assert inside["cohortButton"].text() == "Segment all volumes"


class _Image:
    def __init__(self, components):
        self.components = components

    def GetNumberOfScalarComponents(self):  # noqa: N802 - vtkImageData's API
        return self.components


class _Volume:
    """What the filter reads of a volume node (class name, image data)."""

    def __init__(self, name, cls="vtkMRMLScalarVolumeNode", components=1, image=True):
        self.name, self.cls, self.image = name, cls, _Image(components) if image else None

    def GetClassName(self):  # noqa: N802
        return self.cls

    def GetImageData(self):  # noqa: N802
        return self.image


def test_many_volumes_keeps_single_component_scalar_volumes_only():
    from LDFSAMSegmentLib.cohort import single_component_scalar_volumes

    # What getNodesByClass("vtkMRMLScalarVolumeNode") returns: the class and every subclass.
    nodes = [_Volume("CBCT"), _Volume("labels", "vtkMRMLLabelMapVolumeNode"),
             _Volume("photo", "vtkMRMLVectorVolumeNode", 3), _Volume("dwi", "vtkMRMLDiffusionWeightedVolumeNode", 30),
             _Volume("dti", "vtkMRMLDiffusionTensorVolumeNode", 1), _Volume("rgb as scalar", components=3),
             _Volume("empty", image=False), _Volume("CBCT 2")]
    assert [n.name for n in single_component_scalar_volumes(nodes)] == ["CBCT", "CBCT 2"]
