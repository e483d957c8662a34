"""LDFSAM Segment's "Training set" section outside Slicer: where each segment came from (the digest that tells an
edited segment), what a case holds and what was reviewed, the real ``ldfsam add-case`` run as the panel runs it
(its record read back), and "Improve model": the command line the core accepts, a taken name refused, and a run
that is cancelled and then resumed (the real ``ldfsam train`` process, polled as the panel's timer polls it)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(Path(__file__).resolve().parent)]

from LDFSAMSegmentLib import commands  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState, failure_message  # noqa: E402
from LDFSAMSegmentLib.training_set import (  # noqa: E402
    REVIEW_CHOICES,
    CaseSegment,
    add_case_argv,
    can_resume,
    case_id_for,
    fingerprint,
    improve_argv,
    improve_run_folder,
    label_boxes,
    origin_of,
    plan_case,
    review_args,
)


def test_the_digest_follows_the_voxels_not_the_layers_extent():
    layer = np.zeros((6, 8, 8), np.uint8)
    layer[2:4, 3:5, 1:6] = 7
    layer[0, 0, 0] = 3  # another segment of the shared layer
    geometry = [1.0, 0, 0, 5.0, 0, 1.0, 0, 0, 0, 0, 2.0, 0]
    digest = fingerprint(layer, 7, (0, 0, 0), geometry)
    assert digest == fingerprint(layer, 7, (0, 0, 0), geometry, label_boxes(layer)[7])
    # Slicer grew the layer by two voxels on every side (another segment was painted): same voxels, same digest.
    grown = np.pad(layer, 2)
    assert fingerprint(grown, 7, (-2, -2, -2), geometry) == digest
    layer[0, 0, 0] = 0  # the other segment changed: this one did not
    assert fingerprint(layer, 7, (0, 0, 0), geometry) == digest
    edited = layer.copy()
    edited[3, 4, 5] = 0  # one voxel erased
    assert fingerprint(edited, 7, (0, 0, 0), geometry) != digest
    assert fingerprint(layer, 7, (1, 0, 0), geometry) != digest  # moved by one voxel
    assert fingerprint(layer, 7, (0, 0, 0), geometry[:3] + [6.0] + geometry[4:]) != digest  # another grid


def test_a_segment_is_edited_once_its_voxels_changed_or_when_the_module_did_not_make_it():
    assert origin_of("automatic", "abc", "abc") == "automatic"
    assert origin_of("prompted", "abc", "abc") == "prompted"
    assert origin_of("automatic", "abc", "abd") == "edited"
    assert origin_of("", "", "abc") == "edited"  # drawn by hand in the Segment Editor
    assert origin_of("automatic", "", "") == "edited"


def test_a_case_takes_the_automatic_segments_then_the_prompted_ones_which_replace_their_namesakes():
    automatic = [CaseSegment("automatic", "s1", "Tooth 11", "automatic"),
                 CaseSegment("automatic", "s2", "Tooth 21", "edited")]
    prompted = [CaseSegment("prompted", "p1", "Tooth 11", "prompted"),
                CaseSegment("prompted", "p2", "Tooth 22", "prompted")]
    plan = plan_case(automatic, prompted)
    assert [s.segment_id for s in plan.segments] == ["s2", "p1", "p2"]
    assert plan.values("automatic") == [("s2", 1)] and plan.values("prompted") == [("p1", 2), ("p2", 3)]
    assert plan.provenance() == {"origins": {"1": "edited", "2": "prompted", "3": "prompted"},
                                 "names": {"1": "Tooth 21", "2": "Tooth 11", "3": "Tooth 22"}}
    assert plan.worked_on() == [1, 2, 3]
    with pytest.raises(ValueError, match="no segment to add"):
        plan_case([], [])


def test_what_was_reviewed_becomes_the_add_case_options():
    plan = plan_case([CaseSegment("automatic", "s1", "Teeth", "automatic"),
                      CaseSegment("automatic", "s2", "Tooth 21", "edited")], [])
    assert review_args(REVIEW_CHOICES[0], "", plan) == ["--all-reviewed"]
    assert review_args(REVIEW_CHOICES[1], "", plan) == ["--reviewed-structures", "2"]
    assert review_args(REVIEW_CHOICES[2], " 20-45, 60", plan) == ["--reviewed-slices", "20-45,60"]
    with pytest.raises(ValueError, match="reviewed slices: .*'45-20' runs backwards"):
        review_args(REVIEW_CHOICES[2], "45-20", plan)
    with pytest.raises(ValueError, match="reviewed slices: .*names no slice"):
        review_args(REVIEW_CHOICES[2], "", plan)
    untouched = plan_case([CaseSegment("automatic", "s1", "Teeth", "automatic")], [])
    with pytest.raises(ValueError, match="no segment was prompted or edited"):
        review_args(REVIEW_CHOICES[1], "", untouched)


def test_case_names_are_safe_and_never_taken(tmp_path):
    assert case_id_for("CBCT scan (2)", str(tmp_path)) == "CBCT_scan_2"
    assert case_id_for("   ", str(tmp_path)) == "case"
    (tmp_path / "CBCT_scan_2.review.json").write_text("{}")
    assert case_id_for("CBCT scan (2)", str(tmp_path)) == "CBCT_scan_2_2"


def _wait(process, timeout=600.0, until=None):
    """Poll as the panel's timer does; returns the RunState (``until(state)`` True stops early)."""
    state = RunState()
    deadline = time.monotonic() + timeout
    while True:
        finished = process.finished
        for event in process.poll().events:
            state.feed(event)
        if finished or (until is not None and until(state)):
            return state
        assert time.monotonic() < deadline, f"{process.argv} did not end"
        time.sleep(0.05)


