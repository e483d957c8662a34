"""SAM's prompt encoder: box prompts and the "no mask" embedding always; point and dense mask prompts on request.

LDFSAM's own prompts are features and detected boxes, so by default only the box-corner and no-mask embeddings are
built (the layout of every LDFSAM model file). ``point_prompts=True`` adds SAM's positive/negative/padding point
embeddings and ``mask_in_chans > 0`` its mask-downscaling network, for click and mask prompts on a pretrained SAM
(LiteMedSAM has both). SAM names the box corners ``point_embeddings.2/3``; :func:`from_sam_names` maps SAM's
names to ours (its point embeddings 0 and 1, negative and positive, keep their names).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .common import LayerNorm2d

# SAM's point labels: -1 marks a padding point (not a point), 0 a negative click, 1 a positive one.
NOT_A_POINT, NEGATIVE, POSITIVE = -1, 0, 1
_SAM_TO_OURS = {"point_embeddings.2.": "box_corner_embeddings.0.", "point_embeddings.3.": "box_corner_embeddings.1."}


def _rename(state: Dict[str, torch.Tensor], prefix: str, names: Dict[str, str]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in names.items():
            if key.startswith(prefix + old):
                key = prefix + new + key[len(prefix + old):]
                break
        out[key] = value
    return out


def from_sam_names(state: Dict[str, torch.Tensor], prefix: str = "prompt_encoder.") -> Dict[str, torch.Tensor]:
    """A state dict with SAM's prompt-encoder names (under ``prefix``) renamed to this module's; others unchanged."""
    return _rename(state, prefix, _SAM_TO_OURS)


def to_sam_names(state: Dict[str, torch.Tensor], prefix: str = "prompt_encoder.") -> Dict[str, torch.Tensor]:
    """The inverse of :func:`from_sam_names`."""
    return _rename(state, prefix, {v: k for k, v in _SAM_TO_OURS.items()})


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of normalised (x, y) coordinates (SAM's ``pe_layer``)."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        # Drawn on the CPU even inside a meta-device build: a random op on meta tensors makes torch import its
        # compiler stack (~1.5 s) for a 2×n buffer that the model file replaces anyway.
        gaussian = scale * torch.randn((2, num_pos_feats), device="cpu")
        self.register_buffer("positional_encoding_gaussian_matrix", gaussian)

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an h×w grid: C×h×w."""
        h, w = size
        grid = torch.ones((h, w), device=self.positional_encoding_gaussian_matrix.device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Encoding of pixel coordinates N×P×2 (x, y) in an image of ``image_size`` (h, w): N×P×C."""
        coords = coords.clone().float()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords)


class PromptEncoder(nn.Module):
    """Embeds box (and optionally point and mask) prompts as SAM does: sparse tokens and a dense embedding."""

    def __init__(self, embed_dim: int, image_embedding_size: Tuple[int, int], input_image_size: Tuple[int, int],
                 point_prompts: bool = False, mask_in_chans: int = 0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # SAM's point_embeddings[2] and [3]: top-left and bottom-right box corners.
        self.box_corner_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.point_embeddings: Optional[nn.ModuleList] = None
        self.not_a_point_embed: Optional[nn.Embedding] = None
        if point_prompts:
            # SAM's point_embeddings[0] (negative) and [1] (positive), same names.
            self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
            self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling: Optional[nn.Sequential] = None
        if mask_in_chans > 0:
            # Mask logits N×1×4G×4G -> N×D×G×G (two stride-2 convs, then a 1×1 conv to the embedding width).
            self.mask_downscaling = nn.Sequential(
                nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
                LayerNorm2d(mask_in_chans // 4),
                nn.GELU(),
                nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
                LayerNorm2d(mask_in_chans),
                nn.GELU(),
                nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
            )

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        """Size of a dense mask prompt: 4G×4G (256×256 for a 64×64 embedding)."""
        return 4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1]

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: 1×C×G×G."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes N×4 (x0, y0, x1, y1) in input-image pixels -> corner tokens N×2×C."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)  # pixel centres, as SAM
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corners = corners + torch.cat([self.box_corner_embeddings[0].weight, self.box_corner_embeddings[1].weight])
        return corners

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Points N×P×2 (x, y) in input-image pixels with labels N×P (1 positive, 0 negative, -1 none) -> tokens
        N×P×C, or N×(P+1)×C with ``pad``: SAM appends a "not a point" token when no box follows the points."""
        if self.point_embeddings is None or self.not_a_point_embed is None:
            raise ValueError("points: this prompt encoder was built without point prompts (point_prompts=False)")
        coords = coords + 0.5
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), NOT_A_POINT)], dim=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == NOT_A_POINT, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(labels == NEGATIVE, self.point_embeddings[0].weight, 0.0)
        return embedding + torch.where(labels == POSITIVE, self.point_embeddings[1].weight, 0.0)

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Mask logits N×1×4G×4G -> dense embedding N×C×G×G."""
        if self.mask_downscaling is None:
            raise ValueError("masks: this prompt encoder was built without mask prompts (mask_in_chans=0)")
        if tuple(masks.shape[-2:]) != self.mask_input_size or masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks: expected N×1×{self.mask_input_size[0]}×{self.mask_input_size[1]}, "
                             f"got {tuple(masks.shape)}")
        return self.mask_downscaling(masks)

    def forward(self, batch_size: int, boxes: Optional[torch.Tensor] = None,
                points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                masks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse tokens N×T×C (points first, then the two box corners) and the dense embedding N×C×G×G (the
        mask prompt's, else "no mask"). Prompts given must have ``batch_size`` rows."""
        device = self.no_mask_embed.weight.device
        parts = []
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        if parts:
            sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        else:
            sparse = torch.empty((batch_size, 0, self.embed_dim), device=device)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, *self.image_embedding_size)
        return sparse, dense
