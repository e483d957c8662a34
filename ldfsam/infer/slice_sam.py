"""LiteMedSAM on the axial slices of one volume: encode a slice once, decode box/point/mask prompts on it often.

The encoder sees a *view*: a rectangle of the slice (the whole slice, or a region around the structure, so a
small tooth is not a few model pixels wide). The view (h×w voxels, windowed to [0, 1]) is resized as LiteMedSAM
was trained: the longest side to S = 256 (bilinear, antialiased when shrinking), the other side keeping the
aspect, zero padding on the bottom/right, grey replicated to 3 channels, no mean/std normalisation. Voxel
coordinate c (relative to the view) maps to model pixel (c + 0.5)·s − 0.5 with s = S / max(h, w), for boxes and
points alike, and the mask logits are cropped to the unpadded part and resized back onto the view, so prompts
and masks stay on the same pixels.

Embeddings (256×64×64 float32, 4 MB each) are kept per (slice, view) in an LRU cache bounded in bytes: clicks on
slices already encoded cost only the prompt encoder and decoder.

Precision: ``auto`` is float32 on every CPU, unlike ``ldfsam segment`` (where it is the faster one measured on
this machine, ``ldfsam.cpu_precision``): where a prompted structure ends is decided by the stop rules and SPD's
validation on mask and map edges that bf16 embeddings move by a voxel, so with bf16 a tooth's result depended on
the CPU (docs/segmentation.md, "On a real CT"). ``bf16`` when asked: the encoder's weights become bf16 and the
encoder and decoder run under autocast (LayerNorm and softmax stay float32); embeddings, logits and IoU come out
float32. A TinyViT encoder is prepared for inference
(BatchNorm folded, channels-last) in place.
"""

from __future__ import annotations

