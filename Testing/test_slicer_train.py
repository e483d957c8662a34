"""The Train module's plain-Python layer: progress and curves from core events, the evaluation table from the
core's CSV, and (slow) a tiny training run end to end through the module's command lines and processes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "LDFSAMSegment"), str(REPO / "LDFSAMTrain")]

from LDFSAMSegmentLib.commands import core_env  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState, failure_message, format_seconds  # noqa: E402
from LDFSAMTrainLib import commands as train  # noqa: E402
from LDFSAMTrainLib.curves import curve_columns  # noqa: E402
from LDFSAMTrainLib.evaluation_table import read_evaluation_csv  # noqa: E402

from ldfsam.progress import Progress, parse_event  # noqa: E402


class Lines:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def core_events(emit) -> list:
    """Events as the core's Progress writes them in JSON mode, read back with the core's parser."""
    out = Lines()
    emit(Progress("json", stream=out))
    return [parse_event(line) for line in out.text.splitlines()]


def test_training_events_become_status_and_curves():
    def emit(p):
        p.start("teacher", total=2, message="YOLOv8x teacher")
        p.update("teacher", 1, 2, epoch=1, epochs=2, loss=3.5)
        p.update("teacher", 2, 2, epoch=2, epochs=2, loss=2.5, val_dice=None)
        p.done("teacher")
        p.start("finetune", total=4)
        p.update("finetune", 1, 4, epoch=1, epochs=2, loss=0.9)
        p.update("finetune", 2, 4, epoch=1, epochs=2, loss=0.8)
        p.log("finetune", "validation", epoch=1, val_dice=0.41)
        p.update("finetune", 3, 4, epoch=2, epochs=2, loss=0.6, val_dice=0.55)
        p.log("finetune", "checkpoint is bigger than expected", level="warning")

    state = RunState()
    for event in core_events(emit):
        state.feed(event)
    assert state.phase == "finetune" and state.percent == 75 and state.done_phases == ["teacher"]
    assert state.status.startswith("Phase 2: SAM fine-tuning, epoch 2/2, 3/4, loss 0.6, val Dice 0.550, ETA ")
    assert "[finetune] warning: checkpoint is bigger than expected" in state.log
    assert [(p.phase, p.epoch, p.loss, p.val_dice) for p in state.curve] == [
        ("teacher", 1.0, 3.5, None), ("teacher", 2.0, 2.5, None), ("finetune", 1.0, 0.8, 0.41),
        ("finetune", 2.0, 0.6, 0.55)]
    columns = curve_columns(state.curve)
    # Phase 2 epochs continue after the last teacher epoch on the chart's x axis.
    assert columns["step"] == [1.0, 2.0, 3.0, 4.0]
    assert columns["phase"] == ["teacher", "teacher", "finetune", "finetune"]
    assert columns["loss"] == [3.5, 2.5, 0.8, 0.6]
    assert math.isnan(columns["val_dice"][0]) and columns["val_dice"][2:] == [0.41, 0.55]


def test_error_event_and_exit_status_give_the_real_cause():
    state = RunState()
    for event in core_events(lambda p: p.error("prepare", "/data/x.nii.gz: not a 3D image")):
        state.feed(event)
    assert state.error == "/data/x.nii.gz: not a 3D image"
    tail = "Traceback (most recent call last):\n  ...\nldfsam prepare: error: /data: no labelled cases found"
    assert failure_message(2, state, tail, False) == \
        "Failed (exit status 2): ldfsam prepare: error: /data: no labelled cases found"
    assert failure_message(1, state, "", False) == "Failed (exit status 1): /data/x.nii.gz: not a 3D image"
    assert failure_message(130, RunState(), "", False) == "Cancelled."
    assert failure_message(-9, RunState(), "", False) == "Failed: the process was killed by signal 9 (out of memory?)."
    assert failure_message(-9, RunState(), "", True) == "Cancelled."
    # Cancelled in Slicer: the PythonSlicer launcher ends with -15 (POSIX) or taskkill's 1 (Windows).
    assert failure_message(-15, RunState(), "", True) == failure_message(1, state, tail, True) == "Cancelled."
    assert failure_message(0, RunState(), "", False) is None
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5 s", "1 min 05 s", "1 h 02 min"]


def test_evaluation_table_reads_the_core_csv(tmp_path):
    from ldfsam.evaluate.folders import case_rows
    from ldfsam.evaluate.report import summarize, write_report

    ref = np.zeros((8, 16, 16), np.uint8)
    ref[2:6, 4:12, 4:12] = 1
    rows = []
    for i, shift in enumerate((0, 2, 5)):
        rows += case_rows(f"case{i}", np.roll(ref, shift, axis=2), ref, (0.5, 0.5, 0.5), None)
    paths = write_report(tmp_path, rows, summarize(rows, resamples=20))
    table = read_evaluation_csv(paths["per_case"])
    assert table.columns[:3] == ["case_id", "class", "dice"]
    assert [r[0] for r in table.rows] == ["case0", "case1", "case2"]
    dice = table.column("dice")
    assert dice[0] == 1.0 and dice[0] > dice[1] > dice[2] > 0
    summary = json.loads(paths["summary"].read_text())
    assert table.means()["dice"] == pytest.approx(summary["metrics"]["foreground"]["dice"]["mean"], rel=1e-5)
    assert "case_id" not in table.means()

    (tmp_path / "ragged.csv").write_text("case_id,dice\nc1,0.5,extra\n")
    with pytest.raises(ValueError, match="ragged.csv: line 2 has 3 fields, the header 2"):
        read_evaluation_csv(tmp_path / "ragged.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty evaluation table"):
        read_evaluation_csv(tmp_path / "empty.csv")


def _run_step(argv, env, stop_when=None, timeout=1800):
    """Run one step as the module does; ``stop_when()`` true while it runs: Cancel. (process, state, events)."""
    process = BackgroundProcess(argv, env=env, grace_s=60).start()
    state, events = RunState(), []
    deadline = time.monotonic() + timeout
    try:
        while True:
            finished = process.finished  # before the poll: once finished, this poll reads the last lines
            new = process.poll().events
            for event in new:
                state.feed(event)
            events += new
            if finished:
                return process, state, events
            if stop_when is not None and not process.cancelled and process.returncode is None and stop_when():
                process.cancel()
            assert time.monotonic() < deadline, argv[3]
            time.sleep(0.05)
    finally:
        if not process.finished:  # a failed assertion or a test timeout: no process is left behind
            process.cancel()
            process.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 2-6 min on 2 idle CPU cores; more than the suite's 600 s on a busy machine
def test_tiny_training_end_to_end_through_the_module_commands(tmp_path):
    """Prepare, Phase 1, Phase 2 stopped and resumed, evaluate and install, each as the Train module runs it (what
    LDFSAMTrainFullTest does in Slicer; several minutes on 2 CPU cores). Device auto: resolved by the children."""
    from ldfsam.checkpoint import read_document
    from ldfsam.data.phantom import write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, cases=5, shape=(16, 64, 64), spacing=0.5)
    s = train.TrainSettings(dataset=str(data), output=str(tmp_path / "run"), teacher_scale="n", student_scale="n",
                            sam_preset="small", distill_epochs=1, finetune_epochs=2, batch_size=4, device="auto")
    s.check()
    env = core_env(str(tmp_path / "home"))
    layout = train.layout(s)
    curve = []
    for step in ("prepare", "distill"):
        process, state, _ = _run_step(train.step_argv(step, s), env)
        assert process.returncode == 0, f"{step}: {process.stderr_tail()}"
        assert state.error is None and state.done_phases, step
        curve += state.curve

    # Phase 2 stopped once it has saved a state, then resumed from that state.
    state_path = layout.phase2 / "state.safetensors"
    process, state, _ = _run_step(train.step_argv("finetune", s), env, stop_when=state_path.is_file)
    assert process.cancelled and process.returncode == 130, process.stderr_tail()
    assert failure_message(process.returncode, state, process.stderr_tail(), process.cancelled) == "Cancelled."
    saved = read_document(state_path)["progress"]
    assert not saved["complete"] and saved["global_step"] > 0
    curve += state.curve
    process, state, events = _run_step(train.step_argv("finetune", s, resume=True), env)
    assert process.returncode == 0, process.stderr_tail()
    steps = [e["step"] for e in events
             if e.get("kind") == "progress" and e.get("phase") == "finetune" and e.get("step") is not None]
    assert steps and steps[0] == saved["global_step"] + 1  # continued after the saved step, not from scratch
    finished = read_document(state_path)["progress"]
    assert finished["complete"] and finished["global_step"] > saved["global_step"]
    curve += state.curve

    process, state, _ = _run_step(train.step_argv("evaluate", s), env)
    assert process.returncode == 0, process.stderr_tail()
    # The chart's data: a loss for every epoch of every training phase, and Phase 2's validation Dice.
    assert {p.phase for p in curve} == {"teacher", "student", "finetune"}
    assert all(p.loss is not None and math.isfinite(p.loss) for p in curve)
    assert any(p.val_dice is not None and 0 <= p.val_dice <= 1 for p in curve if p.phase == "finetune")
    assert layout.prompt_generator.is_file() and layout.model.is_file()
    table = read_evaluation_csv(layout.evaluation_csv)
    assert len(table.rows) >= 1 and "dice" in table.columns
    process = BackgroundProcess(train.import_argv(s, "tiny-test"), env=env).start()
    process.wait(timeout=300)
    assert process.returncode == 0, process.stderr_tail()
    assert (tmp_path / "home" / "models" / "tiny-test.safetensors").is_file()


def test_evaluation_table_rows_stay_whole_in_the_sorting_table_of_the_ui(tmp_path):
    # The real .ui (sortingEnabled on) loaded with PySide6 offscreen, filled as the panel fills it.
    pytest.importorskip("PySide6")
    from LDFSAMTrainLib.evaluation_table import fill_table
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QTableWidget, QTableWidgetItem

    QApplication.instance() or QApplication([])
    panel = QUiLoader().load(str(REPO / "LDFSAMTrain" / "Resources" / "UI" / "LDFSAMTrain.ui"))
    table = panel.findChild(QTableWidget, "evaluationTableWidget")
    assert table.isSortingEnabled()
    # Cases whose name order and Dice order differ: filling with sorting on would move rows under the cells.
    cases = [("case-c", "0.91", "1.5"), ("case-a", "0.72", "3.0"), ("case-b", "0.85", "2.1"), ("case-d", "0.60", "4.4")]
    path = tmp_path / "per_case.csv"
    path.write_text("case_id,dice,hd95\n" + "".join(",".join(c) + "\n" for c in cases))
    data = read_evaluation_csv(path)

    def shown():
        return [tuple(table.item(r, c).text() for c in range(3)) for r in range(table.rowCount())]

    fill_table(table, data, QTableWidgetItem)
    assert shown() == cases and table.isSortingEnabled()
    table.sortByColumn(1, table.horizontalHeader().sortIndicatorOrder().__class__.AscendingOrder)  # the user sorts
    assert sorted(shown()) == sorted(cases) and [r[1] for r in shown()] == sorted(c[1] for c in cases)
    fill_table(table, data, QTableWidgetItem)  # a new evaluation: the file's order, every row whole
    assert shown() == cases
