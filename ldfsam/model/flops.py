"""Floating-point operations of one image through each part of an LDFSAM model (``ldfsam info``).

Counted by ``torch.utils.flop_counter`` on the operators the part really runs (matrix products and convolutions,
2 FLOPs per multiply-add, as ultralytics and the paper count; element-wise work is not counted). Parts built on
the meta device (``build_model(..., shapes_only=True)``) are counted without computing anything.
"""

from __future__ import annotations

import copy
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode


def _count(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def gflops_per_part(model: torch.nn.Module) -> Dict[str, float]:
    """GFLOPs of one image (batch 1) per part: image_encoder, prompt_generator, feature_prompts and mask_decoder
    (with SAM's prompt encoder; in box modes for one box)."""
    cfg = model.cfg
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    s, y = cfg.sam.image_size, cfg.prompt_generator.image_size
    enc_device = next(model.image_encoder.parameters()).device
    if enc_device.type == "meta":
        # A shapes-only build keeps a few small buffers on the CPU; everything but the prompt generator (always
        # real) moves to meta so that nothing is computed.
        for name, child in model.named_children():
            if name != "prompt_generator":
                child.to("meta")
        model.pixel_mean, model.pixel_std = model.pixel_mean.to("meta"), model.pixel_std.to("meta")
    gen_device = next(model.prompt_generator.parameters()).device
    out: Dict[str, float] = {}
    out["image_encoder"] = _count(lambda: model.image_encoder(torch.zeros(1, 3, s, s, device=enc_device)))
    features = []
    out["prompt_generator"] = _count(lambda: features.extend(
        model.prompt_generator.features(torch.zeros(1, 3, y, y, device=gen_device))))
    grid = cfg.sam.grid
    embedding = torch.zeros(1, cfg.sam.prompt_embed_dim, grid, grid, device=enc_device)
    feats = [f.to(enc_device) for f in features]
    if model.feature_prompts is not None:
        out["feature_prompts"] = _count(lambda: model.feature_prompts(feats))
        # auto: its feature path (an image it boxes costs what box mode's decoder does instead).
        decode = model._decode_features if cfg.prompt_mode == "auto" else model.decode
        out["mask_decoder"] = _count(lambda: decode(embedding, feats)) - out["feature_prompts"]
    else:
        out["feature_prompts"] = 0.0
        box = [torch.tensor([[0.0, 0.0, y / 2, y / 2, 1.0, 0.0]], device=enc_device)]
        out["mask_decoder"] = _count(lambda: model.decode(embedding, feats, boxes=box))
    return out
