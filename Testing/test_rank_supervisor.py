"""The torchrun rank supervisor's parts on their own: the worker's in-flight record, which volume a dead worker
is blamed for, and the last-rank-out exit status counted on a real TCPStore (the kind torchrun's agent hosts)."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest

from ldfsam.infer.rank_supervisor import WORKER_ENV, WorkerState, blamed_volume, finish, inflight_path


def test_worker_state_records_stages_and_the_blame_follows_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv(WORKER_ENV, json.dumps({"skip": ["/data/x.nii.gz"]}))
    worker = WorkerState.from_env()
    assert worker.skip == {"/data/x.nii.gz"}
    worker.open(tmp_path, 3)
    a, b, c = (tmp_path / n for n in ("a.nii.gz", "b.nii.gz", "c.nii.gz"))
    assert blamed_volume(tmp_path, 3) is None  # holds nothing yet
    worker.stage(a, tmp_path / "a.seg.nrrd", "writing")
    assert blamed_volume(tmp_path, 3) == (str(a.resolve()), str(tmp_path / "a.seg.nrrd"))
    worker.stage(c, tmp_path / "c.seg.nrrd", "reading")
    assert blamed_volume(tmp_path, 3)[0] == str(c.resolve())  # a read that crashes beats a write
    worker.stage(b, tmp_path / "b.seg.nrrd", "predicting")
    assert blamed_volume(tmp_path, 3)[0] == str(b.resolve())
    worker.stage(b, tmp_path / "b.seg.nrrd", None)
    assert blamed_volume(tmp_path, 3)[0] == str(c.resolve())
    assert json.loads(inflight_path(tmp_path, 3).read_text())["pid"] > 0
    worker.close()
    assert not inflight_path(tmp_path, 3).exists() and blamed_volume(tmp_path, 3) is None


def test_no_worker_state_outside_a_supervisor(monkeypatch):
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert WorkerState.from_env() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_the_last_rank_out_reports_a_failure():
    from torch.distributed import TCPStore

    port = _free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))  # noqa: F841 - kept alive
    env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "TORCHELASTIC_RUN_ID": "run-a", "TORCHELASTIC_RESTART_COUNT": "0"}
    # Rank 1 fails and finishes first: it must exit 0, or torchrun would stop ranks 0 and 2 mid-work.
    assert finish(failed=True, rank=1, world_size=3, env=env) == 0
    assert finish(failed=False, rank=2, world_size=3, env=env) == 0
    assert finish(failed=False, rank=0, world_size=3, env=env) == 1  # the last one says the run had a failure
    clean = {**env, "TORCHELASTIC_RUN_ID": "run-b"}  # another run on the same store counts on its own
    assert [finish(failed=False, rank=r, world_size=2, env=clean) for r in (0, 1)] == [0, 0]


@pytest.mark.parametrize("failed", [True, False])
def test_without_torchruns_store_each_rank_reports_its_own_share(failed):
    assert finish(failed=failed, rank=0, world_size=2, env={}) == int(failed)
    unreachable = {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(_free_port())}
    assert finish(failed=failed, rank=0, world_size=2, env=unreachable, timeout_s=1) == int(failed)
