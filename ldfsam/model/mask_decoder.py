"""SAM's mask decoder, batched (one prompt set per row) and producing one mask per class.

Token layout fed to the two-way transformer, per row: ``[iou token, C class mask tokens, prompt tokens]`` where
the prompt tokens are the K Sparse Feature Prompt tokens and/or the two corner tokens of one box. Each class has
its own mask token and hypernetwork MLP (SAM has four of each for its multimask outputs); the class-c mask is the
dot product of the class-c token's MLP output with the upscaled image features, exactly as SAM's mask c.
SAM's IoU prediction head is not built by default: LDFSAM trains with Dice + BCE only and reports no IoU score, so
the head would never receive a gradient. The IoU token itself is kept, because it takes part in the attention.

``num_multimask_outputs = M > 0`` keeps SAM's M further mask tokens (and their MLPs) and builds the IoU head over
all C + M tokens, in SAM's order ``[iou, class tokens, multimask tokens]``. With C = 1 and M = 3 this is exactly
SAM's (and LiteMedSAM's) decoder, loading its ``mask_decoder.*`` tensors unchanged: class 0 is SAM's single-mask
output (token 0, ``multimask_output=False``), computed with all five output tokens in the attention as SAM does,
and :meth:`MaskDecoder.predict_all` also gives SAM's multimask outputs and IoU scores.

Unlike SAM's decoder, image embeddings are not ``repeat_interleave``d: row n of the embeddings belongs to row n
of the prompts, so a batch of B images with one prompt set each is simply B rows.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

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
                 mlp_dim: int = 2048, num_multimask_outputs: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_mask_tokens = num_classes + num_multimask_outputs
        self.transformer = TwoWayTransformer(depth, transformer_dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head: Optional[MLP] = None
        if num_multimask_outputs:
            self.iou_prediction_head = MLP(transformer_dim, 256, self.num_mask_tokens, 3)

    def _run(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor,
             dense_prompt: torch.Tensor, num_masks: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks of the first ``num_masks`` mask tokens N×num_masks×4G×4G and the IoU token's output N×D."""
        n = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), prompt_tokens.to(output_tokens.dtype)],
                           dim=1)
        src = image_embeddings + dense_prompt
        pos = image_pe.expand(n, -1, -1, -1)
        h, w = src.shape[-2:]
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, 1:1 + num_masks, :]
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(num_masks)],
                               dim=1)
        return self.upscaled_masks(src, h, w, hyper_in), hs[:, 0, :]

    def upscaled_masks(self, src: torch.Tensor, h: int, w: int, hyper_in: torch.Tensor) -> torch.Tensor:
        """Image tokens N×(h·w)×D and hypernetwork outputs N×M×D/8 -> masks N×M×4h×4w: SAM's
        ``hyper_in @ output_upscaling(image)``, computed per sub-pixel.

        Each 2×2 stride-2 transposed convolution is a linear map of one input pixel to its four output pixels, and
        the LayerNorm, the GELUs and the hypernetwork product all act on one pixel: so the whole path runs as
        matrix products on rows of (pixel, sub-pixel) and only the M-channel masks are put in image order at the
        end. The same function as the convolutions (to float rounding; Testing/test_model_mask_decoder_speed.py),
        and cheaper on a CPU: a lite Phase 2 step (64×64 grid) takes 1.33× less CPU time (docs/training.md).
        """
        c1, norm, act1, c2, act2 = self.output_upscaling
        n, d = src.shape[0], src.shape[-1]
        d1, d2 = c1.weight.shape[1], c2.weight.shape[1]
        # ConvTranspose2d weight D_in×D_out×2×2 -> D_in×(2·2·D_out), sub-pixel major, so that channels stay last.
        w1 = c1.weight.permute(0, 2, 3, 1).reshape(d, 4 * d1)
        x = F.linear(src, w1.t(), c1.bias.repeat(4)).view(n, h * w * 4, d1)
        x = act1(F.layer_norm(x, (d1,), norm.weight, norm.bias, norm.eps))
        w2 = c2.weight.permute(0, 2, 3, 1).reshape(d1, 4 * d2)
        x = act2(F.linear(x, w2.t(), c2.bias.repeat(4)).view(n, h * w * 16, d2))
        masks = torch.bmm(x, hyper_in.transpose(1, 2).to(x.dtype))  # N×(h·w·16)×M
        m = masks.shape[-1]
        # Rows are (i, j, p1, q1, p2, q2): output pixel (4i + 2·p1 + p2, 4j + 2·q1 + q2).
        return masks.view(n, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(n, m, 4 * h, 4 * w)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor,
                dense_prompt: torch.Tensor) -> torch.Tensor:
        """Embeddings N×D×G×G, positional encoding 1×D×G×G, prompt tokens N×T×D, dense prompt N×D×G×G
        -> mask logits N×C×4G×4G."""
        return self._run(image_embeddings, image_pe, prompt_tokens, dense_prompt, self.num_classes)[0]

    def predict_all(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor,
                    dense_prompt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, but the masks of all C + M mask tokens N×(C+M)×4G×4G and their predicted IoU
        N×(C+M). For SAM's layout (C = 1, M = 3), SAM's multimask outputs are ``[:, 1:]``, its single mask ``[:, :1]``.
        Needs ``num_multimask_outputs > 0``."""
        if self.iou_prediction_head is None:
            raise ValueError("predict_all: this decoder has no IoU head (built with num_multimask_outputs=0)")
        masks, iou_token = self._run(image_embeddings, image_pe, prompt_tokens, dense_prompt, self.num_mask_tokens)
        return masks, self.iou_prediction_head(iou_token)
