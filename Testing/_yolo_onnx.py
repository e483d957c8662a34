"""Test helpers: Ultralytics-style YOLOv8 ONNX exports (BatchNorm folded into the convolutions) made in the test.

``fused_yolo`` builds a random YOLOv8 with random BatchNorm statistics (so that folding matters) and folds it with
ultralytics' own ``DetectionModel.fuse``, as ultralytics' exporter does. ``onnx_bytes`` writes the fused weights as
an ONNX model's initializers (protocol-buffers encoding written here, so the fast tests need no ``onnx``);
``export_onnx`` runs the real exporter path (``torch.onnx.export`` of the fused model with the Detect head in export
mode), for the slow tests that compare with onnxruntime.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

COCO_NAMES = {i: f"class{i}" for i in range(80)}
COCO_NAMES[0] = "person"


def fused_yolo(scale: str = "n", num_classes: int = 80, seed: int = 0) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(unfused model in eval mode, its fused copy): random weights and random BatchNorm statistics."""
    from ldfsam.model.config import PromptGeneratorConfig
    from ldfsam.model.prompt_generator import build_detection_model

    torch.manual_seed(seed)
    model = build_detection_model(PromptGeneratorConfig(scale=scale, num_classes=num_classes))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.bias.requires_grad:
                # Distinct biases (Detect.bias_init makes them equal, and the exporter would merge equal tensors).
                m.bias.add_(torch.empty_like(m.bias).uniform_(-0.1, 0.1))
    model.eval()
    return model, copy.deepcopy(model).fuse(verbose=False).eval()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor(name: str, array: np.ndarray) -> bytes:
    dims = b"".join(_varint(1 << 3) + _varint(int(d)) for d in array.shape)
    return (dims + _varint(2 << 3) + _varint(1) + _field(8, name.encode())
            + _field(9, np.ascontiguousarray(array, dtype="<f4").tobytes()))


def onnx_bytes(fused: torch.nn.Module, names: Dict[int, str] = None, extra: Dict[str, np.ndarray] = None,
               drop: Tuple[str, ...] = ()) -> bytes:
    """An ONNX model holding the fused network's tensors as initializers (Ultralytics' names) and its metadata."""
    tensors = {k: v.detach().numpy() for k, v in fused.state_dict().items() if v.is_floating_point()}
    tensors.update(extra or {})
    graph = b"".join(_field(5, _tensor(k, v)) for k, v in tensors.items() if k not in drop)
    meta = {"description": "Ultralytics YOLOv8n model trained on coco.yaml", "author": "Ultralytics",
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "version": "8.4.5", "task": "detect",
            "imgsz": "[640, 640]", "names": repr(names if names is not None else COCO_NAMES)}
    props = b"".join(_field(14, _field(1, k.encode()) + _field(2, v.encode())) for k, v in meta.items())
    return _varint(1 << 3) + _varint(8) + _field(7, graph) + props


def export_onnx(fused: torch.nn.Module, path: Path, imgsz: int = 64) -> Path:
    """The exporter's path: Detect in export mode, ``torch.onnx.export`` (TorchScript exporter), opset 13."""
    from ultralytics.nn.modules import Detect

    model = copy.deepcopy(fused)
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format = True, "onnx"
    torch.onnx.export(model, torch.zeros(1, 3, imgsz, imgsz), str(path), opset_version=13, input_names=["images"],
                      output_names=["output0"], dynamo=False)
    return path


def wheel_bytes(tmp_path: Path, filename: str, member: str, content: bytes) -> bytes:
    """A wheel (zip) holding ``member`` = content."""
    path = tmp_path / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(member.split("/")[0] + "/__init__.py", "")
        z.writestr(member, content)
    return path.read_bytes()


def site_registry(tmp_path: Path, monkeypatch, name: str, content: bytes = None, **package) -> dict:
    """A site registry (LDFSAM_MODEL_REGISTRY) whose entry ``name`` overrides the shipped one, vouching for
    ``content`` (SHA256, size) where given; returns the entry."""
    from ldfsam.models.registry import REGISTRY_FILE

    entry = next(e for e in json.loads(REGISTRY_FILE.read_text())["models"] if e["name"] == name)
    entry["package"] = {**entry["package"], **package}
    if content is not None:
        entry["sha256"], entry["size"] = hashlib.sha256(content).hexdigest(), len(content)
    path = tmp_path / f"registry-{name}.json"
    path.write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("LDFSAM_MODEL_REGISTRY", str(path))
    return entry


def fake_package(tmp_path: Path, monkeypatch, name: str, content: bytes) -> None:
    """A real importable package whose ``models/yolov8n.onnx`` is ``content`` (never to be imported), and the
    registry's yolov8n-coco entry pointing at it and vouching for it."""
    root = tmp_path / "site"
    (root / name / "models").mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    (root / name / "models" / "yolov8n.onnx").write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    site_registry(tmp_path, monkeypatch, "yolov8n-coco", content, resource=f"{name}.models/yolov8n.onnx")
