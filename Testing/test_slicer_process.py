"""The background process of the Slicer modules: real subprocesses, real process trees, real core output."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LDFSAMSegment"))

from LDFSAMSegmentLib.commands import core_env, ldfsam_argv  # noqa: E402
from LDFSAMSegmentLib.process import BackgroundProcess  # noqa: E402
from LDFSAMSegmentLib.run_state import RunState, failure_message  # noqa: E402

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX; Windows uses taskkill")

# A parent that starts a grandchild (which ignores SIGTERM, like a stuck worker), reports both pids, then waits.
TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(f"pids {__import__('os').getpid()} {child.pid}", flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: check /proc where there is one.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    return True


def _pids(process: BackgroundProcess, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in process.poll().stdout:
            if line.startswith("pids "):
                return [int(p) for p in line.split()[1:]]
        time.sleep(0.02)
    raise AssertionError("the process tree did not start")


@posix_only
def test_cancel_kills_the_whole_tree_even_a_child_that_ignores_sigterm():
    process = BackgroundProcess([sys.executable, "-c", TREE], grace_s=1.0).start()
    parent, grandchild = _pids(process)
    assert _alive(parent) and _alive(grandchild)
    t0 = time.monotonic()
    process.cancel()
    process.wait(timeout=15)
    elapsed = time.monotonic() - t0
    assert not _alive(parent) and not _alive(grandchild)
    assert process.cancelled and process.returncode == -signal.SIGTERM
    # The grandchild ignored SIGTERM: it was killed after the grace period, not before.
    assert elapsed >= 0.9
    assert failure_message(process.returncode, RunState(), process.stderr_tail(), process.cancelled) == "Cancelled."


@posix_only
def test_strays_left_by_a_finished_process_are_ended():
    code = textwrap.dedent("""
        import subprocess, sys
        # The stray inherits stdout and stderr: the pipes stay open as long as it lives.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"pids {child.pid} {child.pid}", flush=True)
    """)
    process = BackgroundProcess([sys.executable, "-c", code], grace_s=1.0).start()
    (stray, _) = _pids(process)
    process.wait(timeout=15)
    assert process.returncode == 0
    assert not _alive(stray)


def test_poll_never_blocks_and_separates_events_from_other_output(tmp_path):
    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import os, sys, time
        from ldfsam.progress import Progress
        p = Progress("json")
        print("library chatter on stdout", flush=True)
        while not os.path.exists({str(go)!r}):  # nothing more until the test says so
            time.sleep(0.01)
        p.start("segment", total=3)
        for i in range(1, 4):
            p.update("segment", i, 3)
        print("warning on stderr", file=sys.stderr, flush=True)
        p.done("segment")
    """)
    process = BackgroundProcess([sys.executable, "-c", code], env=core_env()).start()
    # The child is waiting for the test, so a poll that waited for output or for the end would never return:
    # returning at all, with the child still running and no event yet, is the proof (the GUI thread is never held).
    first = process.poll()
    assert process.returncode is None and first.events == []
    go.write_text("")
    out = process.wait(timeout=60)
    assert process.returncode == 0
    assert [e["kind"] for e in out.events] == ["start", "progress", "progress", "progress", "done"]
    assert first.stdout + out.stdout == ["library chatter on stdout"]
    assert "warning on stderr" in first.stderr + out.stderr
    state = RunState()
    for e in out.events:
        state.feed(e)
    assert state.percent == 100 and state.done_phases == ["segment"]


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_a_failing_core_command_reports_its_real_cause(tmp_path):
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom

    image, _ = make_phantom(shape=(8, 32, 32), spacing=0.5, seed=0)
    sitk.WriteImage(image, str(tmp_path / "cbct.nrrd"))
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"this is not a model")
    argv = ldfsam_argv("segment", tmp_path / "cbct.nrrd", "-o", tmp_path / "out.seg.nrrd", "--model", model,
                       "--progress", "json", python=sys.executable)
    process = BackgroundProcess(argv, env=core_env(str(tmp_path / "home"))).start()
    out = process.wait(timeout=120)
    state = RunState()
    for e in out.events:
        state.feed(e)
    assert process.returncode == 2
    message = failure_message(process.returncode, state, process.stderr_tail(), process.cancelled)
    assert message.startswith(f"Failed (exit status 2): ldfsam segment: error: {model}: ")
    assert "Traceback" not in process.stderr_tail()
    assert not (tmp_path / "out.seg.nrrd").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="checks the call on POSIX, where Windows flags are refused")
def test_taskkill_runs_without_a_console_window():
    # subprocess refuses creationflags outside Windows before starting anything: the refusal shows the flag is
    # passed (without CREATE_NO_WINDOW, Slicer would flash a console at every Cancel on Windows).
    from LDFSAMSegmentLib import process as process_module

    assert process_module.CREATE_NO_WINDOW == 0x08000000
    with pytest.raises(ValueError, match="creationflags"):
        process_module.taskkill(os.getpid())


def test_environment_makes_the_core_importable_from_anywhere(tmp_path):
    env = core_env(str(tmp_path / "home"), base={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(REPO), "/elsewhere"]
    assert env["LDFSAM_HOME"] == str(tmp_path / "home")
    code = "import ldfsam, os; print(ldfsam.__file__); print(os.environ['LDFSAM_HOME'])"
    process = BackgroundProcess([sys.executable, "-c", code], env=env, cwd=str(tmp_path)).start()
    out = process.wait(timeout=60)
    assert process.returncode == 0, process.stderr_tail()
    assert out.stdout == [str(REPO / "ldfsam" / "__init__.py"), str(tmp_path / "home")]
