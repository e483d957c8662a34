"""How to segment a volume: :class:`SegmentOptions`, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import Arg, ConfigError
from .slice_sampling import SliceSpacing, parse_slice_spacing


@dataclass
class SegmentOptions:
    """How to segment (:func:`segment_volume`'s keyword arguments of the same names)."""

    # 4, not 8: a third of a GiB lighter on the 420-slice benchmark volume and no slower, with or without native
    # bf16 (docs/segmentation.md, "Batch 4 instead of 8"); the CLI and segment_volume default to the same.
    batch: int = 4
    threshold: float = 0.5
    min_island_mm3: float = 10.0
    fill: bool = True
    split: bool = False
    precision: str = "auto"
    memory_limit: Optional[int] = None
    slice_spacing: SliceSpacing = "auto"
    probabilities: bool = False  # also return the tooth probability map
    spacing: Optional[Tuple[float, float, float]] = None  # the true voxel size (x, y, z) mm, replacing the file's
    # The lite family's refinement pass (infer/refine.py): each component of the automatic mask re-segmented by
    # LiteMedSAM's unchanged decoder from its box. One-class lite models only.
    refine: bool = False
    # Also return SPD's saliency map (models with a saliency head): the head's tooth probability on every slice the
    # encoder ran on, interpolated between them as the logits are; 0 where the prompt generator found no teeth.
    saliency: bool = False
    # The image encoder of a lite model: "auto" (the one its decoder was trained on), "full" (its own TinyViT) or
    # "half" (the distilled half-resolution student, about 3.2x fewer FLOPs per slice; infer/encoder_choice.py).
    encoder: str = "auto"
    # Coarse to fine (slice_spacing "auto"): a candidate run between two neighbouring candidates that both hold
    # teeth is decoded on the linear interpolation of their image embeddings, with its own prompt features,
    # instead of being encoded (infer/volume_prediction.py). Off by default: on a phantom sliced at 0.1 mm
    # (Testing/test_infer_slice_sampling.py) it cost 0.016 Dice against the model on every slice, beyond the 0.01
    # rule, though only 0.004 on the benchmark volume. False encodes every model slice that holds teeth.
    interpolate_embeddings: bool = False

    def validate(self) -> SegmentOptions:
        """Raise ConfigError naming the argument of the first bad value."""
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("{}: must be between 0 and 1", arguments=[Arg("threshold", self.threshold)])
        if self.min_island_mm3 < 0:
            raise ConfigError("{}: must not be negative", arguments=[Arg("min_island_mm3", self.min_island_mm3)])
        if self.batch < 1:
            raise ConfigError("{}: must be at least 1", arguments=[Arg("batch", self.batch)])
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError("{}: use auto, fp32 or bf16", arguments=[Arg("precision", self.precision)])
        if self.encoder not in ("auto", "full", "half"):
            raise ConfigError("{}: use auto, full or half", arguments=[Arg("encoder", self.encoder)])
        parse_slice_spacing(self.slice_spacing)
        if self.spacing is not None:
            from ..data.volume import check_spacing

            self.spacing = check_spacing(self.spacing)
        return self
