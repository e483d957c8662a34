"""SAM's prompt encoder, reduced to what LDFSAM feeds it: box prompts and the "no mask" dense embedding.

Point and mask prompts are never given to LDFSAM (its prompts are features and detected boxes), so their
embeddings are not built; ``sam_weights.py`` maps the official box-corner and no-mask embeddings by name.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn


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
    """Embeds box prompts as two corner tokens and supplies the dense "no mask" embedding."""

    def __init__(self, embed_dim: int, image_embedding_size: Tuple[int, int], input_image_size: Tuple[int, int]):
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # SAM's point_embeddings[2] and [3]: top-left and bottom-right box corners.
        self.box_corner_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: 1×C×G×G."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes N×4 (x0, y0, x1, y1) in input-image pixels -> corner tokens N×2×C."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)  # pixel centres, as SAM
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corners = corners + torch.cat([self.box_corner_embeddings[0].weight, self.box_corner_embeddings[1].weight])
        return corners

    def forward(self, batch_size: int, boxes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse tokens N×T×C (T = 2 with boxes, else 0) and the dense embedding N×C×G×G."""
        device = self.no_mask_embed.weight.device
        if boxes is not None:
            sparse = self.embed_boxes(boxes)
        else:
            sparse = torch.empty((batch_size, 0, self.embed_dim), device=device)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, *self.image_embedding_size)
        return sparse, dense
