"""Batched slice prediction with the model split: prompt features and detections for every slice, the SAM
image encoder only for the slices where the prompt generator finds teeth, then the mask decoder.

Input slices are normalised greyscale (B×H×W float in [0, 1]); output is mask logits at SAM resolution
(B×C×S×S), with slices that hold no detected tooth set to a large negative logit (background).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .row_threads import RowThreads

EMPTY_LOGIT = -20.0
# A slice decoded between two encoded ones: (embedding a, embedding b, weight of b), each embedding D×G×G.
Between = Tuple[torch.Tensor, torch.Tensor, float]


@dataclass
class Screened:
    """A batch after the prompt generator (:meth:`SlicePredictor.screen`): per row, the SAM input, the prompt
    features, the detections (box prompts only) and whether it holds teeth."""

    sam: torch.Tensor  # B×3×S×S
    features: Tuple[torch.Tensor, ...]  # the prompt generator's P3/P4/P5, B×...
    detections: Optional[List[torch.Tensor]]  # per row (models prompted with boxes), else None
    keep: torch.Tensor  # B bool, on the CPU

    def rows(self, rows: Sequence[int]) -> Screened:
        """These rows only, in this order."""
        at = torch.tensor(list(rows), dtype=torch.long)
        dev = at.to(self.sam.device)
        return Screened(self.sam.index_select(0, dev), tuple(f.index_select(0, dev) for f in self.features),
                        None if self.detections is None else [self.detections[r] for r in rows], self.keep[at])

    @staticmethod
    def join(parts: Sequence[Screened]) -> Screened:
        """Several batches' rows as one batch, in order."""
        if len(parts) == 1:
            return parts[0]
        detections = None if parts[0].detections is None else [d for p in parts for d in p.detections]
        return Screened(torch.cat([p.sam for p in parts]),
                        tuple(torch.cat(f) for f in zip(*(p.features for p in parts))), detections,
                        torch.cat([p.keep for p in parts]))


