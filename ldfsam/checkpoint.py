"""LDFSAM model files and the networks they hold: ``save_checkpoint`` and ``load_checkpoint``.

A model file (``.safetensors``, the format of ``ldfsam.file_format``) holds the model's state dict and, under the
header metadata key ``"ldfsam"``, a JSON document: format name and version, the full ModelConfig, the
PreprocessConfig, the class names, training provenance and the package version. Every file is written atomically.
Reading checks the file before trusting it, so a foreign, truncated or corrupt file, or a model of another
architecture, is a CheckpointError that names the file and the problem.

This module sits above both the format and the networks (``model.build``, ``model.pretrained``). The format's
names (``save_state``, ``load_state``, ``read_document``, ``load_strict``, ...) are re-exported here for code
that reads or writes files without building a network.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from . import __version__
from .config import to_dict
from .data.config import PreprocessConfig
from .errors import CheckpointError, ConfigError
from .file_format import (
    META_KEY,
    MODEL_FORMAT,
    MODEL_VERSION,
    PathLike,
    load_state,
    load_strict,
    read_checkpoint_configs,
    read_checkpoint_meta,
    read_document,
    read_header,
    read_tensors,
    save_state,
    state_mismatch,
    tensors_digest,
)
from .heap import release_free_memory
from .model.build import build_model
from .model.config import ModelConfig
from .model.pretrained import base_tensors, unchanged_base

__all__ = ["LoadedCheckpoint", "save_checkpoint", "load_checkpoint",
           # the format's (ldfsam.file_format), re-exported
           "META_KEY", "MODEL_FORMAT", "MODEL_VERSION", "PathLike", "load_state", "load_strict",
           "read_checkpoint_configs", "read_checkpoint_meta", "read_document", "read_header", "read_tensors",
           "save_state", "state_mismatch", "tensors_digest"]


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    model_cfg: ModelConfig
    preprocess: PreprocessConfig
    meta: Dict[str, Any]


def save_checkpoint(path: PathLike, model: torch.nn.Module, model_cfg: ModelConfig, preprocess: PreprocessConfig,
                    training: Optional[Dict[str, Any]] = None) -> None:
    """Write an LDFSAM model file (weights, configurations, provenance) atomically.

    A model whose image encoder is still exactly its published pretrained one (the lite preset's frozen
    LiteMedSAM encoder) does not store it: the document's ``base`` names the weights and their file's SHA256, and
    :func:`load_checkpoint` takes those tensors from the verified local copy.
    """
    if list(preprocess.class_names) != list(model_cfg.class_names):
        raise ConfigError(f"class names differ between the model {model_cfg.class_names} and the preprocessing "
                          f"{preprocess.class_names}")
    document = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(model_cfg.class_names),
        "model": to_dict(model_cfg),
        "preprocess": to_dict(preprocess),
        "training": training or {},
    }
    model = getattr(model, "module", model)  # DistributedDataParallel: save the network, not the wrapper
    tensors = dict(model.state_dict())
    base = unchanged_base(model_cfg, tensors)
    if base is not None:
        document["base"] = base
        tensors = {k: v for k, v in tensors.items() if not k.startswith(base["prefix"])}
    save_state(path, tensors, document)


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    encoder_dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """Read an LDFSAM model file and rebuild the model (eval mode, on ``device``).

    Floating-point weights come back as float32 whatever their stored precision (the bundled demo model is
    stored in float16), except the image encoder's, which take ``encoder_dtype``: inference passes bfloat16, and
    converting tensor by tensor while reading never holds a float32 copy of a 270 M-parameter encoder beside it.
    """
    path = Path(path)
    model_cfg, preprocess, meta = read_checkpoint_configs(path)
    tensors = read_tensors(path, lambda key: encoder_dtype if key.startswith("image_encoder.") else torch.float32)
    if meta.get("base") is not None:
        for key, value in base_tensors(meta["base"], path).items():
            # Integer buffers (BatchNorm's num_batches_tracked) keep their dtype, as read_tensors keeps them: as
            # floats they changed the encoder's fingerprint, and evaluation never met Phase 2's cached embeddings.
            tensors.setdefault(key, value.to(encoder_dtype if key.startswith("image_encoder.") else torch.float32)
                               if value.is_floating_point() else value)
    try:
        # Shapes only: every weight comes from the file, so random initialisation (seconds for vit_b) is skipped.
        model = build_model(model_cfg, load_prompt_generator=False, shapes_only=True)
    except ConfigError as e:
        raise CheckpointError(f"describes a model that cannot be built: {e}", path) from None
    load_strict(model, tensors, path, assign=True,
                what=f"the LDFSAM {model_cfg.sam.preset} network its configuration describes")
    del tensors
    release_free_memory()
    return LoadedCheckpoint(model.to(device).eval(), model_cfg, preprocess, meta)
