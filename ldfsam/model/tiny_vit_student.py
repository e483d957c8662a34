"""A cheaper TinyViT for the lite family: LiteMedSAM's encoder at half the input resolution, with a neck back to
the 64×64 embedding grid, trained to reproduce LiteMedSAM's embeddings (``scripts/distill_encoder.py``).

Layout (S = 256, G = S/4 = 64; the backbone is LiteMedSAM's TinyViT with its own weights, unchanged):

    image B×3×S×S -> 2×2 average pool -> B×3×S/2×S/2
    -> TinyViT at S/2: stage 0 at S/2, stage 1 at S/4 (its blocks' output: ``fine`` B×128×G×G),
       stages 2-3 and LiteMedSAM's neck at S/8 -> ``coarse`` B×256×G/2×G/2
    -> UpNeck(coarse, fine) -> embedding B×256×G×G, the teacher's grid and channels.

It takes the teacher's input and gives an embedding of the teacher's shape, so LiteMedSAM's prompt encoder and
mask decoder (and every model trained on LiteMedSAM's frozen encoder) run on it unchanged. 22 against 74.9 GFLOP
per slice; its accuracy against the teacher: docs/model.md, "A distilled half-resolution encoder".
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .tiny_vit import TinyViT

# Images that go through the student's batched stages (attention stages and neck) at once at inference. A whole
# batch of 8 held the activations of all 8: alone on 8 slices it added 380 MiB in float32 (189 in bf16) against 121
# (51) one image at a time; in pieces of 4, 242 (88) at the same CPU time per slice on 2 threads (docs/segmentation.md,
# "The batched student on a CPU with native bf16, and the batch in pieces of 4").
PIECE_IMAGES = 4


class UpNeck(nn.Module):
    """coarse B×D×g×g + fine B×C×2g×2g -> B×D×2g×2g: the coarse embedding upsampled (bilinear) plus a correction
    computed at 2g from both (1×1 mixes, LayerNorm, ``depth`` residual 3×3-depthwise + 1×1 blocks, 1×1 out).
    With ``stem``, the full-resolution image B×3×8g×8g enters the correction too (a 4×4 stride-4 convolution).

    The output projection starts at zero, so an untrained neck is plain bilinear upsampling of the coarse embedding.
    """

    def __init__(self, dim: int = 256, fine_chans: int = 128, hidden: int = 128, depth: int = 2,
                 stem: bool = False) -> None:
        super().__init__()
        self.fine = nn.Conv2d(fine_chans, hidden, 1)
        self.coarse = nn.Conv2d(dim, hidden, 1, bias=False)
        self.stem = nn.Conv2d(3, hidden, 4, stride=4, bias=False) if stem else None
        self.norm = LayerNorm2d(hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
                          nn.Conv2d(hidden, hidden, 1), nn.GELU())
            for _ in range(depth))
        self.out = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        h = self.fine(fine) + self.coarse(up)
        if self.stem is not None:
            h = h + self.stem(image)
        h = F.gelu(self.norm(h))
        for block in self.blocks:
            h = h + block(h)
        return up + self.out(h)


class HalfResTinyViT(nn.Module):
    """Image B×3×S×S in [0, 1] (as LiteMedSAM's encoder takes it) -> embedding B×256×S/4×S/4.

    ``backbone``: a TinyViT of LiteMedSAM's layout built for S/2 (its weights are LiteMedSAM's). Parameter names:
    ``backbone.*`` as LiteMedSAM's ``image_encoder.*``, ``up_neck.*`` the distilled neck.
    """

    def __init__(self, image_size: int = 256, neck_hidden: int = 128, neck_depth: int = 2, neck_stem: bool = False,
                 **tiny_vit) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size: {image_size} is not a multiple of 32 (half of it must suit TinyViT)")
        self.image_size = image_size
        self.embedding_size = image_size // 4
        self.backbone = TinyViT(image_size=image_size // 2, **tiny_vit)
        dims = self.backbone.layers[1].blocks[0].attn.qkv.in_features
        self.up_neck = UpNeck(self.backbone.neck[0].out_channels, dims, neck_hidden, neck_depth, neck_stem)

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Image B×3×S×S -> (coarse B×256×S/8×S/8, fine B×128×S/4×S/4): the frozen backbone's part (the
        distillation caches it)."""
        b = self.backbone
        x = F.avg_pool2d(x, 2)
        if b.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[0] > 1 and not torch.is_grad_enabled():
            # The first stage (the largest grid, all convolutions) one image at a time, so that its activations
            # stay small (PIECE_BYTES in tiny_vit.py); the rest as one batch (``forward`` gives at most PIECE_IMAGES):
            # its grids are small, and one image at a time there costs two threads about twice the CPU time of one
            # (waiting for each other).
            x = torch.cat([b.layers[0](b.patch_embed(x[i:i + 1])) for i in range(x.shape[0])])
        else:
            x = b.layers[0](b.patch_embed(x))
        fine, x = b.layers[1].blocks_and_merge(x)
        for layer in b.layers[2:]:
            x = layer(x)
        return b.neck(x), fine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > PIECE_IMAGES and not torch.is_grad_enabled():
            return torch.cat([self.forward(x[i:i + PIECE_IMAGES]) for i in range(0, x.shape[0], PIECE_IMAGES)])
        return self.up_neck(*self.features(x), x if self.up_neck.stem is not None else None)


NECK_FORMAT, NECK_VERSION = "ldfsam-encoder-neck", 1


def save_neck(path, neck: UpNeck, training: dict) -> None:
    """The distilled neck as safetensors + its JSON document (sizes, and how it was trained)."""
    from ..file_format import save_state

    config = {"hidden": neck.out.in_channels, "depth": len(neck.blocks), "stem": neck.stem is not None,
              "dim": neck.out.out_channels, "fine_chans": neck.fine.in_channels}
    save_state(path, dict(neck.state_dict()), {"format": NECK_FORMAT, "version": NECK_VERSION,
                                               "teacher": "litemedsam", "config": config, "training": training})


def half_resolution_encoder(teacher: TinyViT, neck_path) -> HalfResTinyViT:
    """The student for ``teacher`` (an unprepared TinyViT of LiteMedSAM's layout, at 256): its weights at half
    the input resolution and the distilled neck read from ``neck_path``, prepared for inference. A teacher of
    another layout is refused (CheckpointError): the neck was distilled for LiteMedSAM's."""
    from ..file_format import check_document, load_state, load_strict
    from .tiny_vit_inference import freeze_attention_biases, prepare_for_inference

    tensors, document = load_state(neck_path)
    check_document(document, neck_path, NECK_FORMAT, NECK_VERSION, "encoder neck")
    c = document["config"]
    student = HalfResTinyViT(teacher.image_size, c["hidden"], c["depth"], c["stem"])
    prepared = getattr(teacher, "prepared", False)
    if prepared:  # BatchNorm already folded into the teacher's convolutions: fold the student's alike first
        prepare_for_inference(student.backbone, channels_last=teacher.channels_last)
    load_strict(student.backbone, teacher.state_dict(), neck_path, "the half-resolution encoder (LiteMedSAM's "
                "TinyViT layout)")
    if prepared:  # the gathered bias tables were made from the student's initial weights
        freeze_attention_biases(student.backbone)
    load_strict(student.up_neck, tensors, neck_path, "encoder neck")
    prepare_for_inference(student.backbone)
    student.float().eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student
