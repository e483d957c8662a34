"""The modules read their processes' output without Python threads: non-blocking pipes polled from a timer.

Real subprocesses throughout; the timer is a real Qt timer (PySide6, offscreen) standing in for Slicer's
``qt.QTimer``, and the child answers only once the timer's poll has passed its previous line on, so output that
waited for a thread or for the end of the process would hang the test instead of passing it.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LDFSAMSegment"))

from LDFSAMSegmentLib.commands import core_env  # noqa: E402
from LDFSAMSegmentLib.pipes import PipeReader  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.prompt_client import PromptWorker  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState  # noqa: E402


def test_no_thread_is_started_and_lines_split_across_reads_come_out_whole(tmp_path):
    import subprocess

    go = tmp_path / "go"
    # Half a line and half of a two-byte character, then (once the test says so) the rest of both.
    code = textwrap.dedent(f"""
        import os, sys, time
        out = sys.stdout.buffer
        out.write("first line\\nhalf of a ".encode() + "é".encode()[:1]); out.flush()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        out.write("é".encode()[1:] + b" line\\r\\nno line end"); out.flush()
    """)
    threads = threading.active_count()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    reader = PipeReader(child.stdout)
    deadline = time.monotonic() + 30
    lines = []
    while not lines and time.monotonic() < deadline:
        lines = reader.read_lines()  # returns at once, whether or not anything is there
        time.sleep(0.01)
    assert lines == ["first line"] and not reader.eof
    assert reader.read_lines() == []  # the half line waits for its end
    go.write_text("")
    child.wait(timeout=30)
    rest = []
    while not reader.eof:
        rest += reader.read_lines()
    assert rest == ["half of a é line", "no line end"]
    assert reader.read_lines() == [] and threading.active_count() == threads


def test_output_larger_than_the_pipe_buffer_never_blocks_the_child():
    code = "import sys\nfor i in range(20000): print(f'line {i:05d} ' + 'x' * 40)\nprint('error', file=sys.stderr)"
    process = BackgroundProcess([sys.executable, "-c", code]).start()
    out = process.wait(timeout=60)  # ~1 MB: the child would stop at 64 KB if nothing read while it runs
    assert process.returncode == 0 and len(out.stdout) == 20000 and out.stdout[-1].startswith("line 19999 ")
    assert out.stderr == ["error"] and process.stderr_tail() == "error"


def test_a_qt_timer_poll_passes_each_event_on_while_the_process_runs(tmp_path):
    qtcore = pytest.importorskip("PySide6.QtCore", reason="PySide6 is needed to drive a real Qt timer")
    app = qtcore.QCoreApplication.instance() or qtcore.QCoreApplication([])
    code = textwrap.dedent(f"""
        import os, time
        from ldfsam.progress import Progress
        p = Progress("json")
        p.start("segment", total=3)
        for i in range(1, 4):
            # The next step only once the GUI side has seen this one (it creates seen-i).
            while not os.path.exists(os.path.join({str(tmp_path)!r}, f"seen-{{i - 1}}")):
                time.sleep(0.01)
            p.update("segment", i, 3)
        p.done("segment")
    """)
    (tmp_path / "seen-0").write_text("")
    process = BackgroundProcess([sys.executable, "-c", code], env=core_env()).start()
    state, seen, finished = RunState(), [], []
    loop = qtcore.QEventLoop()
    timer = qtcore.QTimer()
    timer.setInterval(20)

    def poll():  # what lifecycle.BackgroundRun._poll does on Slicer's timer
        done = process.finished
        for event in process.poll().events:
            state.feed(event)
            if event["kind"] == "progress":
                seen.append(event["step"])
                (tmp_path / f"seen-{event['step']}").write_text("")
        if done:
            finished.append(True)
            timer.stop()
            loop.quit()

    timer.timeout.connect(poll)
    timer.start()
    qtcore.QTimer.singleShot(60000, loop.quit)
    loop.exec()
    assert finished and seen == [1, 2, 3] and state.done_phases == ["segment"] and process.returncode == 0
    assert app is not None


def test_the_prompt_worker_is_read_without_threads_and_says_why_it_ended(tmp_path):
    # A stand-in worker: says it is ready, answers one request, then ends with an error on stderr.
    code = textwrap.dedent("""
        import json, sys
        print(json.dumps({"ok": True, "ready": True}), flush=True)
        request = json.loads(sys.stdin.readline())
        print(json.dumps({"ok": True, "echo": request["cmd"]}), flush=True)
        sys.stdin.readline()
        print("ldfsam prompt-worker: error: it broke", file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    threads = threading.active_count()
    worker = PromptWorker([sys.executable, "-c", code]).start()
    assert worker.ask({"cmd": "open"}, timeout=30)["echo"] == "open"
    assert threading.active_count() == threads
    worker.send({"cmd": "other"})
    with pytest.raises(Exception, match=r"ended \(exit status 3\): ldfsam prompt-worker: error: it broke"):
        worker.ask(None, timeout=30)
    assert worker.stop() == 3
