"""Segmenting a 2D image file (a photograph: Kvasir-SEG, ISIC 2018, MMOTU) with a one-class lite model: the
model found by name or path, the image read, predicted as ``ldfsam evaluate`` scores it (``predict_2d.py``, with
its optional test-time flips) and optionally refined (``refine.py``), and the mask written as an 8-bit PNG, 255
where the object is. Both options are measured on Kvasir-SEG in docs/training.md ("Fourth series" and "Fifth
series"). ``ldfsam segment IMAGE.png -o MASK.png`` runs :func:`segment_2d`; a volume refuses ``--flips`` (a
flipped slice swaps the jaw's sides, which a tooth model's classes name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .predict_2d import Uncached, check_test_flips, predict_2d


def segment_2d(input, output=None, *, model, flips: str = "none", refine: bool = False, threshold: float = 0.5,
               precision: str = "auto", device: str = "auto", force: bool = False) -> np.ndarray:
    """Segment the 2D image file ``input`` with a one-class lite ``model`` (a name, a .safetensors path or a loaded
    checkpoint) and write ``output`` (a .png, 255 = the object) unless None; returns the mask (H×W bool).
    ``flips``: none (default: one encoder pass), h or hv (test-time flips, ``predict_2d.FLIPS``). ``refine``: the
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
