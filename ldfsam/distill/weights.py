"""Phase 1 model files: the YOLOv8 yaml of a scale, trained teachers, and local weights to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from ..errors import CheckpointError, InputError
from ..model.config import PromptGeneratorConfig


def yolo_yaml(scale: str) -> str:
    """The ultralytics model yaml of a YOLOv8 scale ("n", "s", "m", "l", "x")."""
    if scale not in ("n", "s", "m", "l", "x"):
        raise ValueError(f"YOLOv8 scale must be one of n, s, m, l, x, not {scale!r}")
    return f"yolov8{scale}.yaml"


def load_generator_file(path: Union[str, Path]) -> Tuple[torch.nn.Module, PromptGeneratorConfig, Dict[str, Any]]:
    """A DetectionModel rebuilt from a prompt generator file (ours, ``.safetensors``), with its config and meta."""
    from ..model.prompt_generator import build_detection_model, load_prompt_generator_weights

    path = Path(path)
    state, cfg, meta = load_prompt_generator_weights(path)
    model = build_detection_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"does not fit YOLOv8{cfg.scale} with {cfg.num_classes} classes "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors)", path)
    return model.float(), cfg, meta


def load_init_source(path: Union[str, Path]) -> Any:
    """Weights to initialise a model from, in a form ``DetectionModel.load`` accepts (matching layers transfer).

    ``.safetensors``: a prompt generator file. ``.pt``: an ultralytics checkpoint (e.g. COCO-pretrained), read by
    ``ldfsam.model.prompt_generator.load_ultralytics_pt`` (weights-only, never a free pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such weights file", path)
    if path.suffix == ".safetensors":
        return load_generator_file(path)[0]
    if path.suffix == ".pt":
        from ..model.prompt_generator import build_detection_model, load_ultralytics_pt

        state, cfg = load_ultralytics_pt(path)
        model = build_detection_model(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"does not fit YOLOv8{cfg.scale} with {cfg.num_classes} classes: "
                                  f"{str(e).splitlines()[0]}", path) from None
        return model.float()
    raise InputError("weights must be a .safetensors prompt generator file or an ultralytics .pt checkpoint", path)
