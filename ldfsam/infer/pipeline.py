"""Volume segmentation: a CBCT volume in, a tooth label map on the input's exact voxel grid out.

The stages, each its own function: read and validate the input (:func:`read_input`) -> plan the model slices
(:func:`plan_slices`: reorient, only for volumes not stored axially; percentile window; axial slices about one
model pixel apart) -> load the model (:func:`load_model`) -> predict (:func:`predict`: coarse to fine, batched
prompt generator + SAM, the encoder only where the prompt generator finds teeth; per-slice logits trilinearly
back onto the input grid, thresholded) -> post-process (:func:`clean_up`: 3D clean-up, inverse reorientation)
-> write (:func:`write_outputs`, atomic). :func:`segment_volume` runs them all from a file to files;
:func:`segment_image` runs plan to post-process for a volume in memory and a model loaded once.

Slices are taken in index space as in training (``ldfsam.data.preprocess``). Resampling to the model's target
spacing and resizing a slice to the model input compose into one resize of the whole slice, so the model sees the
same field of view at S×S either way. The model slices are input slices, and the ones between them are
interpolated along z (``slice_sampling``), so the result lands on the input grid exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import Arg, Cancelled, ConfigError, InputError
from ..heap import release_free_memory
from ..progress import Progress
from . import outputs as out_io
from .adaptive_slices import COARSE_STEP, SliceSchedule
from .fdi import fdi_segment_names
from .memory import plan_memory
from .orientation import IDENTITY, Reorientation, reorientation_for
from .postprocess import bounding_box, fill_holes, remove_islands, split_teeth
from .slice_sampling import SliceFiller, SliceSpacing, parse_slice_spacing, resolve_slice_spacing, slice_positions

PathLike = Union[str, Path]
# Largest ratio of voxel spacings accepted: the model works on near-isotropic CBCT (paper: 0.25 mm).
MAX_ANISOTROPY = 8.0
# The smallest volume that can hold a tooth: the narrowest tooth (a lower central incisor) is about 5 mm across,
# and fewer than 8 voxels along an axis show no shape at all.
MIN_EXTENT_MM = 5.0
MIN_VOXELS = 8


@dataclass
class SegmentOptions:
    """How to segment (:func:`segment_volume`'s keyword arguments of the same names)."""

    batch: int = 8
    threshold: float = 0.5
    min_island_mm3: float = 10.0
    fill: bool = True
    split: bool = False
    precision: str = "auto"
    memory_limit: Optional[int] = None
    slice_spacing: SliceSpacing = "auto"
    probabilities: bool = False  # also return the tooth probability map
    spacing: Optional[Tuple[float, float, float]] = None  # the true voxel size (x, y, z) mm, replacing the file's
    # The lite family's refinement pass (infer/refine.py): each component of the automatic mask re-segmented by
    # LiteMedSAM's unchanged decoder from its box. One-class lite models only.
    refine: bool = False
    # Also return SPD's saliency map (models with a saliency head): the head's tooth probability on every slice the
    # encoder ran on, interpolated between them as the logits are; 0 where the prompt generator found no teeth.
    saliency: bool = False

    def validate(self) -> SegmentOptions:
        """Raise ConfigError naming the argument of the first bad value."""
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("{}: must be between 0 and 1", arguments=[Arg("threshold", self.threshold)])
        if self.min_island_mm3 < 0:
            raise ConfigError("{}: must not be negative", arguments=[Arg("min_island_mm3", self.min_island_mm3)])
        if self.batch < 1:
            raise ConfigError("{}: must be at least 1", arguments=[Arg("batch", self.batch)])
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError("{}: use auto, fp32 or bf16", arguments=[Arg("precision", self.precision)])
        parse_slice_spacing(self.slice_spacing)
        if self.spacing is not None:
            from ..data.volume import check_spacing

            self.spacing = check_spacing(self.spacing)
        return self


@dataclass
class SegmentationResult:
    """What :func:`segment_volume` produced. ``labels`` is z×y×x on the input grid (0 background), ``grid`` that
    grid (size, spacing, origin, direction)."""

    labels: np.ndarray
    grid: Any
    segment_names: list
    probabilities: Optional[np.ndarray] = None
    saliency: Optional[np.ndarray] = None  # SPD's tooth saliency map (z×y×x float32 on the input grid), if asked
    slices: int = 0
    slices_with_teeth: int = 0  # model slices on which the prompt generator found teeth (encoder passes)
    model_slices: int = 0  # slices the model ran on (all of them with slice_spacing="native")
    batch: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)


