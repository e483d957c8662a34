"""The command lines the Slicer modules build, checked against the core's real parser and real core runs, and the
mapping from the core's real output (events, .seg.nrrd) to what the modules show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain")]

from LDFSAMSegmentLib import commands, segments  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState, failure_message  # noqa: E402
from LDFSAMTrainLib import commands as train  # noqa: E402

PY = sys.executable


def parse(argv):
    """Parse a built command line with the core's own argparse parser (as ``python -m ldfsam`` would)."""
    from ldfsam.cli import build_parser

    assert argv[:3] == [PY, "-m", "ldfsam"]
    return build_parser().parse_args(argv[3:])


def run_core(argv, tmp_path, timeout=600):
    process = BackgroundProcess(argv, env=commands.core_env(str(tmp_path / "home"))).start()
    out = process.wait(timeout=timeout)
    state = RunState()
    for event in out.events:
        state.feed(event)
    return process, out, state


# -- Segment module ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,expected", [("auto", "auto"), ("CPU", "cpu"), ("GPU", "cuda")])
def test_segment_command_is_accepted_by_the_core(device, expected):
    argv = commands.segment_argv("/data/in.nrrd", "/tmp/out.seg.nrrd", "my-model", device, 0.35, 12.5, True, python=PY)
    args = parse(argv)
    assert (args.command, args.input, args.output, args.model) == ("segment", ["/data/in.nrrd"], "/tmp/out.seg.nrrd",
                                                                   "my-model")
    assert (args.device, args.threshold, args.min_island_mm3, args.split_teeth, args.progress) == \
        (expected, 0.35, 12.5, True, "json")
    defaults = parse(commands.segment_argv("a.nrrd", "b.seg.nrrd", "m", python=PY))
    assert defaults.split_teeth is False and defaults.slice_spacing == "auto"
    assert parse(commands.segment_argv("a.nrrd", "b.seg.nrrd", "m", slice_spacing="2px",
                                       python=PY)).slice_spacing == "2px"
    with pytest.raises(ValueError, match="seg.nrrd"):
        commands.segment_argv("a.nrrd", "b.nii.gz", "m", python=PY)
    with pytest.raises(ValueError, match="unknown device"):
        commands.segment_argv("a.nrrd", "b.seg.nrrd", "m", device="TPU", python=PY)


def test_model_commands_are_accepted_by_the_core():
    args = parse(commands.models_download_argv("ldfsam-demo", python=PY))
    assert (args.command, args.action, args.name, args.progress) == ("models", "download", "ldfsam-demo", "json")
    args = parse(commands.models_import_argv("/m/x.safetensors", name="mine", force=True, python=PY))
    assert (args.action, args.path, args.name, args.force) == ("import", "/m/x.safetensors", "mine", True)


@pytest.fixture(scope="module")
def demo_model() -> Path:
    """The model the Segment module selects by default: the demo model shipped with the core."""
    from ldfsam.models import DEFAULT_MODEL, resolve_model

    assert DEFAULT_MODEL == "ldfsam-demo"
    return resolve_model(DEFAULT_MODEL)


