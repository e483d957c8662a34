"""The Train module's "Run all" layer: the ``ldfsam train`` command line as the core parses it, one progress bar
over the stages from real core events, and the report's figures and link (a report built by the core)."""

from __future__ import annotations

import ast
import inspect
import io
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain")]

from LDFSAMTrainLib import commands as train  # noqa: E402
from LDFSAMTrainLib.run_all import (  # noqa: E402
    not_empty_message,
    overall_percent,
    report_figures,
    report_url,
    run_all_argv,
)

from ldfsam.progress import Progress, parse_event  # noqa: E402


def _core_args(argv):
    """The module's command line (after ``python -m ldfsam``) parsed by the core's own parser."""
    from ldfsam.cli import build_parser

    assert argv[1:3] == ["-m", "ldfsam"]
    return build_parser().parse_args(argv[3:])


def test_run_all_command_line_is_the_core_train_configuration(tmp_path):
    from ldfsam.cli.train import build_config

    (tmp_path / "data").mkdir()
    s = train.TrainSettings(dataset=str(tmp_path / "data"), output=str(tmp_path / "run"), budget_percent=20,
                            teacher_scale="s", sam_preset="small", distill_epochs=3, finetune_epochs=7,
                            batch_size=2, device="CPU", seed=7, sam_checkpoint=str(tmp_path / "sam.pth"))
    s.check()
    args = _core_args(train.train_argv(s, python="python"))
    assert args.command == "train" and args.out == tmp_path / "run" and not args.resume
    cfg = build_config(args)
    assert (cfg.data, cfg.budget, cfg.preset, cfg.device, cfg.seed) == (str(tmp_path / "data"), 0.2, "small", "cpu", 7)
    assert (cfg.distill.teacher_scale, cfg.distill.student_scale) == ("s", "n")
    assert (cfg.distill.teacher.epochs, cfg.distill.student.epochs, cfg.finetune.epochs) == (3, 3, 7)
    assert cfg.distill.student.batch == cfg.finetune.batch_size == 2 and cfg.distill.student.seed == 7
    assert cfg.sam_checkpoint == str(tmp_path / "sam.pth") and args.progress == "json"

    resume = _core_args(train.train_argv(s, resume=True, python="python"))
    assert resume.resume and resume.data is None and resume.out == tmp_path / "run"
    # "Resume" is offered once the core has written the run's configuration.
    assert not train.can_resume_all(s)
    from ldfsam.train.run import RunFolder

    (tmp_path / "run").mkdir()
    RunFolder(tmp_path / "run").write_config(cfg.validate())
    assert train.can_resume_all(s) and train.layout(s).report == tmp_path / "run" / "report.html"


def test_one_bar_over_the_stages_from_core_events():
    class Lines(io.StringIO):
        pass

    out = Lines()
    p = Progress("json", stream=out)
    p.start("train", total=4)
    for stage, phases in (("prepare", ["prepare"]), ("phase1", ["teacher", "student"]), ("phase2", ["finetune"]),
                          ("evaluate", ["evaluate"])):
        p.context["stage"] = stage
        for phase in phases:
            p.start(phase, total=4)
            for step in range(1, 5):
                p.update(phase, step, 4)
            p.done(phase)
        p.update("train", ("prepare", "phase1", "phase2", "evaluate").index(stage) + 1, 4)
    p.context.clear()
    p.done("train")
    events = [parse_event(line) for line in out.getvalue().splitlines()]
    bar = [v for v in map(overall_percent, events) if v is not None]
    assert bar == sorted(bar) and bar[-1] == 100
    # Half way through the teacher is an eighth into Phase 1; the end of Phase 1 is half the run.
    teacher = [overall_percent(e) for e in events if e["phase"] == "teacher" and e.get("step") == 2]
    assert teacher == [31]
    assert overall_percent(next(e for e in events if e["phase"] == "student" and e["kind"] == "done")) == 50
    assert overall_percent({"kind": "log", "phase": "segment"}) is None
    # The status line names the run itself at its start and end (the stages' phases in between).
    from LDFSAMSegmentLib.run_state import RunState

    state = RunState()
    for event in events[:1]:
        state.feed(event)
    assert state.status == "Run all..."
    for event in events[1:]:
        state.feed(event)
    assert state.status.startswith("Run all: done") and state.error is None


def test_report_figures_and_link_from_a_core_report(tmp_path):
    from PIL import Image

    from ldfsam.train.config import TrainConfig
    from ldfsam.train.report import write_report
    from ldfsam.train.run import RunFolder

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.write_config(TrainConfig(data=str(tmp_path)).validate())
    # A run stopped in Phase 2: Phase 1 history and two Phase 2 epochs, nothing evaluated yet.
    teacher = run.phase1 / "teacher"
    teacher.mkdir(parents=True)
    history = [{"epoch": e, "loss": 3.0 / e, "precision": 0.2 * e, "recall": 0.1 * e, "mAP50": 0.15 * e,
                "mAP50_95": 0.05 * e} for e in (1, 2, 3)]
    (teacher / "state.json").write_text(json.dumps({"epoch": 3, "epochs": 3, "history": history,
                                                    "best": {**history[-1], "best_epoch": 3}}))
    run.phase2.mkdir()
    (run.phase2 / "log.csv").write_text("epoch,global_step,train_loss,val_dice,val_loss,lr,seconds,skipped_steps\n"
                                        "1,4,1.2,0.3,1.1,1e-4,2,0\n2,8,0.9,0.45,0.95,5e-5,4,0\n")
    report = write_report(run.root)
    figures = report_figures(report)
    assert [title for title, _ in figures] == ["Phase 1 curves", "Phase 2 curves"]
    for _, png in figures:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width > 300
    page = report.read_text()
    assert "The evaluation has not run yet." in page and "0.45" in page
    assert report_url(report) == report.resolve().as_uri() and report_url(report).startswith("file://")
    assert report_figures(tmp_path / "none.html") == []


