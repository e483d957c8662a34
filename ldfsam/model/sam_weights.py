"""Loading the official SAM checkpoints (sam_vit_b/l/h, laid out for 1024 input) into LDFSAM's SAM parts, and
SAM-Med2D's (256 input, with adapters).

The official files are plain state dicts, read with ``torch.load(weights_only=True)`` (no pickled code runs).
What changes on the way in:

- ``image_encoder.pos_embed`` 1×64×64×D is bilinearly resized to the model's grid (16×16 for a 256 input).
- The relative-position tables of the global-attention blocks (2·64−1 = 127 rows) are linearly resized to 2·G−1
  (31 for G = 16), as SAM itself would do on the fly; windowed blocks keep their 2·14−1 = 27-row tables.
- Adapters are not in SAM's files and keep their initialisation. SAM-Med2D's files hold them as
  ``image_encoder.blocks.N.Adapter.*``, which load into ``blocks.N.adapter.*`` (same layout and formula). A
  SAM-Med2D file must hold tensors only: its training script also pickles the optimizer object, and such a file
  is refused rather than unpickled.
- SAM's point/mask-prompt embeddings and its IoU head have no counterpart in LDFSAM and are skipped; the two box
  corner embeddings (``point_embeddings.2/3``) become ``box_corner_embeddings.0/1``.
- Each class's mask token and hypernetwork MLP start from SAM's single-mask output (token and MLP 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .presets import OFFICIAL, SAM_PRESETS
from .prompt_encoder import from_sam_names

PathLike = Union[str, Path]
_SKIPPED_PREFIXES = ("prompt_encoder.point_embeddings.0.", "prompt_encoder.point_embeddings.1.",
                     "prompt_encoder.not_a_point_embed.", "prompt_encoder.mask_downscaling.",
                     "mask_decoder.iou_prediction_head.")


def read_sam_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of an official SAM checkpoint, loaded without unpickling code."""
    from .torch_files import PickledClasses, load_weights_only

    path = Path(path)
    try:
        obj = load_weights_only(path)
    except PickledClasses as e:
        raise CheckpointError(f"is not a SAM checkpoint readable as plain tensors ({str(e)[:200]})", path) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("is not a SAM checkpoint (expected a state dict of tensors)", path)
    if "image_encoder.patch_embed.proj.weight" not in obj or "mask_decoder.mask_tokens.weight" not in obj:
        raise CheckpointError("is not a SAM checkpoint (no image_encoder.patch_embed / mask_decoder weights)", path)
    return obj


def _sam_preset_of(state: Dict[str, torch.Tensor]) -> str:
    dim = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name in OFFICIAL:
        if SAM_PRESETS[name]["embed_dim"] == dim and SAM_PRESETS[name]["depth"] == depth:
            return name
    return f"an encoder of width {dim} and depth {depth}"


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    return F.interpolate(table.float().t().unsqueeze(0), size=length, mode="linear",
                         align_corners=False).squeeze(0).t().to(table.dtype)


def load_sam_weights(model: torch.nn.Module, path: PathLike) -> Dict[str, List[str]]:
    """Load an official SAM checkpoint into ``model`` (an LDFSAM). Returns which keys were loaded, resized,
    skipped (not used by LDFSAM) and left at initialisation (adapters)."""
    path = Path(path)
    source = read_sam_state_dict(path)
    found = _sam_preset_of(source)
    preset = model.cfg.sam.preset
    if found != preset:
        raise CheckpointError(f"holds SAM {found}, but the model is preset {preset}; use the matching "
                              f"sam_{preset} file" if preset in OFFICIAL else
                              f"holds SAM {found}; the {preset!r} preset has no official weights", path)
    own = {k: v for k, v in model.state_dict().items()
           if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))}
    num_classes = model.num_classes
    mapped: Dict[str, torch.Tensor] = {}
    resized: List[str] = []
    skipped: List[str] = []
    for key, value in source.items():
        if key.startswith(_SKIPPED_PREFIXES):
            skipped.append(key)
            continue
        target = key.replace(".Adapter.", ".adapter.") if key.startswith("image_encoder.blocks.") else key
        if key.startswith("prompt_encoder.point_embeddings."):
            target = next(iter(from_sam_names({key: value})))
        if key == "mask_decoder.mask_tokens.weight":
            value = value[:1].repeat(num_classes, 1)
        if key.startswith("mask_decoder.output_hypernetworks_mlps."):
            index = int(key.split(".")[2])
            if index != 0:
                skipped.append(key)
                continue
            rest = key.split(".", 3)[3]
            for c in range(num_classes):
                mapped[f"mask_decoder.output_hypernetworks_mlps.{c}.{rest}"] = value
            continue
        if target not in own:
            raise CheckpointError(f"has {key!r}, which SAM {preset} should not have; is it a modified SAM?", path)
        want = tuple(own[target].shape)
        if tuple(value.shape) != want:
            if key == "image_encoder.pos_embed":
                value = F.interpolate(value.permute(0, 3, 1, 2).float(), size=want[1:3], mode="bilinear",
                                      align_corners=False).permute(0, 2, 3, 1).to(value.dtype)
                resized.append(key)
            elif key.endswith((".rel_pos_h", ".rel_pos_w")) and value.shape[1:] == want[1:]:
                value = _resize_rel_pos(value, want[0])
                resized.append(key)
            else:
                raise CheckpointError(f"tensor {key} has shape {tuple(value.shape)}, but SAM {preset} needs {want}",
                                      path)
        mapped[target] = value
    not_loaded = sorted(set(own) - set(mapped))
    unexplained = [k for k in not_loaded if ".adapter." not in k and "positional_encoding" not in k]
    if unexplained:
        raise CheckpointError(f"lacks {len(unexplained)} SAM tensor(s), e.g. {unexplained[0]}", path)
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    model.cfg.sam.init_checkpoint = str(path)  # provenance, saved with every checkpoint of this model
    return {"loaded": sorted(mapped), "resized": resized, "skipped": skipped, "initialised": not_loaded}


def describe(report: Dict[str, Any]) -> str:
    """One line summarising :func:`load_sam_weights`' report."""
    return (f"{len(report['loaded'])} tensors loaded ({len(report['resized'])} resized), "
            f"{len(report['skipped'])} skipped, {len(report['initialised'])} left at initialisation (adapters)")
