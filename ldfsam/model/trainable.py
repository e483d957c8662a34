"""Which parameters Phase 2 trains: the one place that defines it (paper section 3.4).

Trained: the encoder's adapters, the feature prompt encoder (Φmix, the dense head and α, the sparse head), SAM's
prompt encoder, the mask decoder and SPD's saliency head (when the model has one). Frozen: the ViT encoder's original
weights and the whole YOLO prompt generator.
Parameters that the configured prompt mode never uses are frozen too, so that every trainable parameter receives
a gradient: SAM's box-corner embeddings take part only in box mode; the decoder's attention key biases never change
its output. A ``zero-shot`` model trains nothing: it is the
pretrained SAM prompted with the detected boxes. Nor does an ``auto`` model: it is joined from a trained
``dense+sparse`` and a trained ``box`` model (``model/auto_prompt.py``), and Phase 2 refuses it.
"""

from __future__ import annotations

from typing import List

from torch import nn


def _is_trainable(name: str, prompt_mode: str, num_classes: int) -> bool:
    if prompt_mode in ("zero-shot", "auto"):  # auto: joined from two trained models (model/auto_prompt.py)
        return False
    if name.startswith("mask_decoder.iou_prediction_head."):
        return False  # SAM's IoU head (interactive use): Phase 2 has no IoU target
    if name.startswith("mask_decoder.transformer.") and name.endswith(".k_proj.bias"):
        # An attention's key bias adds one constant to all of a query's logits, which the softmax drops: it never
        # changes the output, its gradient is 0 (the few-token attention does not even compute it; transformer.py).
        return False
    if name.startswith("mask_decoder.output_hypernetworks_mlps."):
        return int(name.split(".")[2]) < num_classes  # the class masks, not SAM's multimask outputs
    if name.startswith("image_encoder."):
        return ".adapter." in name
    if name.startswith("prompt_encoder."):
        # Of SAM's prompt embeddings Phase 2 uses the "no mask" one always and the box corners in box mode;
        # point and mask-prompt embeddings (interactive use) never take part.
        if name.startswith("prompt_encoder.box_corner_embeddings."):
            return prompt_mode == "box"
        return name.startswith("prompt_encoder.no_mask_embed.")
    return name.startswith(("feature_prompts.", "mask_decoder.", "saliency_head."))


def configure_phase2(model: nn.Module) -> List[str]:
    """Set ``requires_grad`` for Phase 2 on an LDFSAM model; returns the trainable parameter names in order."""
    mode = model.cfg.prompt_mode
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(_is_trainable(name, mode, len(model.cfg.class_names)))
        if p.requires_grad:
            names.append(name)
    return names
