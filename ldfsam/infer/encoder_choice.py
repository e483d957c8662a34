"""Which image encoder a lite model segments with (``SegmentOptions.encoder``).

- ``auto``: the one its decoder was trained on (``SamConfig.trained_encoder``; ``load_model`` puts it in place);
- ``full``: the model's own TinyViT (LiteMedSAM's encoder at 256), as it was trained;
- ``half``: the distilled half-resolution student (``ldfsam.model.tiny_vit_student``): the same TinyViT weights
  at 128 and a neck back to the 64×64 grid, distilled from LiteMedSAM's embeddings (bundled catalog entry
  ``litemedsam-half-neck``). About 3.2× fewer FLOPs per slice; docs/model.md gives its accuracy against ``full``.

The lite family keeps its encoder wholly frozen at LiteMedSAM's weights, so every lite model's decoder was trained
on the embeddings the student imitates. Other encoders (SAM's ViT) have no student: ``half`` is refused for them.
"""

from __future__ import annotations

from typing import Dict

from ..errors import Arg, ConfigError

ENCODERS = ("auto", "full", "half")
NECK_MODEL = "litemedsam-half-neck"


def select_encoder(model, encoder: str) -> None:
    """Make ``model.image_encoder`` (an LDFSAM network) the ``encoder`` one, in place. The other is kept on the
    model, so a loaded model can be used with either in turn (the student is built once). ``auto``: the encoder
    the model was trained on."""
    if encoder not in ENCODERS:
        raise ConfigError("{}: use auto, full or half", arguments=[Arg("encoder", encoder)])
    if encoder == "auto":
        encoder = getattr(model.cfg.sam, "trained_encoder", "full")
    encoders: Dict[str, object] = model.__dict__.get("_ldfsam_encoders") or {"full": model.image_encoder}
    if encoder not in encoders:
        if getattr(model.cfg.sam, "encoder", None) != "tiny_vit" or model.cfg.sam.image_size != 256:
            raise ConfigError("{}: only the lite family (LiteMedSAM's TinyViT at 256) has a half-resolution "
                              "encoder", arguments=[Arg("encoder", encoder)])
        from ..model.tiny_vit_student import half_resolution_encoder
        from ..models.registry import load_registry

        neck = load_registry()[NECK_MODEL].bundled_path
        encoders[encoder] = half_resolution_encoder(encoders["full"], neck)
    object.__setattr__(model, "_ldfsam_encoders", encoders)  # not a submodule: not in the state dict
    model.image_encoder = encoders[encoder]