def _phantom_file(path: Path, shape=(24, 64, 64)):
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom(shape=shape, spacing=0.5, seed=1)
    sitk.WriteImage(image, str(path))
    return path, sitk.GetArrayFromImage(labels)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_real_segment_run_drives_progress_and_its_seg_nrrd_maps_to_segments(tmp_path, demo_model):
    """``ldfsam segment`` with the module's default model and options (individual teeth), as the module runs it."""
    import slicerio

    output = tmp_path / "teeth.seg.nrrd"
    cbct, truth = _phantom_file(tmp_path / "cbct.nrrd")
    argv = commands.segment_argv(str(cbct), str(output), "ldfsam-demo", "CPU", split_teeth=True, python=PY)
    process, out, state = run_core(argv, tmp_path)
    assert process.returncode == 0, process.stderr_tail()
    # (a "log" event may come first: the one-time precision measurement of a fresh LDFSAM_HOME says so)
    assert [e["kind"] for e in out.events if e["kind"] != "log"][0] == "start" and out.events[-1]["kind"] == "done"
    assert out.stdout == []  # json mode keeps stdout for events only
    assert state.percent == 100 and state.done_phases == ["segment"] and state.error is None
    assert state.status.startswith("Segmenting: done in ")
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) is None

    specs = segments.segment_specs(output)
    assert len(specs) == out.events[-1]["segments"] > 1
    names = [s.name for s in specs]  # estimated FDI numbers (ldfsam/infer/fdi.py), unique
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"Tooth [1-4][1-8]|Unnumbered tooth \d+", name) for name in names), names
    assert all(segments.terminology_type_code(s.terminology) == "38199008" for s in specs)
    assert len({tuple(round(c, 3) for c in s.color) for s in specs}) == len(specs)
    # The segments cover the phantom's teeth (the self-test in Slicer checks the same through the logic).
    seg = slicerio.read_segmentation(str(output))
    voxels = seg["voxels"].reshape((-1,) + seg["voxels"].shape[-3:])
    mask = (voxels > 0).any(axis=0).transpose(2, 1, 0)
    teeth = truth > 0
    assert 2 * (mask & teeth).sum() / (mask.sum() + teeth.sum()) > 0.5


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_cancelling_a_real_segment_run_leaves_nothing_behind(tmp_path, demo_model):
    output = tmp_path / "teeth.seg.nrrd"
    cbct, _ = _phantom_file(tmp_path / "cbct.nrrd", shape=(128, 64, 64))  # seconds of work at batch 1
    argv = commands.segment_argv(str(cbct), str(output), str(demo_model), "CPU", batch=1, python=PY)
    process = BackgroundProcess(argv, env=commands.core_env(str(tmp_path / "home")), grace_s=30).start()
    state = RunState()
    deadline = time.monotonic() + 300
    while not any(e["kind"] == "progress" for e in state_events(process, state)):
        assert process.returncode is None, process.stderr_tail()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.cancel()
    out = process.wait(timeout=60)
    for event in out.events:
        state.feed(event)
    assert process.returncode == 130, process.stderr_tail()  # the core's clean exit on SIGTERM, not SIGKILL
    assert "ldfsam segment: cancelled" in process.stderr_tail()
    assert state.percent < 100 and "segment" not in state.done_phases
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) == "Cancelled."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cbct.nrrd", "home"]  # no output, no temporary file


@pytest.mark.skipif(sys.platform == "win32", reason="signals; on Windows taskkill /F ends the tree with status 1")
def test_cancelling_through_the_slicer_launcher_is_cancelled_whatever_its_status(tmp_path, demo_model):
    # In Slicer the child is the PythonSlicer launcher, which dies of SIGTERM (-15) while the core, in the same
    # process group, exits cleanly: the run counts as cancelled and leaves nothing, whatever the status says.
    output = tmp_path / "teeth.seg.nrrd"
    cbct, _ = _phantom_file(tmp_path / "cbct.nrrd", shape=(128, 64, 64))
    argv = commands.segment_argv(str(cbct), str(output), str(demo_model), "CPU", batch=1, python=PY)
    launcher = [PY, str(REPO / "Testing" / "_launcher.py"), *argv]
    process = BackgroundProcess(launcher, env=commands.core_env(str(tmp_path / "home")), grace_s=30).start()
    state = RunState()
    deadline = time.monotonic() + 300
    while not any(e["kind"] == "progress" for e in state_events(process, state)):
        assert process.returncode is None, process.stderr_tail()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.cancel()
    process.wait(timeout=60)
    assert process.returncode == -15  # the launcher's, not the core's 130
    assert "ldfsam segment: cancelled" in process.stderr_tail()  # the core still ended cleanly
    assert not process.group_alive()
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) == "Cancelled."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cbct.nrrd", "home"]


