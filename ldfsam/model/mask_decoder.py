"""SAM's mask decoder, batched (one prompt set per row) and producing one mask per class.

Token layout fed to the two-way transformer, per row: ``[iou token, C class mask tokens, prompt tokens]`` where
the prompt tokens are the K Sparse Feature Prompt tokens and/or the two corner tokens of one box. Each class has
its own mask token and hypernetwork MLP (SAM has four of each for its multimask outputs); the class-c mask is the
dot product of the class-c token's MLP output with the upscaled image features, exactly as SAM's mask c.
SAM's IoU prediction head is not built: LDFSAM trains with Dice + BCE only and reports no IoU score, so the head
would never receive a gradient. The IoU token itself is kept, because it takes part in the attention.

Unlike SAM's decoder, image embeddings are not ``repeat_interleave``d: row n of the embeddings belongs to row n
of the prompts, so a batch of B images with one prompt set each is simply B rows.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM's hypernetwork MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims: List[int] = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Two-way transformer over [IoU, class mask, prompt] tokens and the image, then per-class hypernetworks."""

    def __init__(self, num_classes: int, transformer_dim: int = 256, depth: int = 2, num_heads: int = 8,
                 mlp_dim: int = 2048) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.transformer = TwoWayTransformer(depth, transformer_dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(num_classes, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(num_classes)
        )

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor,
                dense_prompt: torch.Tensor) -> torch.Tensor:
        """Embeddings N×D×G×G, positional encoding 1×D×G×G, prompt tokens N×T×D, dense prompt N×D×G×G
        -> mask logits N×C×4G×4G."""
        n = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), prompt_tokens.to(output_tokens.dtype)],
                           dim=1)
        src = image_embeddings + dense_prompt
        pos = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, 1:1 + self.num_classes, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
