"""Named model sizes: the official SAM encoders (vit_b is the paper's) and ``small`` for CPU tests and demos."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from ..errors import ConfigError
from .config import ModelConfig, PromptGeneratorConfig, SamConfig

# Encoder dimensions of the official SAM checkpoints (sam_vit_b/l/h); decoder and prompt encoder are shared.
SAM_PRESETS: Dict[str, Dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14),
    # Small enough for a whole CBCT volume on two CPU cores: 4 blocks of width 192, 8×8 windows (the 16×16 grid
    # splits into four windows without padding), a narrower decoder MLP.
    "small": dict(embed_dim=192, depth=4, num_heads=3, global_attn_indexes=(1, 3), window_size=8,
                  decoder_mlp_dim=512),
}

# Official presets must keep the official encoder dimensions, or the SAM checkpoints would not fit.
OFFICIAL = ("vit_b", "vit_l", "vit_h")
PRESET_NAMES = tuple(SAM_PRESETS)


def sam_config(preset: str, **overrides: Any) -> SamConfig:
    """A SamConfig for ``preset`` (vit_b, vit_l, vit_h, small), with field overrides."""
    if preset not in SAM_PRESETS:
        raise ConfigError(f"unknown SAM preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    return dataclasses.replace(SamConfig(preset=preset, **SAM_PRESETS[preset]), **overrides)


def model_config(preset: str = "vit_b", **overrides: Any) -> ModelConfig:
    """The full ModelConfig of a preset. ``small`` also uses a 256-pixel YOLO input (P3 32×32, so the dense head's
    stride-2 conv lands exactly on the 16×16 SAM grid and the YOLO pass costs 6× less than at 640)."""
    cfg = ModelConfig(sam=sam_config(preset))
    if preset == "small":
        cfg.prompt_generator = PromptGeneratorConfig(scale="n", image_size=256)
    return dataclasses.replace(cfg, **overrides)
