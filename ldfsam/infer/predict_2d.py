"""The prediction of a 2D image (a photograph) by a one-class lite model, shared by segmentation
(``image_2d.segment_2d``) and evaluation (``evaluate.model_eval``), so that both score the same mask.

The image is resized to the model's square inputs, its logits resized back and thresholded, as Phase 2 trains.
Test-time flips (:data:`FLIPS`): the logits averaged over the image and its horizontal (``h``) or also its vertical
and double flips (``hv``), each flip encoded and prompted as an image of its own and flipped back (``hv`` costs 4
encoder passes). Volumes never flip: a tooth model's classes are sides of the jaw.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import numpy as np

from ..data.images import FLIPS
from ..errors import InputError


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