def _case_files(folder: Path):
    """A volume, a label map with the three planned values, and the provenance record the panel writes."""
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom((16, 48, 48), spacing=0.5, seed=3)[:2]
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v][:3]
    merged = np.zeros(array.shape, np.uint16)
    for i, v in enumerate(values):
        merged[array == v] = i + 1
    out = sitk.GetImageFromArray(merged)
    out.CopyInformation(image)
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "volume.nrrd"))
    sitk.WriteImage(out, str(folder / "labels.nrrd"))
    plan = plan_case([CaseSegment("automatic", "s1", "Tooth 11", "automatic"),
                      CaseSegment("automatic", "s2", "Tooth 21", "edited")],
                     [CaseSegment("prompted", "p1", "Tooth 22", "prompted")][:len(values) - 2])
    (folder / "provenance.json").write_text(json.dumps(plan.provenance()))
    return plan


def test_add_to_training_set_runs_add_case_and_writes_the_provenance_and_the_review(tmp_path):
    plan = _case_files(tmp_path / "tmp")
    training = tmp_path / "my-cases"
    case = case_id_for("CBCT 1", str(training))
    review = review_args(REVIEW_CHOICES[1], "", plan)
    argv = add_case_argv(str(tmp_path / "tmp" / "volume.nrrd"), str(tmp_path / "tmp" / "labels.nrrd"), str(training),
                         case, str(tmp_path / "tmp" / "provenance.json"), review, python=sys.executable)
    process = BackgroundProcess(argv, env=commands.core_env(str(tmp_path / "home"))).start()
    state = _wait(process, 300)
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) is None, \
        process.stderr_tail()
    record = json.loads((training / f"{case}.review.json").read_text())
    assert record["reviewed"]["all"] is False and record["reviewed"]["structures"] == plan.worked_on()
    assert {k: (v["name"], v["origin"], v["reviewed"]) for k, v in record["structures"].items()} == {
        str(i + 1): (s.name, s.origin, s.origin != "automatic") for i, s in enumerate(plan.segments)}
    assert (training / f"{case}.nii.gz").is_file() and (training / f"{case}_label.nii.gz").is_file()
    # Added again: the panel takes the next free name, never the written one.
    assert case_id_for("CBCT 1", str(training)) == "CBCT_1_2"
    with pytest.raises(ValueError, match="choose a training folder"):
        add_case_argv("v", "l", "", case, "p", review)


