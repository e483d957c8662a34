"""Running the model over a volume's planned slices: coarse to fine, batched prompt generator + SAM, the encoder
only where the prompt generator finds teeth; per-slice logits filled onto every slice between them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

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
    queue = _Queue(predictor, memory.batch)
    while True:
        if not schedule.pending:  # the level's last batch is screened: finish it before choosing the next level
            queue.drain()
        for chosen, logits, has in queue.done():
            embeddings.update({i: queue.embeddings.pop(i) for i in chosen if i in queue.embeddings})
            if saliency is not None:
                saliency.update({int(plan.positions[i]): queue.saliency.pop(i, None) for i in chosen})
            with_teeth += int(has.sum())
            schedule.record(chosen, logits, has)
            for i in [i for i in embeddings if not schedule.may_be_neighbour(i)]:  # 4 MB each: only those needed
                del embeddings[i]
            progress.update("segment", schedule.resolved, m, slices_with_teeth=with_teeth,
                            model_slices=schedule.model_slices)
        if (chosen := schedule.next_batch(memory.batch)) is None:
            break
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled; no output was written")
        block = normalize(plan.slices[chosen], plan.window)
        keep = None
        if keep_slices is not None:
            keep = torch.from_numpy(np.asarray(keep_slices, dtype=bool)[plan.positions[chosen]])
        between = None
        if predictor.keep_embeddings:
            between = [_between(schedule, embeddings, plan.positions, i, reach) for i in chosen]
        queue.add(chosen, predictor.screen(torch.from_numpy(block), keep), between)
    return Prediction(labels, probs, with_teeth, schedule.model_slices, memory.batch,
                      {f"predict.{k}": round(v, 3) for k, v in predictor.times.items()},
                      None if saliency is None else saliency_map(saliency, plan.shape), predictor.encoded)


class _Queue:
    """Batches screened by the prompt generator whose slices with teeth wait for the encoder and decoder, so that
    these run on full batches of ``size`` rows taken across the screened ones: a batch of candidates holds an odd
    number of tooth slices as often as not, and the last one would run alone, the second core barely helping
    (``row_threads``; docs/segmentation.md). Which slices run is the schedule's alone: a batch is handed back
    (:meth:`done`) once all its tooth slices are decoded, in order, and everything is drained before the schedule
    chooses its next level, so the same slices run on the same inputs as batch by batch."""

    def __init__(self, predictor, size: int) -> None:
        self.predictor, self.size = predictor, max(1, size)
        # Per screened batch: [candidates, screened rows, logits, between, tooth rows not yet decoded].
        self.batches: List[list] = []
        self.teeth: List[Tuple[int, int]] = []  # (batch, row) of the tooth slices waiting, in order
        self.first = 0  # number of the batch at self.batches[0]
        self.embeddings: Dict[int, Any] = {}  # candidate -> its embedding (SlicePredictor.keep_embeddings)
        self.saliency: Dict[int, Any] = {}  # candidate -> the head's logits of a tooth slice (want_saliency)

    def add(self, chosen: List[int], screened, between) -> None:
        import torch

        from .predictor import EMPTY_LOGIT

        n, c = len(chosen), len(self.predictor.model.cfg.class_names)
        size = self.predictor.sam_size
        rows = torch.nonzero(screened.keep).flatten().tolist()
        logits = torch.full((n, c, size, size), EMPTY_LOGIT, dtype=torch.float32)
        number = self.first + len(self.batches)
        self.batches.append([chosen, screened, logits, between, len(rows)])
        self.teeth.extend((number, r) for r in rows)
        while len(self.teeth) >= self.size:
            self._run(self.size)

    def drain(self) -> None:
        while self.teeth:
            self._run(self.size)

    def done(self):
        """The batches whose tooth slices are all decoded, in order: (candidates, logits, has teeth)."""
        while self.batches and self.batches[0][4] == 0:
            chosen, screened, logits, _, _ = self.batches.pop(0)
            self.first += 1
            yield chosen, logits, screened.keep

    def _run(self, count: int) -> None:
        from .predictor import Screened

        run, self.teeth = self.teeth[:count], self.teeth[count:]
        parts, between = [], []
        for number in sorted({number for number, _ in run}):
            batch = self.batches[number - self.first]
            rows = [row for n, row in run if n == number]
            parts.append(batch[1].rows(rows))
            between.extend(None if batch[3] is None else batch[3][row] for row in rows)
        joined = Screened.join(parts)
        pred = self.predictor
        out = pred.finish(joined, between if any(b is not None for b in between) else None)
        for k, (number, row) in enumerate(run):
            batch = self.batches[number - self.first]
            batch[2][row] = out[k]
            batch[4] -= 1
            if k in pred.embeddings:
                self.embeddings[batch[0][row]] = pred.embeddings[k]
            if pred.want_saliency and pred.saliency is not None:
                self.saliency[batch[0][row]] = pred.saliency[k]


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