def test_a_core_killed_under_the_launcher_is_reported_as_killed(tmp_path):
    # The kernel's OOM killer ends the biggest process, python-real, not the launcher: the launcher reports it.
    code = "import os, signal, sys; print('working', file=sys.stderr, flush=True); os.kill(os.getpid(), 9)"
    if sys.platform == "win32":
        code = "import os; os.abort()"
    process = BackgroundProcess([PY, str(REPO / "Testing" / "_launcher.py"), PY, "-c", code]).start()
    process.wait(timeout=60)
    assert process.returncode == 1
    assert "exit abnormally" in process.stderr_tail()
    message = failure_message(process.returncode, RunState(), process.stderr_tail(), process.cancelled)
    assert message == "Failed: the process was killed or crashed (out of memory?)."


def state_events(process: BackgroundProcess, state: RunState):
    events = process.poll().events
    for event in events:
        state.feed(event)
    return events


def test_model_selector_lists_what_import_and_download_install(tmp_path, demo_model, monkeypatch):
    """The Import and Download buttons' commands, run for real, and the selector entries that follow."""
    import hashlib
    import json

    from LDFSAMSegmentLib.model_choices import model_choices

    home = tmp_path / "home"
    registry = tmp_path / "site-models.json"
    registry.write_text(json.dumps({"models": [{
        "name": "site-teeth", "url": demo_model.as_uri(), "file": "site-teeth.safetensors",
        "sha256": hashlib.sha256(demo_model.read_bytes()).hexdigest(), "size": demo_model.stat().st_size,
        "description": "a model published by this site"}]}))
    monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(registry))  # inherited by the processes below

    before = {c.name: c for c in model_choices(str(home))}
    assert before["site-teeth"].state == "available" and before["site-teeth"].label == "site-teeth (download)"
    assert not any(name.startswith("sam-vit") for name in before)  # SAM checkpoints are for training only

    process = BackgroundProcess(commands.models_import_argv(str(demo_model), name="mine", python=PY),
                                env=commands.core_env(str(home))).start()
    process.wait(timeout=120)
    assert process.returncode == 0, process.stderr_tail()
    process = BackgroundProcess(commands.models_download_argv("site-teeth", python=PY),
                                env=commands.core_env(str(home))).start()
    out = process.wait(timeout=120)
    assert process.returncode == 0, process.stderr_tail()
    state = RunState()
    for event in out.events:
        state.feed(event)
    assert state.phase == "download" and state.percent == 100

    after = {c.name: c for c in model_choices(str(home))}
    assert after["mine"].state == "installed" and after["mine"].label == "mine"
    assert after["site-teeth"].state == "installed"
    assert (home / "models" / "site-teeth.safetensors").read_bytes() == demo_model.read_bytes()
    # Ready-to-use models come first, those to download after them.
    states = [c.state == "available" for c in model_choices(str(home))]
    assert states == sorted(states)
    assert [c.state == "available" for c in before.values()] == sorted(c.state == "available"
                                                                       for c in before.values())
    assert os.environ.get("LDFSAM_HOME") != str(home)  # listing never leaves the cache choice behind


def _core_segmentation(path: Path, labels: np.ndarray, names=None) -> Path:
    import SimpleITK as sitk

    from ldfsam.infer.outputs import write_segmentation

    reference = sitk.Image(labels.shape[2], labels.shape[1], labels.shape[0], sitk.sitkUInt8)
    reference.SetSpacing((0.5, 0.5, 0.7))
    reference.SetOrigin((10.0, -20.0, 5.0))
    return write_segmentation(path, labels, reference, names=names)


