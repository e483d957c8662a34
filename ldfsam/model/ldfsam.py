"""LDFSAM: SAM (adapters, 256 input) prompted by a frozen YOLOv8's features and/or detected boxes.

Prompt modes (rows of the paper's Table 1):

- ``box``: YOLO's detected boxes (top ``max_boxes`` above ``box_conf``) become SAM box prompts, one decoder row
  per box; the masks of an image's boxes are united by a maximum over their logits, and an image without boxes
  gets an all-background prediction (logit ``NO_OBJECT_LOGIT``). No feature prompts are built.
- ``zero-shot``: the same with the pretrained SAM (prompt encoder and decoder) left exactly as it is: nothing is
  trained in Phase 2.
- ``none``: no prompt at all: the decoder (and its "no mask" embedding) fine-tuned on the bare image embedding,
  the ablation that tells the prompts' gain from the fine-tuning's. No YOLO pass is made.
- ``dense``: Z_cond = Z_img + α·P_dense (α learnable, 0 at initialisation), no prompt tokens.
- ``sparse``: the K Sparse Feature Prompt tokens are the decoder's prompt tokens.
- ``dense+sparse`` (the paper's method): both.
- ``auto``: per image, the box branch (a box model's prompt encoder and decoder) from the detected boxes where the
  detector keeps exactly one box scoring at least ``auto_box_score``, else dense+sparse (``auto_prompt.py``).

Inputs are floats in [0, 1]; SAM's pixel normalisation happens inside. YOLO takes [0, 1] directly.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .feature_prompts import FeaturePromptEncoder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .prompt_generator import PromptGenerator

# Logit of "background everywhere" for images that have no detected box in box mode (sigmoid ~ 4e-44).
NO_OBJECT_LOGIT = -100.0
# SAM's ImageNet pixel statistics, for inputs scaled to [0, 1].
PIXEL_MEAN = (123.675 / 255.0, 116.28 / 255.0, 103.53 / 255.0)
PIXEL_STD = (58.395 / 255.0, 57.12 / 255.0, 57.375 / 255.0)

Features = Tuple[torch.Tensor, ...]


class LDFSAM(nn.Module):
    """The whole network. ``forward(sam_image B×3×S×S, yolo_image B×3×Y×Y) -> logits B×C×S×S``."""

    def __init__(self, cfg: ModelConfig, image_encoder: ImageEncoderViT, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, prompt_generator: PromptGenerator,
                 feature_prompts: Optional[FeaturePromptEncoder]) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.prompt_generator = prompt_generator
        self.feature_prompts = feature_prompts
        # SPD's saliency head (model/saliency.py), set by build_model when ``cfg.saliency.enabled``.
        self.saliency_head: Optional[nn.Module] = None
        # The ``auto`` mode's box branch (model/auto_prompt.py), set by build_model in that mode.
        self.box_branch: Optional[nn.Module] = None
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.prompt_generator.eval()

    @property
    def prompt_mode(self) -> str:
        return self.cfg.prompt_mode

    @property
    def num_classes(self) -> int:
        return len(self.cfg.class_names)

    @property
    def image_size(self) -> int:
        return self.cfg.sam.image_size

    def train(self, mode: bool = True) -> LDFSAM:
        """As nn.Module.train, but the prompt generator stays in eval mode: it is frozen, and its BatchNorm
        statistics must not drift while SAM is fine-tuned."""
        super().train(mode)
        self.prompt_generator.eval()
        return self

    def prompt_features(self, yolo_image: torch.Tensor) -> Optional[Features]:
        """YOLO image B×3×Y×Y in [0, 1] -> (P3, P4, P5) at strides 8/16/32; None in ``none`` mode (no prompt)."""
        if self.prompt_mode == "none":
            return None
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.prompt_generator.parameters())
        with torch.set_grad_enabled(needs_grad):
            return self.prompt_generator.features(yolo_image)

    @torch.no_grad()
    def detect(self, yolo_image: torch.Tensor) -> List[torch.Tensor]:
        """YOLO image B×3×Y×Y -> per image N_i×6 (x0, y0, x1, y1, conf, cls) in YOLO pixel coordinates."""
        return self.prompt_generator.detect(yolo_image, conf=self.cfg.box_conf, max_det=self.cfg.max_boxes)

    def encode_image(self, sam_image: torch.Tensor) -> torch.Tensor:
        """SAM image B×3×S×S in [0, 1] -> image embedding B×256×G×G (G = S/16 for the ViT, S/4 for TinyViT)."""
        if self.cfg.sam.pixel_norm == "none":
            return self.image_encoder(sam_image)
        return self.image_encoder((sam_image - self.pixel_mean) / self.pixel_std)

    def decode(self, image_embeddings: torch.Tensor, features: Optional[Sequence[torch.Tensor]],
               boxes: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """Image embeddings B×256×G×G plus (P3, P4, P5) -> mask logits B×C×S×S.

        In box mode ``boxes`` (as returned by :meth:`detect`) may be given; otherwise they are detected from the
        features (so passing the features of the same images is enough).
        """
        if self.cfg.uses_boxes:
            return self._decode_boxes(image_embeddings, features, boxes)
        if self.prompt_mode == "auto":
            return self._decode_auto(image_embeddings, features)
        return self._decode_features(image_embeddings, features)

    def _decode_features(self, image_embeddings: torch.Tensor, features: Optional[Sequence[torch.Tensor]]
                         ) -> torch.Tensor:
        b = image_embeddings.shape[0]
        if self.feature_prompts is None:  # "none": no prompt, whatever features were passed
            dense, tokens = None, image_embeddings.new_zeros((b, 0, self.cfg.sam.prompt_embed_dim))
        elif features is None:
            raise ValueError(f"prompt mode {self.prompt_mode!r} needs the YOLO features")
        else:
            dense, tokens = self.feature_prompts(features)
        if dense is not None:
            image_embeddings = image_embeddings + dense.to(image_embeddings.dtype)
        _, no_mask = self.prompt_encoder(b)
        logits = self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), tokens, no_mask)
        return self._upscale(logits)

    def _decode_auto(self, image_embeddings: torch.Tensor, features: Optional[Sequence[torch.Tensor]]
                     ) -> torch.Tensor:
        from .auto_prompt import box_chosen, branch_boxes

        if features is None:
            raise ValueError("prompt mode 'auto' needs the YOLO features")
        logits = self._decode_features(image_embeddings, features)
        cfg = self.cfg
        conf = min(cfg.box_conf, cfg.auto_box_score)
        with torch.no_grad():
            detections = self.prompt_generator.detect_from_features(tuple(f.float() for f in features), conf=conf,
                                                                    max_det=max(cfg.max_boxes, 2))
        chosen = torch.nonzero(box_chosen(detections, cfg.auto_box_score)).flatten().tolist()
        if chosen:
            idx = torch.tensor(chosen, device=image_embeddings.device)
            boxes = branch_boxes([detections[i] for i in chosen], conf, cfg.max_boxes)
            boxed = self._decode_boxes(image_embeddings.index_select(0, idx),
                                       [f.index_select(0, idx) for f in features], boxes, self.box_branch)
            logits = logits.index_copy(0, idx, boxed.to(logits.dtype))
        return logits

    def _decode_boxes(self, image_embeddings: torch.Tensor, features: Optional[Sequence[torch.Tensor]],
                      boxes: Optional[List[torch.Tensor]], branch: Optional[nn.Module] = None) -> torch.Tensor:
        """Box prompts through SAM's prompt encoder and decoder, or through ``branch``'s (``auto``)."""
        prompt_encoder, mask_decoder = ((self.prompt_encoder, self.mask_decoder) if branch is None
                                        else (branch.prompt_encoder, branch.mask_decoder))
        b = image_embeddings.shape[0]
        if boxes is None:
            if features is None:
                raise ValueError("box mode needs either the detected boxes or the YOLO features")
            with torch.no_grad():
                boxes = self.prompt_generator.detect_from_features(tuple(features), conf=self.cfg.box_conf,
                                                                   max_det=self.cfg.max_boxes)
        if len(boxes) != b:
            raise ValueError(f"got boxes for {len(boxes)} images but embeddings for {b}")
        yolo_size = self.cfg.prompt_generator.image_size
        if features is not None:
            yolo_size = int(features[0].shape[-1]) * 8  # P3 is stride 8
        scale = self.image_size / yolo_size
        per_image = [bx[: self.cfg.max_boxes, :4].to(image_embeddings.device).float() * scale for bx in boxes]
        rows = torch.cat([torch.full((len(bx),), i, dtype=torch.long, device=image_embeddings.device)
                          for i, bx in enumerate(per_image)])
        g = image_embeddings.shape[-1]
        out = image_embeddings.new_full((b, self.num_classes, 4 * g, 4 * g), NO_OBJECT_LOGIT)
        if rows.numel():
            flat = torch.cat(per_image).clamp(0, self.image_size)
            tokens, no_mask = prompt_encoder(len(flat), flat)
            logits = mask_decoder(image_embeddings[rows], prompt_encoder.get_dense_pe(), tokens, no_mask)
            # Several boxes of one image: their masks are united by the maximum logit.
            index = rows.view(-1, 1, 1, 1).expand_as(logits)
            out = out.scatter_reduce(0, index, logits.to(out.dtype), "amax", include_self=False)
        return self._upscale(out)

    def _upscale(self, logits: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if tuple(logits.shape[-2:]) == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, sam_image: torch.Tensor, yolo_image: torch.Tensor) -> torch.Tensor:
        """SAM image B×3×S×S and YOLO image B×3×Y×Y, both in [0, 1] -> mask logits B×C×S×S."""
        features = self.prompt_features(yolo_image)
        return self.decode(self.encode_image(sam_image), features)
