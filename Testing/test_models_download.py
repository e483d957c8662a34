"""Downloads against a real HTTP server on 127.0.0.1: resume, checksum, 404, progress events, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from _http_server import FileServer

from ldfsam.errors import CheckpointError, LDFSAMError
from ldfsam.models import download_file
from ldfsam.progress import Progress, parse_event

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MB, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    with FileServer({"/m.safetensors": PAYLOAD}) as s:
        yield s


def test_download_verifies_and_renames(server, tmp_path):
    target = tmp_path / "m.safetensors"
    download_file(f"{server.url}/m.safetensors", target, SHA, len(PAYLOAD))
    assert target.read_bytes() == PAYLOAD
    assert list(tmp_path.iterdir()) == [target]


def test_resume_after_cut_connection(server, tmp_path):
    server.cut_after["/m.safetensors"] = 300_000
    target = tmp_path / "m.safetensors"
    download_file(f"{server.url}/m.safetensors", target, SHA, len(PAYLOAD), retries=2)
    assert target.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=300000-"]


def test_resume_in_a_later_run(server, tmp_path):
    server.cut_after["/m.safetensors"] = 123_457
    target = tmp_path / "m.safetensors"
    with pytest.raises(LDFSAMError, match="resume"):
        download_file(f"{server.url}/m.safetensors", target, SHA, len(PAYLOAD), retries=0)
    assert not target.exists()
    assert (tmp_path / "m.safetensors.part").stat().st_size == 123_457
    download_file(f"{server.url}/m.safetensors", target, SHA, len(PAYLOAD), retries=0)
    assert target.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=123457-"
    assert not (tmp_path / "m.safetensors.part").exists()


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="sha256"):
        download_file(f"{server.url}/m.safetensors", target, "0" * 64, len(PAYLOAD))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_partial_file_is_not_kept(server, tmp_path):
    # A stale partial file from another version of the model: resuming gives the wrong bytes, so nothing is kept.
    target = tmp_path / "m.safetensors"
    (tmp_path / "m.safetensors.part").write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError):
        download_file(f"{server.url}/m.safetensors", target, SHA, len(PAYLOAD))
    assert list(tmp_path.iterdir()) == []


def test_404_names_the_url(server, tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(LDFSAMError, match="HTTP 404") as e:
        download_file(f"{server.url}/missing.safetensors", target, SHA, len(PAYLOAD))
    assert "missing.safetensors" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_progress_events(server, tmp_path, capsys):
    download_file(f"{server.url}/m.safetensors", tmp_path / "m.safetensors", SHA, len(PAYLOAD),
                  progress=Progress("json"))
    events = [parse_event(line) for line in capsys.readouterr().out.splitlines()]
    assert all(e is not None and e["phase"] == "download" for e in events)
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    steps = [e for e in events if e["kind"] == "progress"]
    assert steps[-1]["step"] == len(PAYLOAD) and steps[-1]["fraction"] == 1.0


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "ldfsam", "models", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_download_list_remove(server, tmp_path):
    server.cut_after["/m.safetensors"] = 500_000
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [
        {"name": "test-model", "url": f"{server.url}/m.safetensors", "sha256": SHA, "size": len(PAYLOAD),
         "description": "served by the test"},
        {"name": "gone", "url": f"{server.url}/gone.safetensors", "sha256": SHA, "size": len(PAYLOAD),
         "description": "404"}]}))
    home = tmp_path / "home"
    env = dict(os.environ, LDFSAM_HOME=str(home), LDFSAM_MODEL_REGISTRY=str(registry))
    out = _cli(["list"], env)
    assert out.returncode == 0, out.stderr
    assert "test-model" in out.stdout and "available" in out.stdout and "sam-vit-b" in out.stdout

    out = _cli(["download", "test-model", "--progress", "json"], env)
    assert out.returncode == 0, out.stderr
    events = [parse_event(line) for line in out.stdout.splitlines()]
    assert all(e is not None for e in events), out.stdout
    assert events[-1]["kind"] == "done"
    assert (home / "models" / "test-model.safetensors").read_bytes() == PAYLOAD
    assert "installed" in _cli(["list"], env).stdout

    out = _cli(["download", "gone"], env)
    assert out.returncode == 2
    assert "HTTP 404" in out.stderr and "gone.safetensors" in out.stderr
    assert sorted(p.name for p in (home / "models").iterdir()) == ["test-model.safetensors"]

    out = _cli(["remove", "test-model"], env)
    assert out.returncode == 0, out.stderr
    assert list((home / "models").iterdir()) == []
    out = _cli(["remove", "test-model"], env)
    assert out.returncode == 2 and "no installed model named 'test-model'" in out.stderr