def test_core_seg_nrrd_becomes_tooth_segments(tmp_path):
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:3, 2:5, 2:5] = 1
    specs = segments.segment_specs(_core_segmentation(tmp_path / "one.seg.nrrd", labels))
    assert len(specs) == 1
    (spec,) = specs
    assert spec.name == "Tooth" and spec.label_value == 1
    assert segments.terminology_type_code(spec.terminology) == "38199008"
    assert spec.terminology.startswith("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004")
    assert len(spec.color) == 3 and all(0 <= c <= 1 for c in spec.color)

    labels[4:6, 6:9, 6:9] = 2
    labels[1:3, 6:9, 8:11] = 3
    specs = segments.segment_specs(_core_segmentation(tmp_path / "split.seg.nrrd", labels))
    assert [s.name for s in specs] == ["Tooth 1", "Tooth 2", "Tooth 3"]
    assert [s.label_value for s in specs] == [1, 2, 3]
    assert len({s.color for s in specs}) == 3
    assert all(segments.terminology_type_code(s.terminology) == "38199008" for s in specs)


def test_segments_without_metadata_get_tooth_defaults(tmp_path):
    import slicerio

    seg = slicerio.create_segmentation((8, 8, 4), np.eye(4))
    mask = np.zeros((8, 8, 4), bool)
    mask[2:4, 2:4, 1:3] = True
    slicerio.add_segment(seg, mask, {"id": "s1"})
    seg["segments"][0].pop("name")
    slicerio.write_segmentation(str(tmp_path / "bare.seg.nrrd"), seg)
    (spec,) = segments.segment_specs(tmp_path / "bare.seg.nrrd")
    assert spec.segment_id == "s1" and spec.name == "Tooth"
    assert spec.terminology == segments.TOOTH_TERMINOLOGY and spec.color == segments.TOOTH_COLOR
    with pytest.raises(FileNotFoundError, match="was not written"):
        segments.segment_specs(tmp_path / "missing.seg.nrrd")


# -- Train module --------------------------------------------------------------------------------------------------
def _dataset(root: Path, cases: int = 5) -> Path:
    from ldfsam.data.phantom import write_phantom_dataset

    write_phantom_dataset(root, cases=cases, shape=(16, 48, 48), spacing=0.5)
    return root


def _settings(tmp_path, **kw) -> train.TrainSettings:
    values = dict(dataset=str(tmp_path / "data"), output=str(tmp_path / "run"), budget_percent=50)
    values.update(kw)
    return train.TrainSettings(**values)


