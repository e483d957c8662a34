"""Resumable training state as tensors + JSON (no pickle): model, optimiser, position, RNGs, best score.

Written with the core's ``save_state`` (atomic safetensors) every epoch and every N steps, so a killed run
loses at most the steps since the last save and resumes from exactly that point.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

STATE_FORMAT = "ldfsam-finetune-state"
STATE_VERSION = 1


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_flat(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], doc: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in doc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in doc["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_to_flat() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    doc = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
           "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, doc


def _rng_from_flat(tensors: Dict[str, torch.Tensor], doc: Dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, cached = doc["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = doc["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        progress: Dict[str, Any], scaler=None) -> None:
    """Atomically write everything needed to continue: all model tensors, optimiser, RNGs, ``progress``
    (epoch, step_in_epoch, global_step, best score, ...)."""
    from ..checkpoint import save_state

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, opt_doc = _optimizer_to_flat(optimizer)
    rng_t, rng_doc = _rng_to_flat()
    tensors.update(opt_t)
    tensors.update(rng_t)
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "progress": progress, "optimizer": opt_doc,
           "rng": rng_doc, "scaler": scaler.state_dict() if scaler is not None else None}
    save_state(path, tensors, doc)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler=None) -> Dict[str, Any]:
    """Restore model, optimiser, RNGs (and scaler) from ``path``; returns the saved ``progress``."""
    from ..checkpoint import load_state
    from ..errors import CheckpointError

    tensors, doc = load_state(path)
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CheckpointError("is not an ldfsam fine-tuning state file", path)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"does not match the model (missing {list(missing)[:3]}, unexpected "
                              f"{list(unexpected)[:3]})", path)
    _optimizer_from_flat(optimizer, tensors, doc["optimizer"])
    _rng_from_flat(tensors, doc["rng"])
    if scaler is not None and doc.get("scaler"):
        scaler.load_state_dict(doc["scaler"])
    return doc["progress"]
