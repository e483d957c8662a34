"""Shared helpers for the model tests: tiny LDFSAM networks of the ``small`` preset."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _state(mode: str, classes: tuple):
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    torch.manual_seed(0)
    cfg = model_config("small", prompt_mode=mode, class_names=list(classes))
    model = build_model(cfg)
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}


def small_model(mode: str = "dense+sparse", classes=("tooth",)):
    """A fresh small-preset model (same random weights each call for the same mode and classes)."""
    import copy

    from ldfsam.model.build import build_model

    cfg, state = _state(mode, tuple(classes))
    model = build_model(copy.deepcopy(cfg))
    model.load_state_dict(state)
    return model


def inputs(batch: int, sam: int = 256, yolo: int = 256, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, sam, sam, generator=g), torch.rand(batch, 3, yolo, yolo, generator=g)


def random_tiny_vit(seed: int = 0):
    """LiteMedSAM's TinyViT layout at 256 with random weights and BatchNorm statistics (eval mode)."""
    from ldfsam.model.tiny_vit import TinyViT

    torch.manual_seed(seed)
    teacher = TinyViT(image_size=256).eval()
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return teacher
