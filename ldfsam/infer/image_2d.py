"""Segmenting a 2D image (a photograph: Kvasir-SEG, ISIC 2018, MMOTU) with a one-class lite model.

The image is resized to the model's square inputs, its logits resized back and thresholded, as Phase 2 trains and
``ldfsam evaluate`` scores. Optional, both measured on Kvasir-SEG (docs/training.md, "Fourth series" and "Fifth
series"):

- ``flips``: the logits averaged over the image and its horizontal (``h``) or also its vertical and double flips
  (``hv``), each flip encoded and prompted as an image of its own and flipped back; ``hv`` costs 4 encoder passes;
- ``refine``: the refinement pass (``refine.py``) on the (mean) logits.

Volumes never flip: a tooth model's classes are sides of the jaw (``ldfsam segment`` of a volume refuses
``--flips``). ``ldfsam segment IMAGE.png -o MASK.png`` and :func:`segment_2d` write the mask as an 8-bit PNG,
255 where the object is.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import InputError

# The flipped axes of each pass (-1 horizontal, -2 vertical); the passes' logits, flipped back, are averaged.
FLIPS: Dict[str, Tuple[Tuple[int, ...], ...]] = {"none": ((),), "h": ((), (-1,)), "hv": ((), (-1,), (-2,), (-2, -1))}


def flip_mean(decode: Callable, sam, yolo, flips: str = "none"):
    """Mean over the passes of ``FLIPS[flips]`` of ``decode(flipped sam, flipped yolo)``, each flipped back:
    logits B×C×S×S."""
    import torch

    if flips not in FLIPS:
        raise InputError(f"flips must be one of {', '.join(FLIPS)}, not {flips!r}")
    total = None
    for dims in FLIPS[flips]:
        out = decode(torch.flip(sam, dims), torch.flip(yolo, dims)) if dims else decode(sam, yolo)
        out = torch.flip(out.float(), dims) if dims else out.float()
        total = out if total is None else total + out
    return total / len(FLIPS[flips])


class Uncached:
    """The embedding look-up of :func:`predict_2d` without a cache: every image is encoded."""

    @staticmethod
    def embedding_of(sam_image, compute: Callable):
        return compute()


def check_test_flips(flips: str, model_cfg, name) -> None:
    """Test-time flips need a lite feature-prompt (or auto) model: a box model's flip without a box is a constant
    "no object" logit that, averaged, would erase the boxes the other passes found."""
    if flips not in FLIPS:
        raise InputError(f"flips must be one of {', '.join(FLIPS)}, not {flips!r}", name)
    if flips != "none" and (model_cfg.sam.encoder != "tiny_vit" or model_cfg.uses_boxes):
        raise InputError("test-time flips need a lite feature-prompt (or auto) model and a 2D image", name)


def predict_2d(loaded, image: np.ndarray, device, threshold: float, ref: Optional[np.ndarray] = None,
               embeddings=None, refiner=None, precision: str = "fp32", encoder=None,
               flips: str = "none") -> np.ndarray:
    """RGB image H×W×3 uint8 -> boolean masks C×H×W; with ``ref`` (H×W bool, box mode) the prompts are the
    boxes of the reference's connected components instead of the detected ones. With ``embeddings`` (an
    EmbeddingCache of the model's frozen encoder, in ``precision``, or :class:`Uncached`) the image embedding is
    looked up there, or computed (by ``encoder``, ``embedding_cache.inference_encoder``). ``precision`` "bf16": the
    encoder and the rest of the model run under bf16 autocast, as Phase 2 trains and validates on a CPU that picks
    bf16. ``flips`` (with ``embeddings``): the logits averaged over the image and its flips (:data:`FLIPS`), each
    flip encoded as an image of its own."""
    import torch
    import torch.nn.functional as F

    from ..data.images import resize_square
    from ..finetune.gt_boxes import BoxPrompted, boxes_from_masks

    pre = loaded.preprocess
    sam = torch.from_numpy(resize_square(image, pre.sam_size, False).copy()).permute(2, 0, 1).float()[None] / 255.0
    yolo = torch.from_numpy(resize_square(image, pre.yolo_size, False).copy()).permute(2, 0, 1).float()[None] / 255.0
    model = loaded.model
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    with torch.no_grad(), amp:
        boxes = None
        if ref is not None:
            small = torch.from_numpy(resize_square(ref.astype(np.uint8), pre.sam_size, True).copy())[None, None]
            boxes = boxes_from_masks(small, pre.yolo_size / pre.sam_size)
        if embeddings is not None:
            from ..finetune.embedding_cache import encode

            def embed(img):  # encoded as Phase 2 encodes its images (embedding_cache.encode_dataset)
                return embeddings.embedding_of(img[0], lambda: encode(model, img, precision, encoder)[0])[None].to(
                    device)

            embedding = embed(sam)
            logits = flip_mean(lambda s, y: model.decode(embedding if s is sam else embed(s),
                                                         model.prompt_features(y.to(device)), boxes), sam, yolo, flips)
            if refiner is not None:  # the refinement pass (infer/refine.py) on the same, unconditioned embedding
                logits = refiner.refine(embedding, logits)
        elif boxes is None:
            logits = model(sam.to(device), yolo.to(device)).float()
        else:
            logits = BoxPrompted(model)(sam.to(device), yolo.to(device), boxes).float()
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits[0]) > threshold).cpu().numpy()


def segment_2d(input, output=None, *, model, flips: str = "none", refine: bool = False, threshold: float = 0.5,
               precision: str = "auto", device: str = "auto", force: bool = False) -> np.ndarray:
    """Segment the 2D image file ``input`` with a one-class lite ``model`` (a name, a .safetensors path or a loaded
    checkpoint) and write ``output`` (a .png, 255 = the object) unless None; returns the mask (H×W bool).
    ``flips``: none (default: one encoder pass), h or hv (test-time flips, :data:`FLIPS`). ``refine``: the
    refinement pass. ``precision``: auto (the one Phase 2 picks on this machine), fp32 or bf16."""
    from ..checkpoint import load_checkpoint
    from ..data.images import IMAGE_SUFFIXES, read_rgb
    from ..errors import OutputError
    from ..finetune.embedding_cache import inference_encoder
    from ..finetune.precision import resolve_precision
    from ..models import resolve_model
    from .predictor import resolve_device

    input = Path(input)
    if output is not None:
        output = Path(output)
        if output.suffix.lower() != ".png":
            raise OutputError("a 2D image's mask is written as .png", output)
        if output.exists() and not force:
            raise OutputError("exists; use --force (force=True) to overwrite it", output)
        if output.resolve() == input.resolve():
            raise OutputError("is the input image", output)
    if input.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"is not a 2D image ({', '.join(IMAGE_SUFFIXES)})", input)
    image = read_rgb(input)
    dev = resolve_device(device)
    loaded = model if hasattr(model, "model_cfg") else load_checkpoint(resolve_model(model), device=dev)
    cfg = loaded.model_cfg
    if cfg.sam.encoder != "tiny_vit" or len(cfg.class_names) != 1:
        raise InputError(f"segmenting a 2D image needs a one-class lite model; this one is preset {cfg.sam.preset!r} "
                         f"with {len(cfg.class_names)} class(es)", str(model))
    check_test_flips(flips, cfg, str(model))
    precision = resolve_precision(precision, loaded.model.pixel_mean.device)
    if precision not in ("fp32", "bf16"):
        raise InputError(f"2D images run in fp32 or bf16, not {precision}", str(model))
    refiner = None
    if refine:
        from .refine import refiner_for

        refiner = refiner_for(cfg)
    mask = predict_2d(loaded, image, loaded.model.pixel_mean.device, threshold, None, Uncached(), refiner, precision,
                      inference_encoder(loaded.model), flips)[0]
    if output is not None:
        from ..data.images import write_label_png

        write_label_png(output, mask.astype(np.uint8) * 255)
    return mask