@dataclass
class SlicePlan:
    """The model slices of one volume: their grey values and where they sit. Axes are the axial view's
    (z, y, x) = (S, P, L); ``orient`` maps the input's array to it and back."""

    name: str  # for messages: the input's file name
    source: Optional[Path]  # the input file, named in errors
    grid: Any  # the input grid (ldfsam.data.preprocess.Grid)
    orient: Reorientation
    shape: Tuple[int, int, int]  # (nz, ny, nx) of the axial view
    spacing: Tuple[float, float, float]  # (x, y, z) mm of the axial view
    positions: np.ndarray  # indices of the model slices along z
    slices: np.ndarray  # their grey values, len(positions)×ny×nx
    window: Tuple[float, float]  # intensity window for normalisation
    adaptive: bool  # coarse to fine ("auto")

    def release_slices(self) -> None:
        """Drop the grey values (the prediction is done with them), keeping the geometry."""
        self.slices = np.empty((0,) + self.slices.shape[1:], self.slices.dtype)


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


# -- 1. read and validate the input -----------------------------------------------------------------------------


def read_input(path: PathLike, spacing: Optional[Sequence[float]] = None) -> sitk.Image:
    """Read a CBCT volume (file or DICOM folder) and check that it is one the model can segment. ``spacing``:
    the true voxel size (x, y, z) in mm, replacing the file's."""
    from ..data.volume import read_volume

    image = read_volume(path, spacing=spacing)
    check_geometry(image, Path(path))
    return image


