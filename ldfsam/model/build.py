"""``build_model(cfg)``: an LDFSAM network from its ModelConfig (randomly initialised unless told otherwise)."""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

from torch import nn

from ..errors import CheckpointError, ConfigError
from .auto_prompt import BoxBranch
from .config import ModelConfig
from .feature_prompts import FeaturePromptEncoder
from .image_encoder import ImageEncoderViT
from .ldfsam import LDFSAM
from .mask_decoder import MaskDecoder
from .meta_init import meta_without_init
from .presets import OFFICIAL, SAM_PRESETS
from .prompt_encoder import PromptEncoder
from .prompt_generator import PromptGenerator, load_prompt_generator_weights
from .saliency import SaliencyHead
from .tiny_vit import TinyViT


def check_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for a configuration that cannot be built."""
    s = cfg.sam
    if s.preset in OFFICIAL + ("lite",):
        for key, value in SAM_PRESETS[s.preset].items():
            if key != "init_checkpoint" and getattr(s, key) != value:
                raise ConfigError(f"sam.{key}: preset {s.preset} has {value!r}, got {getattr(s, key)!r} "
                                  "(use preset 'small' for a custom encoder)")
    if s.encoder == "tiny_vit":
        _check_tiny_vit(s)
    elif s.image_size <= 0 or s.image_size % s.patch_size:
        raise ConfigError(f"sam.image_size: {s.image_size} is not a positive multiple of patch_size {s.patch_size}")
    if s.encoder == "vit" and s.embed_dim % s.num_heads:
        raise ConfigError(f"sam.num_heads: {s.num_heads} does not divide embed_dim {s.embed_dim}")
    if s.encoder == "vit" and any(not 0 <= i < s.depth for i in s.global_attn_indexes):
        raise ConfigError(f"sam.global_attn_indexes: {list(s.global_attn_indexes)} must lie in 0..{s.depth - 1}")
    if s.prompt_embed_dim % s.decoder_num_heads or s.prompt_embed_dim % 8:
        raise ConfigError(f"sam.prompt_embed_dim: {s.prompt_embed_dim} must be a multiple of 8 and of "
                          f"decoder_num_heads {s.decoder_num_heads}")
    if not cfg.class_names:
        raise ConfigError("class_names: at least one class is needed")
    if cfg.prompt_generator.image_size <= 0 or cfg.prompt_generator.image_size % 32:
        raise ConfigError(f"prompt_generator.image_size: {cfg.prompt_generator.image_size} is not a positive "
                          "multiple of 32 (YOLO's largest stride)")
    if cfg.feature_prompts.num_sparse_tokens < 1:
        raise ConfigError("feature_prompts.num_sparse_tokens: must be at least 1")
    if cfg.max_boxes < 1:
        raise ConfigError("max_boxes: must be at least 1")


def _check_tiny_vit(s) -> None:
    t = s.tiny_vit
    if t is None:
        raise ConfigError("sam.tiny_vit: the tiny_vit encoder needs its dimensions (use preset 'lite')")
    if s.adapters:
        raise ConfigError("sam.adapters: the tiny_vit encoder has no adapters (it stays wholly frozen)")
    # Three halvings inside TinyViT (1/1 -> 1/2 -> 1/4 of the grid), each needing an even side, and a grid that
    # is input / 4: the input must be a multiple of 16.
    if s.image_size <= 0 or s.image_size % 16:
        raise ConfigError(f"sam.image_size: {s.image_size} is not a positive multiple of 16 (tiny_vit)")
    n = len(t.embed_dims)
    if not (len(t.depths) == len(t.num_heads) == len(t.window_sizes) == n == 4):
        raise ConfigError("sam.tiny_vit: embed_dims, depths, num_heads and window_sizes need four stages each")
    for dim, heads in zip(t.embed_dims[1:], t.num_heads[1:]):
        if dim % heads:
            raise ConfigError(f"sam.tiny_vit.num_heads: {heads} does not divide the stage width {dim}")


def build_model(cfg: ModelConfig, load_prompt_generator: bool = True, shapes_only: bool = False) -> LDFSAM:
    """Build LDFSAM. With ``cfg.prompt_generator.init_weights`` set (and ``load_prompt_generator``), the Phase 1
    prompt-generator file is loaded into the YOLO part; SAM weights are loaded separately (``sam_weights.py``).

    ``shapes_only`` builds the SAM parts and prompt heads on the meta device (no memory, no initialisation): for
    counting parameters, or to be filled by ``load_state_dict(..., assign=True)`` (``load_checkpoint`` does so,
    skipping the random initialisation of weights it replaces anyway). It cannot run before that.
    """
    check_config(cfg)
    s = cfg.sam
    grid = s.grid
    generator = PromptGenerator(cfg.prompt_generator)  # on CPU always: ultralytics runs a forward pass to build it
    with meta_without_init() if shapes_only else contextlib.nullcontext():
        encoder, prompt_encoder, decoder, feature_prompts = _build_sam_parts(cfg, grid, generator)
    # Outside the meta context: LDFSAM's own (non-persistent) pixel statistics must be real tensors.
    model = LDFSAM(cfg, encoder, prompt_encoder, decoder, generator, feature_prompts)
    if cfg.saliency.enabled:
        with meta_without_init() if shapes_only else contextlib.nullcontext():
            model.saliency_head = SaliencyHead(s.prompt_embed_dim, cfg.saliency.hidden)
    if cfg.prompt_mode == "auto":  # the box branch (model/auto_prompt.py): a box model's prompt encoder and decoder
        with meta_without_init() if shapes_only else contextlib.nullcontext():
            model.box_branch = BoxBranch(*_prompt_encoder_and_decoder(cfg, grid))
    path = cfg.prompt_generator.init_weights
    if load_prompt_generator and path and not shapes_only:
        state, file_cfg, _ = load_prompt_generator_weights(path)
        if (file_cfg.scale, file_cfg.num_classes) != (cfg.prompt_generator.scale, cfg.prompt_generator.num_classes):
            want = cfg.prompt_generator
            raise CheckpointError(f"holds a yolov8{file_cfg.scale} with {file_cfg.num_classes} class(es), but the "
                                  f"model needs a yolov8{want.scale} with {want.num_classes}", path)
        generator.load_weights(state, path)
    return model


def _build_encoder(s) -> nn.Module:
    if s.encoder == "tiny_vit":
        t = s.tiny_vit
        return TinyViT(image_size=s.image_size, embed_dims=tuple(t.embed_dims), depths=tuple(t.depths),
                       num_heads=tuple(t.num_heads), window_sizes=tuple(t.window_sizes), mlp_ratio=t.mlp_ratio,
                       mbconv_expand_ratio=t.mbconv_expand_ratio, local_conv_size=t.local_conv_size,
                       out_chans=s.prompt_embed_dim)
    return ImageEncoderViT(
        image_size=s.image_size, patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
        num_heads=s.num_heads, mlp_ratio=s.mlp_ratio, out_chans=s.prompt_embed_dim, window_size=s.window_size,
        global_attn_indexes=tuple(s.global_attn_indexes), adapters=s.adapters, adapter_mlp_ratio=s.adapter_mlp_ratio,
    )


def _prompt_encoder_and_decoder(cfg: ModelConfig, grid: int) -> Tuple[PromptEncoder, MaskDecoder]:
    s = cfg.sam
    prompt_encoder = PromptEncoder(s.prompt_embed_dim, (grid, grid), (s.image_size, s.image_size),
                                   point_prompts=s.point_prompts, mask_in_chans=s.mask_in_chans)
    decoder = MaskDecoder(len(cfg.class_names), s.prompt_embed_dim, s.decoder_depth, s.decoder_num_heads,
                          s.decoder_mlp_dim, num_multimask_outputs=s.decoder_multimask_outputs)
    return prompt_encoder, decoder


def _build_sam_parts(cfg: ModelConfig, grid: int, generator: PromptGenerator) -> Tuple[
        nn.Module, PromptEncoder, MaskDecoder, Optional[FeaturePromptEncoder]]:
    s = cfg.sam
    encoder = _build_encoder(s)
    prompt_encoder, decoder = _prompt_encoder_and_decoder(cfg, grid)
    feature_prompts = None
    if cfg.uses_feature_prompts:
        fp = cfg.feature_prompts
        mode = "dense+sparse" if cfg.prompt_mode == "auto" else cfg.prompt_mode
        feature_prompts = FeaturePromptEncoder(
            generator.feature_channels, fp.mix_channels, s.prompt_embed_dim, (grid, grid),
            dense="dense" in mode, sparse="sparse" in mode,
            num_sparse_tokens=fp.num_sparse_tokens, sparse_hidden=fp.sparse_hidden, alpha_init=fp.alpha_init,
            yolo_size=cfg.prompt_generator.image_size, dense_norm=fp.dense_norm,
        )
    return encoder, prompt_encoder, decoder, feature_prompts