def test_building_the_train_commands_never_imports_torch(tmp_path):
    # What the Train module does in Slicer's own process: build every command line, device auto included
    # (Phase 1 finds its data.yaml through the manifest that `ldfsam prepare` writes).
    yolo = tmp_path / "run" / "prepared" / "yolo" / "100"
    yolo.mkdir(parents=True)
    (yolo / "data.yaml").write_text("path: .\n", encoding="utf-8")
    (tmp_path / "run" / "prepared" / "prepared.json").write_text('{"yolo": {"100": "yolo/100"}}', encoding="utf-8")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from LDFSAMTrainLib import commands as c\n"
        "s = c.TrainSettings(dataset=sys.argv[3], output=sys.argv[4], device='auto')\n"
        "argv = c.distill_argv(s) + c.finetune_argv(s) + c.evaluate_argv(s) + c.prepare_argv(s)\n"
        "print('auto' in argv, 'torch' in sys.modules)\n")
    out = subprocess.run([PY, "-c", code, str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain"),
                          str(tmp_path / "data"), str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_train_settings_come_from_the_parameter_nodes_fields(tmp_path):
    from types import SimpleNamespace

    # The Train parameter node's fields, as a scene saved before paths were strings stores an empty Path (".").
    p = SimpleNamespace(datasetFolder=str(tmp_path / "data"), outputFolder=".", annotationBudget=20,
                        teacherScale="x", studentScale="n", samPreset="vit_b", samCheckpoint="", distillEpochs=5,
                        finetuneEpochs=6, batchSize=2, device="GPU")
    s = train.settings_from(p)
    assert (s.dataset, s.output, s.sam_checkpoint, s.budget_percent, s.finetune_epochs, s.device) == \
        (str(tmp_path / "data"), "", None, 20, 6, "GPU")
    with pytest.raises(ValueError, match="choose an output folder"):
        s.check()


def test_train_settings_are_checked_before_anything_starts(tmp_path):
    _settings(tmp_path).check()
    for bad, message in (({"budget_percent": 0}, "budget"), ({"teacher_scale": "q"}, "teacher scale"),
                         ({"sam_preset": "vit_z"}, "SAM preset"), ({"finetune_epochs": 0}, "finetune epochs"),
                         ({"device": "TPU"}, "unknown device"), ({"output": ""}, "output folder")):
        with pytest.raises(ValueError, match=message):
            _settings(tmp_path, **bad).check()


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_train_commands_are_accepted_by_the_core_after_a_real_prepare(tmp_path):
    s = _settings(tmp_path, teacher_scale="s", student_scale="n", sam_preset="small", distill_epochs=3,
                  finetune_epochs=4, batch_size=2, device="CPU", sam_checkpoint=str(tmp_path / "sam.pth"))
    out = train.layout(s)
    with pytest.raises(ValueError, match="run Prepare first"):
        train.distill_argv(s, python=PY)

    _dataset(tmp_path / "data")
    argv = train.prepare_argv(s, python=PY)
    args = parse(argv)
    assert (args.input, args.output, args.budget, args.seed) == (s.dataset, str(out.prepared), [0.5], 2025)
    process, events, state = run_core(argv, tmp_path, timeout=300)
    assert process.returncode == 0, process.stderr_tail()
    assert state.done_phases == ["prepare"] and state.percent == 100
    assert out.splits.is_file()

    args = parse(train.distill_argv(s, python=PY))
    assert Path(args.data) == out.yolo_data(50) and Path(args.data).is_file()
    assert (args.out, args.teacher_scale, args.student_scale, args.epochs, args.batch, args.device, args.resume) == \
        (str(out.phase1), "s", "n", 3, 2, "cpu", False)
    assert parse(train.distill_argv(s, resume=True, python=PY)).resume is True
    assert parse(train.distill_argv(_settings(tmp_path, device="GPU"), python=PY)).device == "0"
    # auto reaches the child as is, and the child's own parser resolves it (Slicer's process never imports torch).
    auto = parse(train.distill_argv(_settings(tmp_path, device="auto"), python=PY))
    assert auto.device == "auto"
    import torch

    from ldfsam.cli.distill import build_config

    resolved = build_config(auto)
    assert resolved.teacher.device == resolved.student.device == ("0" if torch.cuda.is_available() else "cpu")
    # The panel's default teacher is the core's "auto" (the pretrained YOLOv8s where installed), not a fixed x.
    assert auto.teacher_scale == "auto" and resolved.teacher_scale == "auto"

    args = parse(train.finetune_argv(s, python=PY))
    assert (args.data, args.out, args.prompt_generator, args.preset, args.budget) == \
        (str(out.prepared), out.phase2, out.prompt_generator, "small", 0.5)
    assert (args.epochs, args.batch_size, args.device, args.sam_checkpoint, args.resume) == \
        (4, 2, "cpu", tmp_path / "sam.pth", False)
    args = parse(train.finetune_argv(s, resume=True, python=PY))
    assert (args.out, args.resume, args.data) == (out.phase2, True, None)

    args = parse(train.evaluate_argv(s, python=PY))
    assert (args.model, args.data, args.splits, args.split, args.out) == \
        (str(out.model), Path(s.dataset), str(out.splits), "test", out.evaluation)
    args = parse(train.import_argv(s, "my-teeth", python=PY))
    assert (args.command, args.action, args.path, args.name, args.force) == \
        ("models", "import", str(out.model), "my-teeth", True)
    assert [train.step_argv(step, s, python=PY)[3] for step in ("prepare", "distill", "finetune", "evaluate")] == \
        ["prepare", "distill", "finetune", "evaluate"]