def _settings(tmp_path, **kw):
    (tmp_path / "data").mkdir(exist_ok=True)
    return train.TrainSettings(dataset=str(tmp_path / "data"), output=str(tmp_path / "run"), sam_preset="small",
                               distill_epochs=2, finetune_epochs=3, batch_size=2, device="CPU", **kw)


def test_run_all_starts_a_new_run_then_resumes_the_folders_run(tmp_path):
    from ldfsam.cli.train import build_config
    from ldfsam.train.run import RunFolder

    s = _settings(tmp_path, budget_percent=50)
    argv, resumed = run_all_argv(s, python="python")
    args = _core_args(argv)
    assert not resumed and args.command == "train" and not args.resume and args.out == tmp_path / "run"
    cfg = build_config(args)
    assert (cfg.data, cfg.budget, cfg.preset, cfg.finetune.epochs) == (str(tmp_path / "data"), 0.5, "small", 3)
    # Once the core has written the run's configuration, the same button continues that run.
    (tmp_path / "run").mkdir()
    RunFolder(tmp_path / "run").write_config(cfg.validate())
    argv, resumed = run_all_argv(s, python="python")
    args = _core_args(argv)
    assert resumed and args.resume and args.data is None and args.out == tmp_path / "run"
    # A wrong setting is named before any process starts.
    s.batch_size = 0
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        run_all_argv(s)


def test_a_folder_the_step_buttons_filled_gives_a_clear_message_and_a_new_folder(tmp_path):
    from ldfsam.errors import InputError
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.run import run_training

    s = _settings(tmp_path)
    (tmp_path / "run" / "prepared").mkdir(parents=True)
    (tmp_path / "run" / "prepared" / "splits.json").write_text("{}")
    with pytest.raises(ValueError) as refused:
        run_all_argv(s)
    message = str(refused.value)
    assert f"the output folder {tmp_path / 'run'} is not empty (prepared)" in message
    assert f"Choose a new output folder, for example {tmp_path / 'run-all'}," in message
    assert "Traceback" not in message
    # The core itself refuses that folder, so the panel's check is the same rule, given before a process starts.
    with pytest.raises(InputError, match="is not empty"):
        run_training(TrainConfig(data=str(tmp_path / "data")), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["prepared"]
    # The suggested folder is one that does not exist yet.
    (tmp_path / "run-all").mkdir()
    assert not_empty_message(tmp_path / "run").endswith(
        f"for example {tmp_path / 'run-all-2'}, or continue these files with the step buttons.")
    assert not_empty_message(tmp_path / "run-all") is None and not_empty_message(tmp_path / "new") is None
    (tmp_path / "file").write_text("x")
    assert not_empty_message(tmp_path / "file") == f"the output folder {tmp_path / 'file'} is a file; choose a " \
                                                   "folder for the run"


def test_the_panel_has_run_all_and_the_report_bound_to_the_settings_it_reads(tmp_path):
    pytest.importorskip("PySide6")
    import xml.etree.ElementTree as ET

    from LDFSAMSegmentLib.bindings import PARAMETER_PROPERTY, PATH_PROPERTY, bound_widgets
    from PySide6.QtGui import QPixmap
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QPushButton, QVBoxLayout, QWidget

    QApplication.instance() or QApplication([])
    path = REPO / "LDFSAMTrain" / "Resources" / "UI" / "LDFSAMTrain.ui"
    panel = QUiLoader().load(str(path))
    steps = panel.findChild(QWidget, "stepsCollapsibleButton")
    run_all = steps.findChild(QPushButton, "runAllButton")
    assert run_all is not None and run_all.text() == "Run all" and "ldfsam train" in run_all.toolTip()
    report = panel.findChild(QWidget, "reportCollapsibleButton")
    assert report.findChild(QPushButton, "openReportButton").text() == "Open report"
    figures = report.findChild(QWidget, "figuresFrame")
    assert isinstance(figures.layout(), QVBoxLayout)  # the module adds the report's figures to it

    # Every setting Run all's command line reads is bound to one widget of the panel.
    children = panel.findChildren(QWidget)
    bound = set(bound_widgets(children, PARAMETER_PROPERTY)) | set(bound_widgets(children, PATH_PROPERTY))
    read = {node.attr for node in ast.walk(ast.parse(inspect.getsource(train.settings_from)))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "p"}
    assert len(read) == 11 and read <= bound
    root = ET.parse(path).getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    assert (classes["runAllButton"], classes["openReportButton"], classes["figuresFrame"]) == \
        ("QPushButton", "QPushButton", "QFrame")

    # The figures the panel shows load as Qt images (a report written by the core).
    from ldfsam.train.config import TrainConfig
    from ldfsam.train.report import write_report
    from ldfsam.train.run import RunFolder

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.write_config(TrainConfig(data=str(tmp_path)).validate())
    run.phase2.mkdir()
    (run.phase2 / "log.csv").write_text("epoch,global_step,train_loss,val_dice,val_loss,lr,seconds,skipped_steps\n"
                                        "1,4,1.2,0.3,1.1,1e-4,2,0\n2,8,0.9,0.45,0.95,5e-5,4,0\n")
    figures = report_figures(write_report(run.root))
    assert [title for title, _ in figures] == ["Phase 2 curves"]
    pixmap = QPixmap()
    assert pixmap.loadFromData(figures[0][1], "PNG") and pixmap.width() > 300
