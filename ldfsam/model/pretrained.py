"""Pretrained SAM weights: what a new model starts from, and the published weights a model file refers to.

- ``vit_*`` presets start from an official SAM checkpoint the user names (``sam_weights.py``);
- the ``lite`` preset starts from LiteMedSAM (``lite_weights.py``: the verified local copy), always;
- a model file of the lite preset whose encoder is still LiteMedSAM's stores no encoder tensors, only a
  reference ``{"name": "litemedsam", "sha256": …, "prefix": "image_encoder."}`` (5.7 M parameters not
  duplicated in every model); loading takes them from the verified copy and refuses another file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..errors import CheckpointError, LDFSAMError
from ..file_format import load_strict
from .lite_weights import litemedsam_sha256, litemedsam_state_dict
from .prompt_encoder import from_sam_names
from .sam_weights import load_sam_weights

LITEMEDSAM = "litemedsam"
_ENCODER = "image_encoder."


@functools.lru_cache(maxsize=1)
def _litemedsam():
    """(LiteMedSAM state dict in its own key names, SHA256 of its published file), read and verified once per
    process: every model save of a lite run compares its encoder with it."""
    return litemedsam_state_dict(), litemedsam_sha256()


def litemedsam_for(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """LiteMedSAM's tensors (its own names) renamed and laid out for an LDFSAM ``model`` of the lite preset.

    SAM's decoder has four mask tokens (0: the single-mask output, 1-3: multimask) and an IoU head over all four.
    LDFSAM's has one token per class, then the three multimask ones: every class starts from SAM's single-mask
    token and MLP, the multimask tokens stay SAM's 1-3, and the IoU head's outputs follow the same order.
    """
    num_classes = model.num_classes
    order = [0] * num_classes + list(range(1, 1 + model.cfg.sam.decoder_multimask_outputs))
    out: Dict[str, torch.Tensor] = {}
    for key, value in from_sam_names(state).items():
        if key == "mask_decoder.mask_tokens.weight":
            out[key] = value[order].clone()
        elif key.startswith("mask_decoder.output_hypernetworks_mlps."):
            index, rest = key.split(".", 3)[2:]
            for ours, sam in enumerate(order):
                if sam == int(index):
                    out[f"mask_decoder.output_hypernetworks_mlps.{ours}.{rest}"] = value.clone()
        elif key.startswith("mask_decoder.iou_prediction_head.layers.2."):
            out[key] = value[order].clone()
        else:
            out[key] = value
    return out


def load_pretrained_sam(model: torch.nn.Module, sam_checkpoint: Optional[Union[str, Path]] = None
                        ) -> Optional[Dict[str, Any]]:
    """Load the preset's pretrained SAM into a new LDFSAM model; returns the loader's report (None: nothing)."""
    if model.cfg.sam.encoder == "tiny_vit":
        state, sha256 = _litemedsam()
        # LDFSAM's own parts (prompt generator, feature prompts, SPD's saliency head) are not in LiteMedSAM.
        own = {k for k in model.state_dict()
               if not k.startswith(("prompt_generator.", "feature_prompts.", "saliency_head."))}
        mapped = litemedsam_for(model, state)
        sam_part = {k: v for k, v in mapped.items() if k in own}
        missing, unexpected = sorted(own - set(sam_part)), sorted(set(mapped) - own)
        if missing or unexpected:
            raise CheckpointError(f"LiteMedSAM's tensors do not fit the model: {len(missing)} missing (e.g. "
                                  f"{missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})",
                                  LITEMEDSAM)
        whole = dict(model.state_dict())
        whole.update(sam_part)
        load_strict(model, whole, LITEMEDSAM, "the lite preset's SAM")
        model.cfg.sam.init_checkpoint = LITEMEDSAM
        return {"loaded": sorted(sam_part), "sha256": sha256}
    if sam_checkpoint:
        return load_sam_weights(model, sam_checkpoint)
    return None


def unchanged_base(model_cfg: Any, tensors: Dict[str, torch.Tensor]) -> Optional[Dict[str, str]]:
    """The reference to store instead of the encoder tensors, when they are exactly LiteMedSAM's; else None (and
    the file keeps every tensor, e.g. where LiteMedSAM's weights are not installed)."""
    s = model_cfg.sam
    if s.encoder != "tiny_vit" or s.init_checkpoint != LITEMEDSAM:
        return None
    try:
        reference, sha256 = _litemedsam()
    except LDFSAMError:
        return None
    encoder = {k: v for k, v in tensors.items() if k.startswith(_ENCODER)}
    ref = {k: v for k, v in reference.items() if k.startswith(_ENCODER)}
    if set(encoder) != set(ref):
        return None
    if not all(encoder[k].shape == ref[k].shape and torch.equal(encoder[k].to(ref[k].dtype).cpu(), ref[k])
               for k in encoder):
        return None
    return {"name": LITEMEDSAM, "sha256": sha256, "prefix": _ENCODER}


def base_tensors(base: Dict[str, Any], source: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors a model file ``source`` refers to by ``base`` (its document's entry), verified."""
    if not isinstance(base, dict) or base.get("name") != LITEMEDSAM or not isinstance(base.get("prefix"), str):
        raise CheckpointError(f"refers to base weights this ldfsam does not know ({base!r})", source)
    try:
        state, sha256 = _litemedsam()
    except LDFSAMError as e:
        raise CheckpointError(f"needs the LiteMedSAM weights for its image encoder, which are not available: {e}",
                              source) from None
    if base.get("sha256") != sha256:
        raise CheckpointError(f"was trained on LiteMedSAM weights with SHA256 {base.get('sha256')}, but the local "
                              f"copy has {sha256}", source)
    # Copies: the loaded model must never share storage with the per-process reference.
    return {k: v.clone() for k, v in state.items() if k.startswith(base["prefix"])}
