"""Volume segmentation: a CBCT volume in, a tooth label map on the input's exact voxel grid out.

The stages, each in its own module and all importable from here: read and validate the input
(:func:`read_input`, ``input_checks``) -> plan the model slices (:func:`plan_slices`, ``slice_plan``: reorient,
only for volumes not stored axially; percentile window; axial slices about one model pixel apart) -> load the
model (:func:`load_model`, ``model_loading``) -> predict (:func:`predict`, ``volume_prediction``: coarse to fine,
batched prompt generator + SAM, the encoder only where the prompt generator finds teeth; per-slice logits
trilinearly back onto the input grid, thresholded) -> post-process (:func:`clean_up`, ``cleanup``: 3D clean-up,
inverse reorientation) -> write (:func:`write_outputs`, ``result``, atomic). This module runs them:
:func:`segment_volume` from a file to files; :func:`segment_image` plan to post-process for a volume in memory
and a model loaded once. How to segment is :class:`SegmentOptions` (``segment_options``).

Slices are taken in index space as in training (``ldfsam.data.preprocess``). Resampling to the model's target
spacing and resizing a slice to the model input compose into one resize of the whole slice, so the model sees the
same field of view at S×S either way. The model slices are input slices, and the ones between them are
interpolated along z (``slice_sampling``), so the result lands on the input grid exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import Arg, Cancelled, ConfigError
from ..heap import release_free_memory
from ..progress import Progress
from . import outputs as out_io
from .cleanup import clean_up
from .input_checks import MAX_ANISOTROPY, MIN_EXTENT_MM, MIN_VOXELS, PathLike, check_geometry, read_input
from .model_loading import _is_loaded, check_model_file, load_model
from .result import SegmentationResult, write_outputs
from .segment_options import SegmentOptions
from .slice_plan import SlicePlan, plan_slices
from .slice_sampling import SliceSpacing
from .volume_prediction import Prediction, predict, saliency_map

# The stages' names stay importable from here (ldfsam.infer, cohort runs, scripts and benchmarks use them); and
# segment_volume calls them through this module, so that a benchmark wrapping one here times it.
__all__ = ["MAX_ANISOTROPY", "MIN_EXTENT_MM", "MIN_VOXELS", "PathLike", "Prediction", "SegmentOptions",
           "SegmentationResult", "SlicePlan", "check_geometry", "check_model_file", "clean_up", "load_model",
           "plan_slices", "predict", "read_input", "saliency_map", "segment_image", "segment_volume",
           "write_outputs"]


def _device_and_precision(device: str, precision: str, progress: Progress):
    import torch

    from ..cpu_precision import cache_path, cached_measurement, cpu_supports_bf16
    from .predictor import resolve_device, resolve_precision

    dev = resolve_device(device)
    if precision == "auto" and dev.type == "cpu" and cpu_supports_bf16() and cached_measurement() is None:
        progress.log("segment", f"measuring whether bf16 or fp32 is faster on this CPU (once; kept in "
                                f"{cache_path()})")
    dtype = resolve_precision(precision, dev)
    if dtype == torch.bfloat16 and dev.type == "cpu" and not cpu_supports_bf16():
        progress.log("segment", "this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 runs emulated, "
                                "tens of times slower than fp32; precision auto picks fp32 here", level="warning")
    return dev, dtype


def _finish(plan: SlicePlan, prediction: Prediction, loaded_classes: List[str], options: SegmentOptions,
            timings: Dict[str, float]) -> SegmentationResult:
    t = time.perf_counter()
    labels, probs, names = clean_up(prediction, plan, loaded_classes, options)
    saliency = None if prediction.saliency is None else np.ascontiguousarray(plan.orient.invert(prediction.saliency))
    timings["cleanup"] = time.perf_counter() - t
    return SegmentationResult(labels=labels, grid=plan.grid, segment_names=names, probabilities=probs,
                              saliency=saliency,
                              slices=plan.shape[0], slices_with_teeth=prediction.slices_with_teeth,
                              model_slices=prediction.model_slices, batch=prediction.batch, timings=timings,
                              encoded_slices=prediction.encoded)


def _done(progress: Progress, result: SegmentationResult, output: Optional[PathLike]) -> None:
    said = (f"teeth on {result.slices_with_teeth} of the {result.model_slices} slices the model ran on "
            f"({result.slices} in the volume)")
    progress.done("segment", message=f"{said}; wrote {output}" if output else said, slices=result.slices,
                  model_slices=result.model_slices, slices_with_teeth=result.slices_with_teeth,
                  segments=len(result.segment_names), seconds=round(result.timings["total"], 3), **result.outputs)


class _Loading:
    """:func:`load_model` on a thread of its own; :meth:`result` waits for it and raises its error, if any."""

    def __init__(self, model: Any, dtype) -> None:
        import threading

        self._model, self._dtype = model, dtype
        self._loaded: Any = None
        self._error: Optional[BaseException] = None
        self.seconds = 0.0
        # Not a daemon: a daemon thread still inside torch's C++ code when the interpreter exits is ended by
        # pthread_exit, and the process aborts ("terminate called without an active exception", status -6) instead
        # of reporting a bad input with status 2 or a cancel with 130.
        self._thread = threading.Thread(target=self._run, name="ldfsam-load-model")
        self._thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            self._loaded = load_model(self._model, encoder_dtype=self._dtype)
        except BaseException as e:  # handed to the caller in result()
            self._error = e
        self.seconds = time.perf_counter() - t

    def abandon(self) -> None:
        """Wait for the thread and drop what it loaded: the input failed or the run was cancelled meanwhile."""
        self._thread.join()
        self._loaded = self._error = None

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._loaded


def segment_image(image: sitk.Image, model, *, options: Optional[SegmentOptions] = None, device: str = "auto",
                  progress: Optional[Progress] = None, name: str = "volume",
                  should_stop: Optional[Callable[[], bool]] = None,
                  keep_slices: Optional[np.ndarray] = None) -> SegmentationResult:
    """Segment a volume already in memory with a model already loaded (:func:`load_model`), writing nothing:
    the way to segment many volumes with one model. ``image``: a 3D scalar image (checked as
    :func:`read_input` checks a file); ``name`` names it in messages. Returns the result on the image's grid."""
    options = (options or SegmentOptions()).validate()
    progress = progress or Progress("none")
    t0 = time.perf_counter()
    if not _is_loaded(model):
        raise ConfigError("{}: give a loaded model (ldfsam.infer.load_model)", arguments=[Arg("model", model)])
    check_geometry(image, Path(name))
    dev, dtype = _device_and_precision(device, options.precision, progress)
    plan = plan_slices(image, model.preprocess, options.slice_spacing, name, None, progress)
    timings = {"load": 0.0, "prepare": time.perf_counter() - t0}
    t1 = time.perf_counter()
    prediction = predict(model, plan, options, dev, dtype, progress, should_stop, keep_slices)
    timings["predict"] = time.perf_counter() - t1
    timings.update(prediction.times)
    result = _finish(plan, prediction, list(model.model_cfg.class_names), options, timings)
    timings["write"] = 0.0
    timings["total"] = time.perf_counter() - t0
    _done(progress, result, None)
    return result