import contextlib
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
View = Tuple[int, int, int, int]


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

    ``decode(z, box, points, mask, view)`` -> (logits on the view; low-res logits 1×1×S×S; IoU); prompts are in
    the slice's voxel coordinates. A view is (y0, y1, x0, x1), end exclusive; None is the whole slice."""

    def __init__(self, parts: SamParts, volume: np.ndarray, window: Optional[Tuple[float, float]] = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, precision: str = "auto") -> None:
        from ..heap import reuse_large_blocks
        from ..model.tiny_vit import TinyViT
        from ..model.tiny_vit_inference import prepare_for_inference
        from .predictor import resolve_precision

        reuse_large_blocks()
        # auto: float32 whatever the CPU (see the module's docstring)
        self.dtype = torch.float32 if precision == "auto" else resolve_precision(precision, torch.device("cpu"))
        encoder = parts.image_encoder.eval()
        if isinstance(encoder, TinyViT):
            prepare_for_inference(encoder)
        if self.dtype == torch.bfloat16:
            encoder.to(torch.bfloat16)  # no weight copies for autocast to make and cache
        self.parts = parts
        self.volume = volume
        self.window = window
        self.size = parts.image_size
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cache_bytes = int(cache_bytes)
        self.encoded = 0  # encoder passes so far (cache misses)
        self.decoded = 0  # decoder passes so far (memo misses)
        # Decoder results by their exact inputs: re-running a structure after a click decodes only the slices
        # whose prompts changed (low-res logits, 256 kB each).
        self.memo: OrderedDict[tuple, Tuple[torch.Tensor, float]] = OrderedDict()
        self.memo_entries = DEFAULT_MEMO_ENTRIES
        self._pe = parts.prompt_encoder.get_dense_pe().detach()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.dtype)

    def full_view(self) -> View:
        return (0, int(self.volume.shape[1]), 0, int(self.volume.shape[2]))

    def _geometry(self, view: View) -> Tuple[float, int, int]:
        """(scale, height, width) of the view inside the S×S model image."""
        h, w = view[1] - view[0], view[3] - view[2]
        scale = self.size / max(h, w)
        return scale, max(1, round(h * scale)), max(1, round(w * scale))

    def model_image(self, z: int, view: Optional[View] = None) -> torch.Tensor:
        """Slice z's view as the encoder's input 1×3×S×S."""
        y0, y1, x0, x1 = view or self.full_view()
        grey = self.volume[z, y0:y1, x0:x1]
        grey = normalize(grey, self.window) if self.window is not None else np.asarray(grey, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
        _, h, w = self._geometry((y0, y1, x0, x1))
        shrink = h < x.shape[-2] or w < x.shape[-1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink).clamp_(0, 1)
        x = F.pad(x, (0, self.size - w, 0, self.size - h))
        return x.expand(-1, 3, -1, -1).contiguous()

    @torch.inference_mode()
    def embedding(self, z: int, view: Optional[View] = None) -> torch.Tensor:
        """The image embedding of slice z's view, 1×256×G×G (cached)."""
        view = tuple(view or self.full_view())
        key = (z, view)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        with self._autocast():
            emb = self.parts.image_encoder(self.model_image(z, view)).float()
        self.encoded += 1
        self.cache[key] = emb
        per = emb.numel() * emb.element_size()
        while len(self.cache) > 1 and len(self.cache) * per > self.cache_bytes:
            self.cache.popitem(last=False)
        return emb

    @torch.inference_mode()
    def decode(self, z: int, box: Optional[Tuple[float, float, float, float]] = None,
               points: Sequence[Tuple[float, float, bool]] = (), mask: Optional[torch.Tensor] = None,
               view: Optional[View] = None) -> Tuple[np.ndarray, torch.Tensor, float]:
        """Prompts on slice z in voxel coordinates of the slice: box (y0, y1, x0, x1) inclusive, points
        (y, x, include), mask logits 1×1×S×S (a previous result's low-res logits, same view). Returns the logits
        on the view only ((y1 - y0)×(x1 - x0): nothing outside it can be in the mask, and a tooth's view is a few
        per cent of a CBCT slice), low-res logits 1×1×S×S and the predicted IoU. Which of SAM's four outputs:
        :meth:`_choose`."""
        view = tuple(view or self.full_view())
        key = (z, view, None if box is None else tuple(float(v) for v in box),
               tuple((float(y), float(x), bool(i)) for y, x, i in points),
               None if mask is None else hashlib.sha1(mask.detach().float().contiguous().numpy().tobytes()).digest())
        hit = self.memo.get(key)
        if hit is None:
            hit = self._decode(z, box, points, mask, view)
            self.memo[key] = hit
            while len(self.memo) > self.memo_entries:
                self.memo.popitem(last=False)
        else:
            self.memo.move_to_end(key)
        low, iou = hit
        y0, y1, x0, x1 = view
        _, h, w = self._geometry(view)
        out = F.interpolate(low[..., :h, :w], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        return out[0, 0].numpy(), low, iou

    def _decode(self, z: int, box, points, mask, view: View) -> Tuple[torch.Tensor, float]:
        emb = self.embedding(z, view)
        pe, dec = self.parts.prompt_encoder, self.parts.mask_decoder
        scale = self._geometry(view)[0]
        y0, x0 = view[0], view[2]

        def my(c: float) -> float:
            return (c - y0 + 0.5) * scale - 0.5

        def mx(c: float) -> float:
            return (c - x0 + 0.5) * scale - 0.5

        boxes = None
        if box is not None:
            by0, by1, bx0, bx1 = box
            boxes = torch.tensor([[mx(bx0), my(by0), mx(bx1), my(by1)]])
        pts = None
        model_points = [(my(y), mx(x), inc) for y, x, inc in points]
        if points:
            coords = torch.tensor([[[x, y] for y, x, _ in model_points]])
            labels = torch.tensor([[1 if inc else 0 for _, _, inc in model_points]])
            pts = (coords, labels)
        with self._autocast():
            sparse, dense = pe(1, boxes=boxes, points=pts, masks=mask)
            masks, iou = dec.predict_all(emb, self._pe, sparse, dense)
        masks, iou = masks.float(), iou.float()
        self.decoded += 1
        best = self._choose(masks[0], iou[0], box is not None, model_points)
        return masks[:, best:best + 1].clone(), float(iou[0, best])

    def _choose(self, masks: torch.Tensor, iou: torch.Tensor, has_box: bool, points) -> int:
        """SAM's single mask (0) with a box, its best multimask output (1-3) without; where clicks are given, the
        first of those that agrees with every click (include inside, exclude outside), then the others by IoU."""
        order = [0] + [1 + int(i) for i in iou[1:].argsort(descending=True)]
        if not has_box:
            order = order[1:] + [0]
        n = self.size - 1
        for k in order:
            if all((float(masks[k, min(n, max(0, round(y))), min(n, max(0, round(x)))]) > 0) == inc
                   for y, x, inc in points):
                return k
        return order[0]
