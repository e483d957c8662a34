"""LiteMedSAM on the axial slices of one volume: encode a slice once, decode box/point/mask prompts on it often.

A slice (ny×nx, already windowed to [0, 1]) is resized as LiteMedSAM was trained: the longest side to S = 256
(bilinear, antialiased when shrinking), the other side keeping the aspect, zero padding on the bottom/right, grey
replicated to 3 channels, no mean/std normalisation. Voxel centre c maps to model pixel (c + 0.5)·s − 0.5 with
s = S / max(ny, nx), for boxes and points alike, and the mask logits are cropped to the unpadded part and resized
back, so prompts and masks stay on the same pixels.

Embeddings (256×64×64 float32, 4 MB each) are kept in an LRU cache bounded in bytes: clicks on slices already
encoded cost only the prompt encoder and decoder.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import normalize
from ..errors import ConfigError

# Default bound of the embedding cache: 128 slices of 4 MB.
DEFAULT_CACHE_BYTES = 512 * 2**20
DEFAULT_MEMO_ENTRIES = 512


@dataclass
class SamParts:
    """The three SAM modules prompted segmentation uses (e.g. ``lite_weights.load_litemedsam()``)."""

    image_encoder: torch.nn.Module
    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module
    image_size: int = 256


def sam_parts_of(model: object) -> SamParts:
    """The SAM parts of an LDFSAM model (or a LoadedCheckpoint), checked for point and mask prompts."""
    model = getattr(model, "model", model)
    pe = getattr(model, "prompt_encoder", None)
    dec = getattr(model, "mask_decoder", None)
    cfg = getattr(model, "cfg", None)
    if pe is None or dec is None or cfg is None:
        raise ConfigError("prompted segmentation needs a SAM with a prompt encoder and mask decoder")
    if pe.point_embeddings is None or pe.mask_downscaling is None or dec.iou_prediction_head is None:
        raise ConfigError(f"this model (preset {cfg.sam.preset!r}) has no prompt encoder for points and masks "
                          "(SAM's interactive prompts); prompted segmentation needs the lite preset (LiteMedSAM)")
    if cfg.sam.pixel_norm != "none":
        raise ConfigError(f"prompted segmentation runs LiteMedSAM's encoder on [0, 1] images; this model's "
                          f"preset {cfg.sam.preset!r} normalises pixels")
    if dec.num_classes != 1:
        raise ConfigError(f"prompted segmentation needs SAM's single-mask decoder; this model has "
                          f"{dec.num_classes} class tokens")
    return SamParts(model.image_encoder, pe, dec, cfg.sam.image_size)


def litemedsam_parts() -> SamParts:
    """LiteMedSAM as published (verified local weights), eval mode."""
    from ..model.lite_weights import load_litemedsam

    parts = load_litemedsam()
    return SamParts(parts.image_encoder, parts.prompt_encoder, parts.mask_decoder, 256)


class SliceSAM:
    """SAM on the slices of one volume ``volume`` (z×y×x): float in [0, 1], or any grey values with ``window``
    (low, high), which normalises a slice when it is encoded (no float copy of a whole 420×650² volume).

    ``decode(z, box, points, mask)`` -> (logits ny×nx at the slice's resolution, low-res logits S×S, IoU)."""

    def __init__(self, parts: SamParts, volume: np.ndarray, window: Optional[Tuple[float, float]] = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.parts = parts
        self.volume = volume
        self.window = window
        self.size = parts.image_size
        _, ny, nx = volume.shape
        self.scale = self.size / max(ny, nx)
        self.inner = (max(1, round(ny * self.scale)), max(1, round(nx * self.scale)))
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.cache_bytes = int(cache_bytes)
        self.encoded = 0  # encoder passes so far (cache misses)
        self.decoded = 0  # decoder passes so far (memo misses)
        # Decoder results by their exact inputs: re-running a structure after a click decodes only the slices
        # whose prompts changed (low-res logits, 256 kB each).
        self.memo: OrderedDict[tuple, Tuple[torch.Tensor, float]] = OrderedDict()
        self.memo_entries = DEFAULT_MEMO_ENTRIES
        self._pe = parts.prompt_encoder.get_dense_pe().detach()

    def model_image(self, z: int) -> torch.Tensor:
        """Slice z as the encoder's input 1×3×S×S."""
        grey = self.volume[z]
        grey = normalize(grey, self.window) if self.window is not None else np.asarray(grey, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
        h, w = self.inner
        shrink = h < x.shape[-2] or w < x.shape[-1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink).clamp_(0, 1)
        x = F.pad(x, (0, self.size - w, 0, self.size - h))
        return x.expand(-1, 3, -1, -1).contiguous()

    @torch.inference_mode()
    def embedding(self, z: int) -> torch.Tensor:
        """The image embedding of slice z, 1×256×G×G (cached)."""
        hit = self.cache.get(z)
        if hit is not None:
            self.cache.move_to_end(z)
            return hit
        emb = self.parts.image_encoder(self.model_image(z)).float()
        self.encoded += 1
        self.cache[z] = emb
        per = emb.numel() * emb.element_size()
        while len(self.cache) > 1 and len(self.cache) * per > self.cache_bytes:
            self.cache.popitem(last=False)
        return emb

    def to_model(self, c: float) -> float:
        return (c + 0.5) * self.scale - 0.5

    @torch.inference_mode()
    def decode(self, z: int, box: Optional[Tuple[float, float, float, float]] = None,
               points: Sequence[Tuple[float, float, bool]] = (), mask: Optional[torch.Tensor] = None
               ) -> Tuple[np.ndarray, torch.Tensor, float]:
        """Prompts on slice z in voxel coordinates: box (y0, y1, x0, x1) inclusive, points (y, x, include), mask
        logits 1×1×S×S (a previous result's low-res logits). Returns logits ny×nx, low-res logits 1×1×S×S and the
        predicted IoU. Without a box, SAM's best multimask output is taken (points alone are ambiguous)."""
        key = (z, None if box is None else tuple(float(v) for v in box),
               tuple((float(y), float(x), bool(i)) for y, x, i in points),
               None if mask is None else hashlib.sha1(mask.detach().float().contiguous().numpy().tobytes()).digest())
        hit = self.memo.get(key)
        if hit is None:
            hit = self._decode(z, box, points, mask)
            self.memo[key] = hit
            while len(self.memo) > self.memo_entries:
                self.memo.popitem(last=False)
        else:
            self.memo.move_to_end(key)
        low, iou = hit
        h, w = self.inner
        ny, nx = self.volume.shape[1:]
        full = F.interpolate(low[..., :h, :w], size=(ny, nx), mode="bilinear", align_corners=False)
        return full[0, 0].numpy(), low, iou

    def _decode(self, z: int, box, points, mask) -> Tuple[torch.Tensor, float]:
        emb = self.embedding(z)
        pe, dec = self.parts.prompt_encoder, self.parts.mask_decoder
        boxes = None
        if box is not None:
            y0, y1, x0, x1 = box
            boxes = torch.tensor([[self.to_model(x0), self.to_model(y0), self.to_model(x1), self.to_model(y1)]])
        pts = None
        if points:
            coords = torch.tensor([[[self.to_model(x), self.to_model(y)] for y, x, _ in points]])
            labels = torch.tensor([[1 if inc else 0 for _, _, inc in points]])
            pts = (coords, labels)
        sparse, dense = pe(1, boxes=boxes, points=pts, masks=mask)
        masks, iou = dec.predict_all(emb, self._pe, sparse, dense)
        self.decoded += 1
        best = 0 if box is not None else 1 + int(iou[0, 1:].argmax())
        return masks[:, best:best + 1].clone(), float(iou[0, best])