def segment_volume(input: PathLike, output: Optional[PathLike] = None, *, model: Any = None, device: str = "auto",
                   batch: int = 4, progress: Optional[Progress] = None, threshold: float = 0.5,
                   min_island_mm3: float = 10.0, fill: bool = True, split: bool = False,
                   probabilities: Optional[PathLike] = None, force: bool = False, precision: str = "auto",
                   memory_limit: Optional[int] = None, slice_spacing: SliceSpacing = "auto",
                   keep_slices: Optional[np.ndarray] = None,
                   should_stop: Optional[Callable[[], bool]] = None,
                   spacing: Optional[Sequence[float]] = None, refine: bool = False,
                   encoder: str = "auto", interpolate_embeddings: bool = False) -> SegmentationResult:
    """Segment the teeth in the volume ``input`` and write ``output`` (.nii/.nii.gz label map or .seg.nrrd).

    model: a model name (``ldfsam models list``), a ``.safetensors`` path, or a loaded checkpoint; default: the
    bundled demo model. threshold: on the tooth probability. min_island_mm3: connected components smaller than
    this are removed. split: label each tooth separately. probabilities: also write the probability map there.
    memory_limit: bytes the run may use (default 80% of the available memory); the batch shrinks to fit.
    slice_spacing: "auto" runs the model on candidate slices about one model pixel apart, coarse to fine, and
    interpolates the rest (``adaptive_slices``); "Npx" on every candidate N model pixels apart; "native" on every
    slice; a number: candidates that many mm apart.
    keep_slices: bool per input slice (model order) overriding which slices the encoder runs on (benchmarks).
    spacing: the true voxel size (x, y, z) in mm, replacing the file's (one whose header says 0 is refused without).
    refine: the lite family's refinement pass (``ldfsam.infer.refine``).
    encoder: a lite model's image encoder: "auto" (the one it was trained on), "full" or "half"
    (``ldfsam.infer.encoder_choice``).
    interpolate_embeddings: with slice_spacing "auto", decode a slice between two encoded neighbouring candidates
    on their interpolated embeddings instead of encoding it (off by default: :class:`SegmentOptions`).
    Every argument and both outputs are checked before any work; an output is never the input, even with
    ``force``. Raises InputError/OutputError/CheckpointError/ConfigError naming the file or the argument;
    KeyboardInterrupt or ``should_stop()`` leave no output.
    """
    options = SegmentOptions(batch, threshold, min_island_mm3, fill, split, precision, memory_limit, slice_spacing,
                             probabilities is not None, spacing, refine, encoder=encoder,
                             interpolate_embeddings=interpolate_embeddings).validate()
    progress = progress or Progress("none")
    t0 = time.perf_counter()
    input = Path(input)
    out_io.check_outputs({"output": output, "probabilities": probabilities}, input, force)
    dev, dtype = _device_and_precision(device, precision, progress)
    model_file = check_model_file(model)
    if model_file is not None:
        from ..checkpoint import read_checkpoint_configs

        pre = read_checkpoint_configs(model_file)[1]
    else:
        pre = model.preprocess
    # The model file loads on a thread of its own while the volume is read and planned: reading, planning and
    # building the model each keep one core busy (0.3-0.5 s each; docs/segmentation.md, "Headroom").
    loading = _Loading(model if model_file is None else model_file, dtype)
    try:
        image = read_input(input, options.spacing)
        plan = plan_slices(image, pre, slice_spacing, input.name, input, progress)
    except BaseException:
        loading.abandon()  # the input's error (or the cancel) is the one to report; no thread outlives the call
        raise
    del image  # the model slices' grey values are all that is needed from here on
    t = time.perf_counter()
    loaded = loading.result()
    # "load": the model's own loading time, most of it beside reading and planning; "prepare": the rest until both
    # are ready.
    timings = {"load": loading.seconds}
    t1 = time.perf_counter()
    timings["prepare"] = t - t0
    try:
        prediction = predict(loaded, plan, options, dev, dtype, progress, should_stop, keep_slices)
    except Cancelled as e:
        raise Cancelled(e.message, output) from None
    timings["predict"] = time.perf_counter() - t1
    timings.update(prediction.times)
    classes = list(loaded.model_cfg.class_names)
    del loaded
    plan.release_slices()
    release_free_memory()  # the model's memory, before the clean-up needs its own
    result = _finish(plan, prediction, classes, options, timings)
    del prediction
    t3 = time.perf_counter()
    result.outputs = write_outputs(result, output, probabilities, force)
    timings["write"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - t0
    _done(progress, result, output)
    return result