def _fused_generator(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the (frozen) prompt generator with every BatchNorm folded into its convolution, as ultralytics
    does for inference: the same function with fewer passes over memory. The model itself is left untouched."""
    generator = copy.deepcopy(model.prompt_generator).eval()
    generator.detector.fuse(verbose=False)
    return generator


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a named device that is missing is an error."""
    from ..errors import Arg, ConfigError

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{}: no CUDA GPU is available on this machine", arguments=[Arg("device", device)])
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("{}: Apple Metal (MPS) is not available on this machine", arguments=[Arg("device", device)])
    if device not in ("cpu", "cuda", "mps"):
        raise ConfigError("{}: use auto, cpu, cuda or mps", arguments=[Arg("device", device)])
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype for ``precision`` (auto, fp32, bf16) on ``device``; auto on the CPU is the faster precision measured
    on this machine (``ldfsam.cpu_precision``), on CUDA bf16 where supported."""
    from ..cpu_precision import auto_cpu_precision
    from ..errors import Arg, ConfigError

    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError("{}: use auto, fp32 or bf16", arguments=[Arg("precision", precision)])
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if auto_cpu_precision() == "bf16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


class SlicePredictor:
    """Runs an LDFSAM model on batches of slices. With bf16, the image encoder's weights are converted to bf16 in
    place (the model is prepared for inference: eval mode, channels-last) and everything runs under autocast:
    matmuls and convolutions in bf16, softmax and LayerNorm in float32."""

    def __init__(self, model: torch.nn.Module, sam_size: int, yolo_size: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, skip_empty: bool = True):
        from ..heap import reuse_large_blocks

        reuse_large_blocks()  # page faults of fresh mmaps cost TinyViT 40 % of its time (ldfsam.heap)
        self.model = model.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.sam_size = sam_size
        self.yolo_size = yolo_size
        self.skip_empty = skip_empty
        # Seconds spent per stage over all calls (benchmarks report them).
        self.times: Dict[str, float] = {"inputs": 0.0, "prompt_features": 0.0, "detect": 0.0, "encoder": 0.0,
                                        "decoder": 0.0}
        self.encoded = 0
        # Slices decoded on an embedding interpolated between two encoded neighbours (``between`` of ``predict``).
        self.interpolated = 0
        # With ``keep_embeddings``, each ``predict`` leaves the embeddings it encoded in ``embeddings`` (batch row ->
        # 256×G×G, a copy), so that slices between encoded ones can be decoded without an encoder pass.
        self.keep_embeddings = False
        self.embeddings: Dict[int, torch.Tensor] = {}
        # The refinement pass (infer/refine.py), set by the pipeline when asked for: None runs none.
        self.refiner = None
        # SPD's saliency map (model/saliency.py) on the embeddings the decoder uses: set ``want_saliency`` and each
        # ``predict`` leaves the head's logits of its batch in ``saliency`` (B×1×G×G on the embedding grid, float32
        # on the CPU; EMPTY_LOGIT on slices not encoded). One head pass per encoded slice, no encoder pass.
        self.want_saliency = False
        self.saliency: Optional[torch.Tensor] = None
        self.generator = _fused_generator(self.model)
        if getattr(getattr(self.model, "cfg", None), "sam", None) is not None and self.model.cfg.sam.encoder == \
                "tiny_vit":
            from ..model.tiny_vit_inference import prepare_for_inference

            # TinyViT for inference: BatchNorm folded into its convolutions, channels-last, bias tables gathered
            # once (same outputs to float rounding; docs/model.md, "Encoder speed"). In place: a loaded model.
            prepare_for_inference(self.model.image_encoder, channels_last=device.type == "cpu")
        if dtype == torch.bfloat16 and hasattr(self.model, "image_encoder"):
            # bf16 weights for the encoder (most of the parameters): half the memory, and autocast has no weight
            # copies to make or cache. Autocast still runs LayerNorm and softmax in float32.
            self.model.image_encoder.to(torch.bfloat16)
        # On the CPU a batch's slices run side by side, one group per core (``row_threads``): its own intra-op
        # threads for each, faster than every operator split across all cores (docs/segmentation.md).
        self._rows = RowThreads(0 if device.type == "cpu" else 1, self._autocast)
        if device.type == "cpu":
            # oneDNN's convolutions are fastest on NHWC; the YOLO backbone is almost all convolutions. (The SAM
            # parts are left alone: converting the adapters' weights would briefly hold two copies of them.)
            self.generator.to(memory_format=torch.channels_last)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def inputs(self, slices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """B×H×W in [0, 1] -> (SAM image B×3×S×S, YOLO image B×3×Y×Y), resized exactly as in training."""
        from ..data.preprocess import to_model_input

        sam = to_model_input(slices, self.sam_size).to(self.device)
        yolo = sam if self.yolo_size == self.sam_size else to_model_input(slices, self.yolo_size).to(self.device)
        return sam, yolo.contiguous(memory_format=torch.channels_last)

    def _detect(self, features) -> list:
        # The detection head on the features already computed: no second pass through the YOLO backbone.
        cfg = self.model.cfg
        return self.generator.detect_from_features(tuple(f.float() for f in features), conf=cfg.box_conf,
                                                   max_det=cfg.max_boxes)

    @torch.inference_mode()
    def predict(self, slices: torch.Tensor, keep: Optional[torch.Tensor] = None,
                between: Optional[Sequence[Optional[Between]]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Slices B×H×W -> (logits B×C×S×S float32 on the CPU, has_teeth B bool).

        ``keep`` (B bool) overrides the prompt generator's choice of slices that hold teeth (benchmarks use the
        phantom's truth to time a given share of tooth slices with untrained weights).
        ``between`` (B entries, None or (embedding a, embedding b, w)): a slice with an entry that holds teeth is
        not encoded; the decoder gets ``lerp(a, b, w)`` instead, with the slice's own prompt features.
        """
        screened = self.screen(slices, keep)
        return self.finish(screened, between), screened.keep

    @torch.inference_mode()
    def screen(self, slices: torch.Tensor, keep: Optional[torch.Tensor] = None) -> Screened:
        """The first half of :meth:`predict`: the model inputs, the prompt generator's features and which slices
        hold teeth (``keep`` overrides it). :meth:`finish` takes it on, also several batches' rows joined."""
        t = time.perf_counter()
        sam, yolo = self.inputs(slices)
        t = self._tick("inputs", t)
        n = slices.shape[0]
        with self._autocast():
            features = self._rows(self.generator.features, n, yolo)
        t = self._tick("prompt_features", t)
        detections = self._detect(features) if self._needs_boxes() else None
        if keep is None:
            if not self.skip_empty:
                keep = torch.ones(n, dtype=torch.bool)
            elif detections is not None:
                keep = torch.tensor([d.shape[0] > 0 for d in detections])
            else:
                # Which slices hold teeth needs no boxes (feature prompts do not use them): no NMS, and the
                # head runs in the backbone's precision.
                with self._autocast():
                    keep = self.generator.has_objects(features, conf=self.model.cfg.box_conf).cpu()
        self._tick("detect", t)
        return Screened(sam, tuple(features), detections, keep.to(torch.bool).cpu())

    @torch.inference_mode()
    def finish(self, screened: Screened, between: Optional[Sequence[Optional[Between]]] = None) -> torch.Tensor:
        """The second half of :meth:`predict`: the encoder and the decoder on the rows that hold teeth -> logits
        B×C×S×S float32 on the CPU (EMPTY_LOGIT on the others)."""
        model = self.model
        self.embeddings = {}
        t = time.perf_counter()
        keep, sam, features, detections = screened.keep, screened.sam, screened.features, screened.detections
        n = keep.shape[0]
        c = len(model.cfg.class_names)
        out = torch.full((n, c, self.sam_size, self.sam_size), EMPTY_LOGIT, dtype=torch.float32)
        idx = torch.nonzero(keep).flatten()
        self.saliency = None
        if idx.numel() == 0:
            if self.want_saliency:
                grid = self.sam_size // 4  # SAM's embedding grid (64 for 256-pixel inputs)
                self.saliency = torch.full((n, 1, grid, grid), EMPTY_LOGIT, dtype=torch.float32)
            return out
        sel = idx.to(self.device)
        rows = idx.tolist()
        mixed = [k for k, j in enumerate(rows) if between is not None and between[j] is not None]
        encode = sorted(set(range(len(rows))) - set(mixed))
        with self._autocast():
            embeddings = None
            if encode:
                embeddings = self._rows(model.encode_image, len(encode),
                                        sam.index_select(0, sel if not mixed else sel[encode]))
            if mixed:
                parts = [None] * len(rows)
                for e, k in enumerate(encode):
                    parts[k] = embeddings[e]
                for k in mixed:
                    a, b, w = between[rows[k]]
                    parts[k] = torch.lerp(a.to(self.device), b.to(self.device), float(w))
                embeddings = torch.stack(parts)
            if self.keep_embeddings:
                self.embeddings = {rows[k]: embeddings[k].clone() for k in encode}
            t = self._tick("encoder", t)
            feats = tuple(f.index_select(0, sel) for f in features)
            boxes = None
            if self._needs_boxes():
                boxes = [detections[i] for i in rows]
            logits = self._rows(model.decode, len(rows), embeddings, feats, boxes)
            if self.refiner is not None:
                logits = self.refiner.refine(embeddings, logits)
            if self.want_saliency:
                head = model.saliency_head(embeddings).float().cpu()
                self.saliency = torch.full((n,) + tuple(head.shape[1:]), EMPTY_LOGIT, dtype=torch.float32)
                self.saliency[idx] = head
        out[idx] = logits.float().cpu()
        self._tick("decoder", t)
        self.encoded += len(encode)
        self.interpolated += len(mixed)
        return out

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.times[stage] += now - t0
        return now

    def _needs_boxes(self) -> bool:
        return self.model.cfg.uses_boxes
