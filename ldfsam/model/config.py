"""Model configuration: the LDFSAM network as typed dataclasses whose defaults are the paper's (sections 3, 4.2).

Saved inside every checkpoint, so a model file always says which network it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple

PromptMode = Literal["box", "zero-shot", "none", "dense", "sparse", "dense+sparse", "auto"]
SamPreset = Literal["vit_b", "vit_l", "vit_h", "small", "lite"]
BOX_MODES = ("box", "zero-shot")
EncoderKind = Literal["vit", "tiny_vit"]
PixelNorm = Literal["imagenet", "none"]


@dataclass
class TinyViTConfig:
    """LiteMedSAM's TinyViT encoder (MedSAM distilled into TinyViT-5M): four stages at 1/1, 1/2, 1/4, 1/4 of the
    patch grid (itself 1/1 of the input: no stride in the stem), then SAM's neck to ``prompt_embed_dim``. The
    embedding grid is ``image_size / 4`` (64×64 for a 256 input)."""

    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3


YoloScale = Literal["n", "s", "m", "l", "x"]


@dataclass
class SamConfig:
    """SAM image encoder, prompt encoder and mask decoder (SAM-Med2D style: 256 input, adapters).

    ``encoder`` "vit" is SAM's ViT (the paper's); "tiny_vit" is LiteMedSAM's TinyViT (preset ``lite``), whose
    dimensions are in ``tiny_vit`` and which has no adapters (it stays wholly frozen, so its embeddings can be
    cached during Phase 2).
    """

    preset: SamPreset = "vit_b"
    encoder: EncoderKind = "vit"
    image_size: int = 256
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    adapters: bool = True
    adapter_mlp_ratio: float = 0.25
    mlp_ratio: float = 4.0
    # SAM's mask decoder (two-way transformer); the official decoder is 2 blocks, 8 heads, MLP width 2048.
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    # SAM's three further mask tokens and its IoU head (multimask outputs, for interactive prompts); 0: none.
    decoder_multimask_outputs: int = 0
    # SAM's point embeddings and its mask-prompt encoder (width of its downscaling convs; 0: none), for
    # interactive prompts. The automatic (feature / box prompted) path never uses them.
    point_prompts: bool = False
    mask_in_chans: int = 0
    # The image encoder the decoder was trained on, so the one it segments with unless told otherwise: "full" (its
    # own) or "half" (the lite family's distilled half-resolution student, ldfsam/infer/encoder_choice.py).
    trained_encoder: Literal["full", "half"] = "full"
    # Official SAM checkpoint the encoder was initialised from (provenance only; None for random init).
    init_checkpoint: Optional[str] = None
    # SAM normalises with ImageNet's mean/std; LiteMedSAM takes the [0, 1] image as it is.
    pixel_norm: PixelNorm = "imagenet"
    tiny_vit: Optional[TinyViTConfig] = None

    @property
    def grid(self) -> int:
        """Side of the image embedding grid: input / 16 for the ViT, input / 4 for TinyViT."""
        return self.image_size // (4 if self.encoder == "tiny_vit" else self.patch_size)


@dataclass
class PromptGeneratorConfig:
    """The YOLOv8 detection model whose P3/P4/P5 features become the prompts."""

    scale: YoloScale = "n"
    image_size: int = 640
    num_classes: int = 1
    # Phase 1 student weights the generator was loaded from (provenance only).
    init_weights: Optional[str] = None


@dataclass
class FeaturePromptConfig:
    """Phi_mix, the Dense Feature Prompt head and the Sparse Feature Prompt head (section 3.2)."""

    # The paper gives no head widths, only the prompt branch's size: ~3.3 M parameters and ~9.4 GFLOPs at 640
    # (section 4.5). YOLOv8n alone is 3.0 M / 8.1 GFLOPs, so the heads are light: Φmix width 64 and a 128-wide
    # sparse MLP give 0.35 M / 1.3 GFLOPs (docs/model.md); widths 256/512 would make them 2.0 M / 11 GFLOPs.
    mix_channels: int = 64
    num_sparse_tokens: int = 4
    sparse_hidden: int = 128
    alpha_init: float = 0.0
    # "group": the dense head ends in a one-group GroupNorm, so P_dense has unit RMS and α is its strength against
    # the image embedding (feature_prompts.py). "none" (the paper's bare conv) is what model files written before
    # the option hold; ``model_config`` (every preset, hence new runs) chooses "group": docs/training.md.
    dense_norm: Literal["none", "group"] = "none"


@dataclass
class SaliencyConfig:
    """SPD's saliency head on the image embedding (``model/saliency.py``): a per-pixel tooth likelihood that
    prompted segmentation uses to check clicks and carry prompts across slices. Off in models trained without it
    (and in every model file written before it existed)."""

    enabled: bool = False
    hidden: int = 32
    # The map is bimodal (SPD, Fig. 9): pixels above this are "tooth" for prompt validation and CPD.
    threshold: float = 0.5


@dataclass
class ModelConfig:
    """The whole network: prompt generator + feature prompt encoder + SAM."""

    sam: SamConfig = field(default_factory=SamConfig)
    prompt_generator: PromptGeneratorConfig = field(default_factory=PromptGeneratorConfig)
    feature_prompts: FeaturePromptConfig = field(default_factory=FeaturePromptConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    prompt_mode: PromptMode = "dense+sparse"
    # One output mask channel per class; binary "tooth" by default.
    class_names: List[str] = field(default_factory=lambda: ["tooth"])
    # Box mode: the most detected boxes used as SAM box prompts per image, and their confidence threshold.
    max_boxes: int = 32
    box_conf: float = 0.25
    # "auto" (model/auto_prompt.py): an image whose detector keeps exactly one box scoring at least this is segmented
    # by the box branch from its boxes, every other image by the feature prompts.
    auto_box_score: float = 0.4

    @property
    def uses_boxes(self) -> bool:
        """Box prompts from the prompt generator's detections ("box", or "zero-shot": the pretrained decoder
        unchanged) rather than feature prompts."""
        return self.prompt_mode in BOX_MODES

    @property
    def uses_feature_prompts(self) -> bool:
        """Dense and/or sparse feature prompts from the YOLO features; "none" (the decoder fine-tuned with no
        prompt at all: the ablation that separates the prompt's gain from the fine-tuning's) has neither."""
        return self.prompt_mode not in BOX_MODES + ("none",)
