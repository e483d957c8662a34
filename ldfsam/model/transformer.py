"""SAM's two-way transformer: prompt tokens and image tokens attend to each other in turn.

Shapes: image embedding B×C×G×G and its positional encoding, tokens B×T×C -> (tokens B×T×C, image B×G²×C).

The cross-attentions between the few tokens (T: the IoU and mask tokens and the prompts, about 5-12) and the many
image tokens (N = G², 4096 for LiteMedSAM's 64×64 grid) are computed with their products re-associated
(:meth:`Attention.tokens_to_image`, :meth:`Attention.image_to_tokens`) where the heads' tokens number fewer than the
attention width (H·T < C/2): the image is then never projected to N×C/2 queries, keys or values. The same function
with the same parameters as SAM's (equal to float rounding, forward and backward:
``Testing/test_model_transformer_few_tokens.py``), for fewer multiply-adds and smaller intermediate tensors: most of a
lite Phase 2 step is this decoder (docs/training.md, "Where a step's time goes").
"""

from __future__ import annotations

import math
from typing import Tuple, Type

import torch
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Attention with optional down-projection of the embedding size after q/k/v (SAM's ``downsample_rate``)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _few(self, tokens: int) -> bool:
        """Whether the re-associated products are cheaper: the heads' tokens are fewer than the attention width."""
        return self.num_heads * tokens < self.internal_dim

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``forward`` with few queries (tokens B×T×C) and many keys and values (image B×N×C).

        Per head h, ``q_h·(W_k,h x + b_k,h) = (q_h W_k,h)·x + q_h·b_k,h``: the second term is the same for every key,
        so the softmax drops it, and the queries are taken to the image's C channels instead of the image to the
        head's; the attention weights sum to 1, so ``A (x W_v,h^T + b_v,h) = (A x) W_v,h^T + b_v,h``.
        """
        b, t, _ = q.shape
        if not self._few(t):
            return self(q, k, v)
        h, d = self.num_heads, k.shape[-1]
        dh = self.internal_dim // h
        queries = self.q_proj(q).view(b, t, h, dh)
        # B×(H·T)×C: each head's queries in the image's channels.
        wide = torch.einsum("bthe,hec->bhtc", queries, self.k_proj.weight.view(h, dh, d)).reshape(b, h * t, d)
        attn = ((wide / math.sqrt(dh)) @ k.transpose(1, 2)).softmax(dim=-1)  # B×(H·T)×N
        mixed = (attn @ v).view(b, h, t, d)  # each head's weighted image, B×H×T×C
        out = torch.einsum("bhtc,hec->bthe", mixed, self.v_proj.weight.view(h, dh, d)).reshape(b, t, h * dh)
        return self.out_proj(out + self.v_proj.bias)

    def image_to_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``forward`` with many queries (image B×N×C) and few keys and values (tokens B×T×C).

        Per head h, ``(W_q,h x + b_q,h)·k_h = x·(W_q,h^T k_h) + b_q,h·k_h``, and the output projection of a head's
        values is applied to the T values before the attention weights instead of to the N mixed ones.
        """
        b, t, _ = k.shape
        if not self._few(t):
            return self(q, k, v)
        h, n, d = self.num_heads, q.shape[1], q.shape[-1]
        dh = self.internal_dim // h
        keys = self.k_proj(k).view(b, t, h, dh)
        values = self.v_proj(v).view(b, t, h, dh)
        # The keys in the image's channels (B×C×(H·T)) and the query bias's share of each logit (B×1×(H·T)).
        wide = torch.einsum("hec,bthe->bcht", self.q_proj.weight.view(h, dh, d), keys).reshape(b, d, h * t)
        bias = torch.einsum("he,bthe->bht", self.q_proj.bias.view(h, dh), keys).reshape(b, 1, h * t)
        scale = 1.0 / math.sqrt(dh)
        attn = torch.baddbmm(bias * scale, q, wide * scale).view(b, n, h, t).softmax(dim=-1)
        # Each head's values through its slice of the output projection: B×(H·T)×C.
        projected = torch.einsum("bthe,che->bhtc", values, self.out_proj.weight.view(d, h, dh)).reshape(b, h * t, d)
        return attn.reshape(b, n, h * t) @ projected + self.out_proj.bias

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, activation: Type[nn.Module] = nn.ReLU,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # the image is unchanged until norm4: one sum serves both cross-attentions
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token.image_to_tokens(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token->image attention."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, nn.ReLU, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # Image tokens B×N×C laid out so (one copy): the permuted view would be copied by several products instead.
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1).contiguous()
        if image_pe.shape[0] > 1 and image_pe.stride(0) == 0:
            image_pe = image_pe[:1]  # one image's encoding expanded over the batch: broadcast instead
        image_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys))
        return queries, keys
