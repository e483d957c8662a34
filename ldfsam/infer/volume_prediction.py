"""Running the model over a volume's planned slices: coarse to fine, batched prompt generator + SAM, the encoder
only where the prompt generator finds teeth; per-slice logits filled onto every slice between them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import Arg, Cancelled, ConfigError
from ..progress import Progress
from .adaptive_slices import COARSE_STEP, SliceSchedule
from .memory import plan_memory
from .segment_options import SegmentOptions
from .slice_plan import SlicePlan
from .slice_sampling import SliceFiller

# The largest distance along z (in model pixels, the field of view / S) across which a slice is decoded on the
# interpolated embeddings of its two neighbouring candidates (SegmentOptions.interpolate_embeddings): candidates are
# about one model pixel apart, rounded to whole input slices, so two of them span up to about 2.5.
MAX_BETWEEN_PX = 2.5


@dataclass
class Prediction:
    """The label map (and probabilities) of the axial view, before the 3D clean-up."""

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    slices_with_teeth: int
    model_slices: int
    batch: int
    times: Dict[str, float]
    saliency: Optional[np.ndarray] = None
    encoded: int = -1  # slices through the image encoder (the others with teeth were decoded between two of them)


def predict(loaded, plan: SlicePlan, options: SegmentOptions, device, dtype, progress: Progress,
            should_stop: Optional[Callable[[], bool]] = None,
            keep_slices: Optional[np.ndarray] = None) -> Prediction:
    """Run the model on the plan's slices (coarse to fine when ``plan.adaptive``) and fill the label map of every
    slice between them. Reports progress as phase "segment"."""
    import torch

    from ..data.preprocess import normalize
    from .predictor import SlicePredictor

    nz, ny, nx = plan.shape
    pre, cfg = loaded.preprocess, loaded.model_cfg
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    memory = plan_memory(plan.source or plan.name, plan.shape, cfg.sam.preset, options.batch, model_bytes,
                         options.probabilities, options.memory_limit, held_bytes=plan.slices.nbytes)
    if memory.reduced:
        progress.log("segment", f"batch reduced from {options.batch} to {memory.batch} to fit in "
                                f"{memory.available_bytes / 2**30:.1f} GB of memory", level="warning")
    if options.encoder != "auto" or loaded.model_cfg.sam.trained_encoder != "full" \
            or "_ldfsam_encoders" in loaded.model.__dict__:  # "auto": the encoder the model was trained on
        from .encoder_choice import select_encoder

        select_encoder(loaded.model, options.encoder)
    predictor = SlicePredictor(loaded.model, pre.sam_size, pre.yolo_size, device, dtype)
    saliency: Optional[Dict[int, torch.Tensor]] = None
    if options.saliency:
        if getattr(loaded.model, "saliency_head", None) is None:
            raise ConfigError("{}: this model has no saliency head (train one in Phase 2; `ldfsam info --model NAME` "
                              "shows whether a model has one)", arguments=[Arg("saliency", True)])
        predictor.want_saliency, saliency = True, {}
    if options.refine:
        from .refine import refiner_for

        predictor.refiner = refiner_for(cfg)
    n_classes = len(cfg.class_names)
    labels = np.zeros(plan.shape, dtype=np.uint8)
    probs = np.zeros(plan.shape, dtype=np.float32) if options.probabilities else None
    cut = math.log(options.threshold / (1.0 - options.threshold))
    m = len(plan.positions)
    schedule = SliceSchedule(plan.positions, SliceFiller(labels, cut, n_classes, probs), cut,
                             coarse=COARSE_STEP if plan.adaptive else 1)
    # Embeddings of encoded model slices whose neighbouring candidates may still run (``encoded_neighbours``).
    embeddings: Dict[int, torch.Tensor] = {}
    predictor.keep_embeddings = options.interpolate_embeddings and plan.adaptive
    # Interpolated only across MAX_BETWEEN_PX model pixels along z (input slices here), the in-plane detail the
    # model resolves: on thin-sliced CBCT two candidates, not across thick slices.
    pixel_mm = min(nx * plan.spacing[0], ny * plan.spacing[1]) / pre.sam_size
    reach = MAX_BETWEEN_PX * pixel_mm / plan.spacing[2]
    with_teeth = 0
    every = f"{plan.spacing[2] * (nz - 1) / max(1, m - 1):.2g} mm"
    where = (f"up to {m} ({every} apart where the teeth change, up to {COARSE_STEP}x that where they do not)"
             if plan.adaptive else f"{m} (every {every})" if m < nz else f"{m} (every slice)")
    progress.start("segment", total=m, message=f"segmenting {plan.name}: {nz} slices of {nx}x{ny}, the model on "
                   f"{where}", batch=memory.batch, device=str(device), precision=str(dtype).replace("torch.", ""))
    while (chosen := schedule.next_batch(memory.batch)) is not None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled; no output was written")
        block = normalize(plan.slices[chosen], plan.window)
        keep = None
        if keep_slices is not None:
            keep = torch.from_numpy(np.asarray(keep_slices, dtype=bool)[plan.positions[chosen]])
        between = None
        if predictor.keep_embeddings:
            between = [_between(schedule, embeddings, plan.positions, i, reach) for i in chosen]
        logits, has = predictor.predict(torch.from_numpy(block), keep, between)
        embeddings.update({chosen[j]: e for j, e in predictor.embeddings.items()})
        if saliency is not None:
            saliency.update({int(plan.positions[i]): predictor.saliency[j] if h else None
                             for j, (i, h) in enumerate(zip(chosen, has.tolist()))})
        with_teeth += int(has.sum())
        schedule.record(chosen, logits, has)
        for i in [i for i in embeddings if not schedule.may_be_neighbour(i)]:  # 4 MB each: only those still needed
            del embeddings[i]
        progress.update("segment", schedule.resolved, m, slices_with_teeth=with_teeth,
                        model_slices=schedule.model_slices)
    return Prediction(labels, probs, with_teeth, schedule.model_slices, memory.batch,
                      {f"predict.{k}": round(v, 3) for k, v in predictor.times.items()},
                      None if saliency is None else saliency_map(saliency, plan.shape), predictor.encoded)


def _between(schedule: SliceSchedule, embeddings: Dict[int, Any], positions: np.ndarray, i: int, reach: float):
    """For candidate ``i`` run between two encoded neighbours (the finest level of the coarse-to-fine choice) at
    most ``reach`` input slices apart: their embeddings and the weight of the second, by position; else None
    (``i`` is encoded)."""
    gap = schedule.encoded_neighbours(i)
    if gap is None or gap[0] not in embeddings or gap[1] not in embeddings:
        return None
    a, b = gap
    if positions[b] - positions[a] > reach:
        return None
    return embeddings[a], embeddings[b], float((positions[i] - positions[a]) / (positions[b] - positions[a]))


def saliency_map(logits: Dict[int, Any], shape: Tuple[int, int, int]) -> np.ndarray:
    """SPD's saliency probabilities on every slice (z×y×x float32) from the head's logits (1×G×G, None: no
    teeth) of the model slices at their z, filled between them as the mask logits are."""
    from .slice_sampling import fill_probabilities

    return fill_probabilities(logits, shape)
