"""Phase 1 model files: the YOLOv8 yaml of a scale, trained teachers, and local weights to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..errors import CheckpointError, InputError
from ..model.config import PromptGeneratorConfig
from ..progress import Progress


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


def _pretrained_name(source: Union[str, Path]) -> Optional[str]:
    from ..model.yolo_weights import KIND
    from ..models.registry import load_registry

    entry = load_registry().get(str(source))
    return entry.name if entry is not None and entry.kind == KIND and not Path(source).exists() else None


def init_path(source: Union[str, Path]) -> Path:
    """The file of an init source: a registry name of pretrained weights (converted on first use), or a path."""
    name = _pretrained_name(source)
    if name is None:
        return Path(source)
    from ..model.yolo_weights import cache_path, check_cached, import_pretrained

    path = cache_path(name)
    if path.exists():
        check_cached(name, path)
        return path
    return import_pretrained(name)


def has_folded_bn(source: Union[str, Path]) -> bool:
    """Whether the init weights come from an export whose BatchNorm was folded into the convolutions."""
    path = init_path(source)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from ..checkpoint import read_document

    record = ((read_document(path).get("training") or {}).get("pretrained") or {})
    return bool(record.get("fused_bn"))


def resolve_init(role: str, init: Optional[str], scale: str, progress: Progress) -> str:
    """What a stage starts from, said to the user: "auto" becomes the pretrained weights' registry name where they
    are installed, else "scratch"; anything else is kept."""
    from ..model.yolo_weights import LICENSE, find_pretrained

    init = init or "scratch"
    if init != "auto":
        if init != "scratch":
            progress.log(role, f"{role}: YOLOv8{scale} starts from {init}")
        return init
    path, why = find_pretrained(scale)
    if path is None:
        progress.log(role, f"{role}: YOLOv8{scale} starts from random weights (scratch): {why}", level="warning")
        return "scratch"
    name = _pretrained_name(path.stem) or path.stem
    progress.log(role, f"{role}: YOLOv8{scale} starts from the pretrained weights {name}, licensed {LICENSE}")
    return name


def resolve_teacher_scale(scale: str, init: Optional[str]) -> str:
    """``teacher_scale`` "auto": the largest scale with pretrained weights installed (with init "auto"), else "x"."""
    if scale != "auto":
        return scale
    if init == "auto":
        from ..model.yolo_weights import PRETRAINED_BY_SCALE, find_pretrained

        for candidate in ("x", "l", "m", "s"):
            if candidate in PRETRAINED_BY_SCALE and find_pretrained(candidate)[0] is not None:
                return candidate
    return "x"


def transfer_weights(model: torch.nn.Module, source: torch.nn.Module) -> Tuple[int, int]:
    """Copy every tensor of ``source`` whose name and shape ``model`` has (the class branch of another class
    count keeps its fresh initialisation); returns (tensors copied, tensors of ``model``). Unlike ultralytics'
    ``DetectionModel.load`` this never widens the class branch, so the architecture stays ``yolov8{scale}.yaml``'s
    and the product loads as a prompt generator of the data set's class count."""
    own = model.state_dict()
    take = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(take, strict=False)
    return len(take), len(own)


def load_init_source(path: Union[str, Path]) -> Any:
    """Weights to initialise a model from, as a DetectionModel (matching layers transfer, see transfer_weights).

    A registry name of pretrained weights (``yolov8n-coco``), ``.safetensors``: a prompt generator file. ``.pt``:
    an ultralytics checkpoint (e.g. COCO-pretrained), read by ``ldfsam.model.prompt_generator.load_ultralytics_pt``
    (weights-only, never a free pickle).
    """
    path = init_path(path)
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
