"""The Train module's "Run all" layer: the ``ldfsam train`` command line as the core parses it, one progress bar
over the stages from real core events, and the report's figures and link (a report built by the core)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain")]

from LDFSAMTrainLib import commands as train  # noqa: E402
from LDFSAMTrainLib.run_all import overall_percent, report_figures, report_url  # noqa: E402

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