def check_geometry(image: sitk.Image, path: Optional[Path] = None) -> None:
    """Raise InputError naming ``path`` for a volume the model cannot segment: bad or too anisotropic voxel
    spacing, a single slice, or too small to hold a tooth."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"has an invalid voxel spacing {tuple(spacing)}", path)
    ratio = spacing.max() / spacing.min()
    if ratio > MAX_ANISOTROPY:
        sp = " x ".join(f"{s:g}" for s in spacing)
        raise InputError(f"voxel spacing {sp} mm is too anisotropic (ratio {ratio:.1f} > {MAX_ANISOTROPY:g}); the "
                         "model works on near-isotropic CBCT: resample the volume to isotropic voxels first", path)
    size = image.GetSize()
    if min(size) < 2:
        raise InputError(f"is a single slice thick (size {'x'.join(map(str, size))}); a 3D volume is expected",
                         path)
    extent = spacing * np.asarray(size)
    if min(size) < MIN_VOXELS or extent.min() < MIN_EXTENT_MM:
        mm = " x ".join(f"{e:.3g}" for e in extent)
        raise InputError(f"is too small to hold a tooth: {'x'.join(map(str, size))} voxels, {mm} mm; a volume "
                         f"needs at least {MIN_VOXELS} voxels and {MIN_EXTENT_MM:g} mm along every axis", path)


# -- 2. plan the model slices ------------------------------------------------------------------------------------


def plan_slices(image: sitk.Image, pre, slice_spacing: SliceSpacing = "auto", name: str = "volume",
                source: Optional[Path] = None, progress: Optional[Progress] = None) -> SlicePlan:
    """Choose the model slices of ``image`` for a model with preprocessing ``pre`` and keep their grey values:
    after this the volume itself is no longer needed (at 2.5 input slices per model slice, 60% of its memory
    can go before the model arrives)."""
    from ..data.preprocess import Grid, intensity_window, slice_axis

    orient = reorientation_for(image.GetDirection()) if slice_axis(image) != "S" else IDENTITY
    if not orient.identity and progress is not None:
        progress.log("segment", f"{name} is not stored in axial slices; segmenting its axial planes",
                     level="warning")
    view = orient.apply(sitk.GetArrayViewFromImage(image))  # (z, y, x) = (S, P, L), no copy
    nz, ny, nx = view.shape
    spacing = tuple(float(s) for s in orient.spacing(Grid.of(image).spacing))
    positions = slice_positions(nz, spacing[2], resolve_slice_spacing(slice_spacing, spacing, (nz, ny, nx),
                                                                       pre.sam_size))
    adaptive = str(slice_spacing).strip().lower() == "auto" and len(positions) > 2
    return SlicePlan(name, source, Grid.of(image), orient, (nz, ny, nx), spacing, positions,
                     np.ascontiguousarray(view[positions]), intensity_window(view, pre), adaptive)


# -- 3. load the model -------------------------------------------------------------------------------------------


def _is_loaded(model: Any) -> bool:
    return model is not None and all(hasattr(model, a) for a in ("model", "model_cfg", "preprocess"))


def check_model_file(model: Any) -> Optional[Path]:
    """Resolve a model name or path and check its header (cheap), so a bad model fails before any work; None for
    a model already loaded."""
    if _is_loaded(model):
        return None
    from ..checkpoint import read_checkpoint_meta
    from ..models import resolve_model

    path = resolve_model(model)
    read_checkpoint_meta(path)
    return path


def load_model(model: Any = None, encoder_dtype=None):
    """A LoadedCheckpoint from a name, a path, or an object that already has model/model_cfg/preprocess. A file
    that is not a model raises CheckpointError; anything else is a bug and surfaces as it is."""
    import torch

    if _is_loaded(model):
        return model
    from ..checkpoint import load_checkpoint
    from ..models import resolve_model

    return load_checkpoint(resolve_model(model), encoder_dtype=encoder_dtype or torch.float32)


# -- 4. predict --------------------------------------------------------------------------------------------------


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
        logits, has = predictor.predict(torch.from_numpy(block), keep)
        if saliency is not None:
            saliency.update({int(plan.positions[i]): predictor.saliency[j] if h else None
                             for j, (i, h) in enumerate(zip(chosen, has.tolist()))})
        with_teeth += int(has.sum())
        schedule.record(chosen, logits, has)
        progress.update("segment", schedule.resolved, m, slices_with_teeth=with_teeth,
                        model_slices=schedule.model_slices)
    return Prediction(labels, probs, with_teeth, schedule.model_slices, memory.batch,
                      {f"predict.{k}": round(v, 3) for k, v in predictor.times.items()},
                      None if saliency is None else saliency_map(saliency, plan.shape))


def saliency_map(logits: Dict[int, Any], shape: Tuple[int, int, int]) -> np.ndarray:
    """SPD's saliency probabilities on every slice (z×y×x float32) from the head's logits (1×G×G, None: no
    teeth) of the model slices at their z, filled between them as the mask logits are."""
    from .slice_sampling import fill_probabilities

    return fill_probabilities(logits, shape)


# -- 5. post-process ---------------------------------------------------------------------------------------------


def clean_up(prediction: Prediction, plan: SlicePlan, class_names: List[str],
             options: SegmentOptions) -> Tuple[np.ndarray, Optional[np.ndarray], List[str]]:
    """3D clean-up class by class inside the box holding all teeth (islands, holes; each tooth its own label
    with ``options.split``), then back to the input's array order: (labels, probabilities, segment names)."""
    labels, spacing, n_classes = prediction.labels, plan.spacing, len(class_names)
    box = bounding_box(labels)
    if box is not None and n_classes == 1:
        mask = labels[box].view(bool)  # the 0/1 labels themselves, cleaned in place: no mask-sized copy
        remove_islands(mask, spacing, options.min_island_mm3)
        if options.fill:
            fill_holes(mask)
    elif box is not None:
        sub = labels[box]  # a view: changes land in ``labels``
        for c in range(1, n_classes + 1):
            mask = sub == c
            if not mask.any():
                continue
            remove_islands(mask, spacing, options.min_island_mm3)
            if options.fill:
                fill_holes(mask)
            sub[sub == c] = 0
            sub[mask] = c
    first = class_names[0]
    names = list(class_names) if n_classes > 1 else [first.capitalize() if first == "tooth" else first]
    if options.split:
        labels, _ = split_teeth(labels > 0, spacing, options.min_island_mm3)
        names = fdi_segment_names(plan.orient.invert(labels), plan.grid)  # estimated FDI numbers, "Tooth 11"
    labels_in = np.ascontiguousarray(plan.orient.invert(labels))
    probs = prediction.probabilities
    probs_in = None if probs is None else np.ascontiguousarray(plan.orient.invert(probs))
    return labels_in, probs_in, names


