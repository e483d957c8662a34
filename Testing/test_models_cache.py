"""Model names, the cache folder, import/remove, the registry file checks."""

from __future__ import annotations

import json

import pytest
from _infer_helpers import save_tiny_model

from ldfsam.errors import CheckpointError, ConfigError, InputError, LDFSAMError
from ldfsam.models import import_model, installed_models, load_registry, models_dir, remove_model, resolve_model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LDFSAM_MODEL_REGISTRY", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_cache_is_under_ldfsam_home(home):
    assert models_dir() == home / "models"
    assert installed_models() == {}


def test_import_resolve_remove(home, model_file):
    path = import_model(model_file, "my-model")
    assert path == home / "models" / "my-model.safetensors"
    assert path.read_bytes() == model_file.read_bytes()
    assert resolve_model("my-model") == path
    assert resolve_model(str(model_file)) == model_file
    with pytest.raises(LDFSAMError, match="installed already"):
        import_model(model_file, "my-model")
    import_model(model_file, "my-model", force=True)
    assert sorted(p.name for p in (home / "models").iterdir()) == ["my-model.safetensors"]
    remove_model("my-model")
    with pytest.raises(InputError, match="unknown model"):
        resolve_model("my-model")


def test_import_refuses_non_models(home, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        import_model(junk)
    pt = tmp_path / "weights.pth"
    pt.write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="expected a .safetensors"):
        import_model(pt)
    with pytest.raises(ConfigError, match="model name"):
        import_model(junk, "../escape")
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []


def test_registry_names(home, tmp_path, monkeypatch):
    registry = load_registry()
    assert registry["sam-vit-b"].sha256.startswith("ec2df627")
    assert registry["sam-vit-b"].kind == "sam-checkpoint"
    with pytest.raises(CheckpointError, match="not a segmentation model"):
        resolve_model("sam-vit-b")
    with pytest.raises(InputError, match="no such model file"):
        resolve_model("missing/model.safetensors")
    reg = tmp_path / "reg.json"
    reg.write_text(json.dumps({"models": [{"name": "remote", "url": "http://127.0.0.1:9/remote.safetensors",
                                           "sha256": "a" * 64, "size": 10, "description": "x"}]}))
    monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(reg))
    with pytest.raises(InputError, match="not downloaded yet; run `ldfsam models download remote`"):
        resolve_model("remote")


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "url": "http://h/x", "sha256": "zz", "size": 1, "description": ""}, "64 hexadecimal"),
    ({"name": "x", "url": "ftp://h/x", "sha256": "a" * 64, "size": 1, "description": ""}, "url must start"),
    ({"name": "x", "url": "http://h/x", "sha256": "a" * 64, "size": 0, "description": ""}, "size must be"),
    ({"name": "x", "sha256": "a" * 64, "size": 1, "description": ""}, "needs a 'url'"),
    ({"name": "x", "url": "http://h/x", "sha256": "a" * 64, "size": 1, "description": "", "file": "../x"},
     "plain file name"),
    ({"name": "x", "url": "http://h/x", "sha256": "a" * 64, "size": 1, "description": "", "extra": 1},
     "unknown key"),
])
def test_bad_registry_entries(home, tmp_path, monkeypatch, entry, message):
    reg = tmp_path / "reg.json"
    reg.write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(reg))
    with pytest.raises(ConfigError) as e:
        load_registry()
    assert message in str(e.value) and str(reg) in str(e.value)


def test_models_list_json_shows_bundled_available_and_imported(home, model_file):
    import os
    import subprocess
    import sys

    import_model(model_file, "my-model")
    out = subprocess.run([sys.executable, "-m", "ldfsam", "models", "list", "--json"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    models = {m["name"]: m for m in json.loads(out.stdout)}
    assert models["ldfsam-demo"]["state"] == "bundled" and models["ldfsam-demo"]["default"] is True
    assert models["sam-vit-b"]["state"] == "available" and models["sam-vit-b"]["path"] is None
    mine = models["my-model"]
    assert (mine["kind"], mine["state"], mine["size"]) == ("ldfsam", "installed", model_file.stat().st_size)
    assert mine["path"] == str(home / "models" / "my-model.safetensors")
