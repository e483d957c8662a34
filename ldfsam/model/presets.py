"""Named model sizes: the official SAM encoders (vit_b is the paper's) and ``small`` for CPU tests and demos."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from ..errors import ConfigError
from .config import ModelConfig, PromptGeneratorConfig, SamConfig, TinyViTConfig

# Encoder dimensions of the official SAM checkpoints (sam_vit_b/l/h); decoder and prompt encoder are shared.
SAM_PRESETS: Dict[str, Dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14),
    # Small enough for a whole CBCT volume on two CPU cores: 4 blocks of width 192, 8×8 windows (the 16×16 grid
    # splits into four windows without padding), a narrower decoder MLP.
    "small": dict(embed_dim=192, depth=4, num_heads=3, global_attn_indexes=(1, 3), window_size=8,
                  decoder_mlp_dim=512),
    # LiteMedSAM (MedSAM distilled into TinyViT, pretrained on ~1.5 M medical image-mask pairs): the encoder stays
    # wholly frozen (no adapters, so its embeddings can be cached in Phase 2) and takes [0, 1] images as they are.
    # Its prompt encoder and decoder are kept whole (points, mask prompts, multimask tokens and IoU head), as
    # LiteMedSAM has them, for interactive prompts.
    "lite": dict(encoder="tiny_vit", pixel_norm="none", adapters=False, init_checkpoint="litemedsam",
                 decoder_multimask_outputs=3, point_prompts=True, mask_in_chans=16),
}

# Official presets must keep the official encoder dimensions, or the SAM checkpoints would not fit.
OFFICIAL = ("vit_b", "vit_l", "vit_h")
# The YOLO input of the lite preset: P3 (stride 8) of 512 is 64×64, the TinyViT embedding grid of a 256 input, so
# the dense feature prompt needs no resampling (and YOLO at 512 costs 0.64× its 640 cost).
LITE_YOLO_SIZE = 512
PRESET_NAMES = tuple(SAM_PRESETS)


def sam_config(preset: str, **overrides: Any) -> SamConfig:
    """A SamConfig for ``preset`` (vit_b, vit_l, vit_h, small, lite), with field overrides."""
    if preset not in SAM_PRESETS:
        raise ConfigError(f"unknown SAM preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    fields = dict(SAM_PRESETS[preset])
    if fields.get("encoder") == "tiny_vit":
        fields["tiny_vit"] = TinyViTConfig()
    return dataclasses.replace(SamConfig(preset=preset, **fields), **overrides)


def model_config(preset: str = "vit_b", **overrides: Any) -> ModelConfig:
    """The full ModelConfig of a preset. ``small`` also uses a 256-pixel YOLO input (P3 32×32, so the dense head's
    stride-2 conv lands exactly on the 16×16 SAM grid and the YOLO pass costs 6× less than at 640); ``lite`` a
    512-pixel one (P3 64×64 = its embedding grid). New models normalise the dense prompt (``dense_norm="group"``:
    α is then its strength against the image embedding; docs/training.md, "Why α stayed at 0")."""
    cfg = ModelConfig(sam=sam_config(preset))
    cfg.feature_prompts.dense_norm = "group"
    if preset == "small":
        cfg.prompt_generator = PromptGeneratorConfig(scale="n", image_size=256)
    if preset == "lite":
        cfg.prompt_generator = PromptGeneratorConfig(scale="n", image_size=LITE_YOLO_SIZE)
    return dataclasses.replace(cfg, **overrides)
