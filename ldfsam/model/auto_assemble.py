"""Joining a trained ``dense+sparse`` model and a trained ``box`` model into one ``auto`` model file
(``auto_prompt.py`` says what the mode does; ``ldfsam models combine`` is the command)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Union

import torch

from ..errors import CheckpointError

# The box model's parts that become the auto model's box branch.
BRANCH_PARTS = ("prompt_encoder.", "mask_decoder.")


def _same_tensors(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], prefix: str) -> bool:
    ka = sorted(k for k in a if k.startswith(prefix))
    kb = sorted(k for k in b if k.startswith(prefix))
    return ka == kb and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in ka)


def assemble(feature_model: Union[str, Path], box_model: Union[str, Path], out: Union[str, Path],
             box_score: float = 0.4) -> Path:
    """Write the ``auto`` model made of a ``dense+sparse`` model and a ``box`` model trained on the same frozen
    image encoder and prompt generator (anything else is a CheckpointError naming the file); the box branch keeps
    the box model's detection confidence and box count. Returns ``out``."""
    from ..checkpoint import load_checkpoint, load_strict, save_checkpoint
    from ..config import to_dict
    from .build import build_model

    feature_model, box_model, out = Path(feature_model), Path(box_model), Path(out)
    if not 0.0 < box_score < 1.0:
        raise ValueError(f"box_score must lie between 0 and 1, not {box_score}")
    f, b = load_checkpoint(feature_model), load_checkpoint(box_model)
    if f.model_cfg.prompt_mode != "dense+sparse":
        raise CheckpointError(f"is a {f.model_cfg.prompt_mode!r} model; the feature branch of an auto model is a "
                              "'dense+sparse' one", feature_model)
    if b.model_cfg.prompt_mode != "box":
        raise CheckpointError(f"is a {b.model_cfg.prompt_mode!r} model; the box branch of an auto model is a 'box' "
                              "one", box_model)
    fs, bs = f.model.state_dict(), b.model.state_dict()
    for what, prefix in (("image encoder", "image_encoder."), ("prompt generator", "prompt_generator.")):
        if not _same_tensors(fs, bs, prefix):
            raise CheckpointError(f"has another {what} than {feature_model.name}: both branches must share it",
                                  box_model)
    if to_dict(f.model_cfg.sam) != to_dict(b.model_cfg.sam) or to_dict(f.preprocess) != to_dict(b.preprocess):
        raise CheckpointError(f"differs from {feature_model.name} in its SAM or preprocessing configuration",
                              box_model)
    cfg = copy.deepcopy(f.model_cfg)
    cfg.prompt_mode = "auto"
    cfg.box_conf, cfg.max_boxes, cfg.auto_box_score = b.model_cfg.box_conf, b.model_cfg.max_boxes, float(box_score)
    tensors = dict(fs)
    tensors.update({f"box_branch.{k}": v for k, v in bs.items() if k.startswith(BRANCH_PARTS)})
    model = build_model(cfg, load_prompt_generator=False, shapes_only=True)
    load_strict(model, tensors, box_model, assign=True, what="an auto model")
    save_checkpoint(out, model, cfg, f.preprocess,
                    training={"assembled_from": {"feature_model": str(feature_model), "box_model": str(box_model),
                                                 "feature_training": f.meta.get("training", {}),
                                                 "box_training": b.meta.get("training", {})}})
    return out