def test_improve_command_lines_are_what_ldfsam_train_accepts(tmp_path):
    import argparse

    from ldfsam.cli import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    with pytest.raises(ValueError, match="has no case yet"):
        improve_argv(str(tmp_path), tmp_path / "run", "ldfsam-demo", "clinic-v1")
    (tmp_path / "a.review.json").write_text("{}")
    run = improve_run_folder(tmp_path / "home" / "models", "clinic-v1")
    assert run == tmp_path / "home" / "improve" / "clinic-v1"
    argv = improve_argv(str(tmp_path), run, "ldfsam-demo", "clinic-v1", device="CPU", python="py")
    args = parser.parse_args(argv[3:][1:])
    assert (args.data, args.out, args.from_model, args.model_name, args.mix_phantoms, args.device, args.progress) == \
        (str(tmp_path), run, "ldfsam-demo", "clinic-v1", 4, "cpu", "json")
    assert not args.resume
    resumed = parser.parse_args(improve_argv(str(tmp_path), run, "ldfsam-demo", "clinic-v1", resume=True)[4:])
    assert resumed.resume and resumed.out == run and resumed.data is None


def test_improve_refuses_a_taken_name_and_resumes_a_started_run(tmp_path, monkeypatch):
    pytest.importorskip("PySide6.QtCore", reason="the stand-in qt module is PySide6's QtCore")
    import _fake_slicer

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "clinic-v1.safetensors").write_bytes(b"x")
    training = tmp_path / "cases"
    training.mkdir()
    (training / "a.review.json").write_text("{}")
    with _fake_slicer.install():
        training_logic = importlib.import_module("LDFSAMSegmentLib.training_logic")
        logic = training_logic.TrainingSetLogic()
        with pytest.raises(ValueError, match="never overwritten"):
            logic.improveProcess(str(training), "ldfsam-demo", "clinic-v1", ldfsamHome=str(home))
        process, resumed = logic.improveProcess(str(training), "ldfsam-demo", "clinic-v2", ldfsamHome=str(home))
        assert not resumed and process.argv[3:6] == ["train", str(training), "-o"]
        assert process.grace_s == training_logic.TRAIN_GRACE_S
        run = logic.improveRun("clinic-v2", str(home))
        run.mkdir(parents=True)
        (run / "train.json").write_text("{}")
        process, resumed = logic.improveProcess(str(training), "ldfsam-demo", "clinic-v2", ldfsamHome=str(home))
        assert resumed and process.argv[3:] == ["train", "-o", str(run), "--resume", "--progress", "json"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_improvement_run_reports_progress_is_cancelled_and_can_be_resumed(tmp_path):
    """The real ``ldfsam train --from`` started as the panel starts it: its first events arrive, Cancel ends it
    with status 130, and the run folder it leaves is what "Resume improving" continues (``--resume`` starts, and is
    cancelled too)."""
    training = tmp_path / "cases"
    _case_files(tmp_path / "tmp")
    case = case_id_for("CBCT 1", str(training))
    plan_review = ["--all-reviewed"]
    add = add_case_argv(str(tmp_path / "tmp" / "volume.nrrd"), str(tmp_path / "tmp" / "labels.nrrd"),
                        str(training), case, str(tmp_path / "tmp" / "provenance.json"), plan_review,
                        python=sys.executable)
    env = {**commands.core_env(str(tmp_path / "home")), "OMP_NUM_THREADS": "2"}
    assert BackgroundProcess(add, env=env).start().process.wait(300) == 0
    run = improve_run_folder(tmp_path / "home" / "models", "clinic-v1")
    argv = improve_argv(str(training), run, "ldfsam-demo", "clinic-v1", device="CPU", python=sys.executable)
    process = BackgroundProcess(argv, env=env, grace_s=60).start()
    state = _wait(process, 600, until=lambda s: bool(s.last_event))
    assert state.last_event and can_resume(run), process.stderr_tail()
    process.cancel()
    state = _wait(process, 120)
    assert process.cancelled and process.returncode == 130, process.stderr_tail()
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled)
    assert can_resume(run)  # the button now says "Resume improving 'clinic-v1'"
    resumed = BackgroundProcess(improve_argv(str(training), run, "ldfsam-demo", "clinic-v1", resume=True,
                                             python=sys.executable), env=env, grace_s=60).start()
    state = _wait(resumed, 600, until=lambda s: bool(s.last_event))
    assert state.last_event and state.error is None, resumed.stderr_tail()
    resumed.cancel()
    _wait(resumed, 120)
    assert resumed.cancelled and resumed.returncode == 130, resumed.stderr_tail()