# -- 6. write ----------------------------------------------------------------------------------------------------


def write_outputs(result: SegmentationResult, output: Optional[PathLike], probabilities: Optional[PathLike],
                  force: bool = False) -> Dict[str, str]:
    """Write the label map (.nii.gz etc. or .seg.nrrd, by suffix) and the probability map, each atomically."""
    written: Dict[str, str] = {}
    if output is not None:
        if out_io.output_kind(Path(output)) == "seg":
            out_io.write_segmentation(Path(output), result.labels, result.grid, names=result.segment_names,
                                      overwrite=force)
        else:
            out_io.write_label_map(Path(output), result.labels, result.grid, overwrite=force)
        written["output"] = str(output)
    if probabilities is not None:
        if result.probabilities is None:
            raise ConfigError("{}: the result holds no probabilities (segment with SegmentOptions.probabilities)",
                              arguments=[Arg("probabilities", str(probabilities))])
        out_io.write_probabilities(Path(probabilities), result.probabilities, result.grid, overwrite=force)
        written["probabilities"] = str(probabilities)
    return written


# -- the whole -----------------------------------------------------------------------------------------------------


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
                              model_slices=prediction.model_slices, batch=prediction.batch, timings=timings)


def _done(progress: Progress, result: SegmentationResult, output: Optional[PathLike]) -> None:
    said = (f"teeth on {result.slices_with_teeth} of the {result.model_slices} slices the model ran on "
            f"({result.slices} in the volume)")
    progress.done("segment", message=f"{said}; wrote {output}" if output else said, slices=result.slices,
                  model_slices=result.model_slices, slices_with_teeth=result.slices_with_teeth,
                  segments=len(result.segment_names), seconds=round(result.timings["total"], 3), **result.outputs)


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
                   batch: int = 8, progress: Optional[Progress] = None, threshold: float = 0.5,
                   min_island_mm3: float = 10.0, fill: bool = True, split: bool = False,
                   probabilities: Optional[PathLike] = None, force: bool = False, precision: str = "auto",
                   memory_limit: Optional[int] = None, slice_spacing: SliceSpacing = "auto",
                   keep_slices: Optional[np.ndarray] = None,
                   should_stop: Optional[Callable[[], bool]] = None,
                   spacing: Optional[Sequence[float]] = None, refine: bool = False) -> SegmentationResult:
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
    Every argument and both outputs are checked before any work; an output is never the input, even with
    ``force``. Raises InputError/OutputError/CheckpointError/ConfigError naming the file or the argument;
    KeyboardInterrupt or ``should_stop()`` leave no output.
    """
    options = SegmentOptions(batch, threshold, min_island_mm3, fill, split, precision, memory_limit, slice_spacing,
                             probabilities is not None, spacing, refine).validate()
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
    image = read_input(input, options.spacing)
    plan = plan_slices(image, pre, slice_spacing, input.name, input, progress)
    del image  # the model slices' grey values are all that is needed from here on
    t = time.perf_counter()
    loaded = load_model(model if model_file is None else model_file, encoder_dtype=dtype)
    timings = {"load": time.perf_counter() - t}
    t1 = time.perf_counter()
    timings["prepare"] = t1 - t0 - timings["load"]
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

