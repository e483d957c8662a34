"""Volume segmentation: a CBCT volume in, a tooth label map on the input's exact voxel grid out.

read -> (reorient, only for volumes not stored axially) -> normalise (percentile window) -> axial slices, about
one model pixel apart, coarse to fine -> batched prompt generator + SAM (encoder only where the prompt generator
finds teeth) -> per-slice logits -> trilinear back onto the input grid -> threshold -> 3D clean-up -> inverse
reorientation -> outputs (atomic).

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
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..checkpoint import read_checkpoint_configs
from ..errors import Cancelled, CheckpointError, ConfigError, InputError
from ..heap import release_free_memory
from ..progress import Progress
from . import outputs as out_io
from .adaptive_slices import COARSE_STEP, SliceSchedule
from .fdi import fdi_segment_names
from .memory import plan_memory
from .orientation import IDENTITY, reorientation_for
from .postprocess import bounding_box, fill_holes, remove_islands, split_teeth
from .slice_sampling import SliceFiller, SliceSpacing, resolve_slice_spacing, slice_positions

PathLike = Union[str, Path]
# Largest ratio of voxel spacings accepted: the model works on near-isotropic CBCT (paper: 0.25 mm).
MAX_ANISOTROPY = 8.0


@dataclass
class SegmentationResult:
    """What :func:`segment_volume` produced. ``labels`` is z×y×x on the input grid (0 background), ``grid`` that
    grid (size, spacing, origin, direction)."""

    labels: np.ndarray
    grid: Any
    segment_names: list
    probabilities: Optional[np.ndarray] = None
    slices: int = 0
    slices_with_teeth: int = 0  # model slices on which the prompt generator found teeth (encoder passes)
    model_slices: int = 0  # slices the model ran on (all of them with slice_spacing="native")
    batch: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)


def _check_outputs(output: Optional[PathLike], probabilities: Optional[PathLike], force: bool) -> None:
    from ..errors import LDFSAMError

    for p in (output, probabilities):
        if p is None:
            continue
        if Path(p).exists() and not force:
            raise LDFSAMError("exists already; pass --force to overwrite it", p)
        if Path(p).is_dir():
            raise InputError("is a folder; give a file name for the output", p)
    if output is not None:
        out_io.output_kind(Path(output))
    if probabilities is not None and out_io.output_kind(Path(probabilities)) != "labelmap":
        raise InputError("probability maps are written as .nii.gz, .nii, .nrrd or .mha", probabilities)


def _check_geometry(image: sitk.Image, path: Path) -> None:
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


def _check_model_file(model: Any) -> Optional[Path]:
    """Resolve a model name or path and check its header (cheap), so a bad model fails before any work."""
    if model is not None and all(hasattr(model, a) for a in ("model", "model_cfg", "preprocess")):
        return None
    from ..checkpoint import read_checkpoint_meta
    from ..models import resolve_model

    path = resolve_model(model)
    read_checkpoint_meta(path)
    return path


def load_model(model: Any = None, encoder_dtype=None):
    """A LoadedCheckpoint from a name, a path, or an object that already has model/model_cfg/preprocess."""
    import torch

    if model is not None and all(hasattr(model, a) for a in ("model", "model_cfg", "preprocess")):
        return model
    from ..checkpoint import load_checkpoint
    from ..models import resolve_model

    path = resolve_model(model)
    try:
        return load_checkpoint(path, encoder_dtype=encoder_dtype or torch.float32)
    except (CheckpointError, ConfigError):
        raise
    except Exception as e:  # a model file that is not even a safetensors file, or of another network
        raise CheckpointError(f"cannot load this model file ({type(e).__name__}: {e})", path) from None


def segment_volume(input: PathLike, output: Optional[PathLike] = None, *, model: Any = None, device: str = "auto",
                   batch: int = 8, progress: Optional[Progress] = None, threshold: float = 0.5,
                   min_island_mm3: float = 10.0, fill: bool = True, split: bool = False,
                   probabilities: Optional[PathLike] = None, force: bool = False, precision: str = "auto",
                   memory_limit: Optional[int] = None, slice_spacing: SliceSpacing = "auto",
                   keep_slices: Optional[np.ndarray] = None,
                   should_stop: Optional[Callable[[], bool]] = None) -> SegmentationResult:
    """Segment the teeth in the volume ``input`` and write ``output`` (.nii/.nii.gz label map or .seg.nrrd).

    model: a model name (``ldfsam models list``), a ``.safetensors`` path, or a loaded checkpoint; default: the
    bundled demo model. threshold: on the tooth probability. min_island_mm3: connected components smaller than
    this are removed. split: label each tooth separately. probabilities: also write the probability map there.
    memory_limit: bytes the run may use (default 80% of the available memory); the batch shrinks to fit.
    slice_spacing: "auto" runs the model on candidate slices about one model pixel apart, coarse to fine, and
    interpolates the rest (``adaptive_slices``); "Npx" on every candidate N model pixels apart; "native" on every
    slice; a number: candidates that many mm apart.
    keep_slices: bool per input slice (model order) overriding which slices the encoder runs on (benchmarks).
    Raises InputError/CheckpointError naming the file; KeyboardInterrupt or ``should_stop()`` leave no output.
    """
    import torch

    from ..cpu_precision import cache_path, cached_measurement, cpu_supports_bf16
    from .predictor import SlicePredictor, resolve_device, resolve_precision

    progress = progress or Progress("none")
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    input = Path(input)
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1")
    if min_island_mm3 < 0:
        raise ConfigError(f"--min-island-mm3 {min_island_mm3}: must not be negative")
    if batch < 1:
        raise ConfigError(f"--batch {batch}: must be at least 1")
    _check_outputs(output, probabilities, force)
    dev = resolve_device(device)

    resolve_slice_spacing(slice_spacing, (1.0, 1.0, 1.0), (2, 2, 2), 256)  # a bad option fails before any work
    from ..data.volume import read_volume

    model_file = _check_model_file(model)
    pre = model.preprocess if model_file is None else read_checkpoint_configs(model_file)[1]
    image = read_volume(input)
    _check_geometry(image, input)
    from ..data.preprocess import Grid, intensity_window, normalize, slice_axis

    orient = reorientation_for(image.GetDirection()) if slice_axis(image) != "S" else IDENTITY
    if not orient.identity:
        progress.log("segment", f"{input.name} is not stored in axial slices; segmenting its axial planes",
                     level="warning")
    grid = Grid.of(image)
    view = orient.apply(sitk.GetArrayViewFromImage(image))  # (z, y, x) = (S, P, L), no copy
    nz, ny, nx = view.shape
    spacing = orient.spacing(grid.spacing)
    positions = slice_positions(nz, spacing[2], resolve_slice_spacing(slice_spacing, spacing, (nz, ny, nx),
                                                                       pre.sam_size))
    window = intensity_window(view, pre)
    # From here on only the model slices' grey values are needed: keep those, free the volume before the model
    # arrives (at 2.5 input slices per model slice, 60% of the volume's memory).
    slices = np.ascontiguousarray(view[positions])
    del view, image
    if precision == "auto" and dev.type == "cpu" and cpu_supports_bf16() and cached_measurement() is None:
        progress.log("segment", f"measuring whether bf16 or fp32 is faster on this CPU (once; kept in "
                                f"{cache_path()})")
    dtype = resolve_precision(precision, dev)
    if dtype == torch.bfloat16 and dev.type == "cpu" and not cpu_supports_bf16():
        progress.log("segment", "this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 runs emulated, "
                                "tens of times slower than fp32; --precision auto picks fp32 here", level="warning")
    loaded = load_model(model if model_file is None else model_file, encoder_dtype=dtype)
    cfg = loaded.model_cfg
    timings["load"] = time.perf_counter() - t0
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    plan = plan_memory(input, (nz, ny, nx), cfg.sam.preset, batch, model_bytes, probabilities is not None,
                       memory_limit, held_bytes=slices.nbytes)
    if plan.reduced:
        progress.log("segment", f"batch reduced from {batch} to {plan.batch} to fit in "
                                f"{plan.available_bytes / 2**30:.1f} GB of memory", level="warning")
    predictor = SlicePredictor(loaded.model, pre.sam_size, pre.yolo_size, dev, dtype)
    classes = list(cfg.class_names)
    n_classes = len(classes)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    probs = np.zeros((nz, ny, nx), dtype=np.float32) if probabilities is not None else None
    cut = math.log(threshold / (1.0 - threshold))
    m = len(positions)
    adaptive = str(slice_spacing).strip().lower() == "auto" and m > 2
    schedule = SliceSchedule(positions, SliceFiller(labels, cut, n_classes, probs), cut,
                             coarse=COARSE_STEP if adaptive else 1)
    with_teeth = 0
    every = f"{spacing[2] * (nz - 1) / max(1, m - 1):.2g} mm"
    where = (f"up to {m} ({every} apart where the teeth change, up to {COARSE_STEP}x that where they do not)"
             if adaptive else f"{m} (every {every})" if m < nz else f"{m} (every slice)")
    progress.start("segment", total=m, message=f"segmenting {input.name}: {nz} slices of {nx}x{ny}, the model on "
                   f"{where}", batch=plan.batch, device=str(dev), precision=str(dtype).replace("torch.", ""))
    t1 = time.perf_counter()
    timings["prepare"] = t1 - t0 - timings["load"]
    while (chosen := schedule.next_batch(plan.batch)) is not None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled; no output was written", output)
        block = normalize(slices[chosen], window)
        keep = None
        if keep_slices is not None:
            keep = torch.from_numpy(np.asarray(keep_slices, dtype=bool)[positions[chosen]])
        logits, has = predictor.predict(torch.from_numpy(block), keep)
        with_teeth += int(has.sum())
        schedule.record(chosen, logits, has)
        progress.update("segment", schedule.resolved, m, slices_with_teeth=with_teeth,
                        model_slices=schedule.model_slices)
    m = schedule.model_slices
    t2 = time.perf_counter()
    timings["predict"] = t2 - t1
    timings.update({f"predict.{k}": round(v, 3) for k, v in predictor.times.items()})
    del predictor, loaded, block, logits, schedule, slices
    release_free_memory()  # the model's memory, before the clean-up needs its own

    # 3D clean-up, class by class, inside the box holding all teeth (a small part of a CBCT volume).
    box = bounding_box(labels)
    if box is not None and n_classes == 1:
        mask = labels[box].view(bool)  # the 0/1 labels themselves, cleaned in place: no mask-sized copy
        remove_islands(mask, spacing, min_island_mm3)
        if fill:
            fill_holes(mask)
    elif box is not None:
        sub = labels[box]  # a view: changes land in ``labels``
        for c in range(1, n_classes + 1):
            mask = sub == c
            if not mask.any():
                continue
            remove_islands(mask, spacing, min_island_mm3)
            if fill:
                fill_holes(mask)
            sub[sub == c] = 0
            sub[mask] = c
    names = classes if n_classes > 1 else [classes[0].capitalize() if classes[0] == "tooth" else classes[0]]
    if split:
        teeth, n = split_teeth(labels > 0, spacing, min_island_mm3)
        labels = teeth
        names = fdi_segment_names(orient.invert(teeth), grid)  # estimated FDI numbers, e.g. "Tooth 11"
    t3 = time.perf_counter()
    timings["cleanup"] = t3 - t2

    labels_in = np.ascontiguousarray(orient.invert(labels))
    del labels
    probs_in = None if probs is None else np.ascontiguousarray(orient.invert(probs))
    written: Dict[str, str] = {}
    if output is not None:
        if out_io.output_kind(Path(output)) == "seg":
            out_io.write_segmentation(Path(output), labels_in, grid, names=names, overwrite=force)
        else:
            out_io.write_label_map(Path(output), labels_in, grid, overwrite=force)
        written["output"] = str(output)
    if probabilities is not None:
        out_io.write_probabilities(Path(probabilities), probs_in, grid, overwrite=force)
        written["probabilities"] = str(probabilities)
    timings["write"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - t0
    said = f"teeth on {with_teeth} of the {m} slices the model ran on ({nz} in the volume)"
    progress.done("segment", message=f"{said}; wrote {output}" if output else said, slices=nz, model_slices=m,
                  slices_with_teeth=with_teeth,
                  segments=len(names), seconds=round(timings["total"], 3), **written)
    return SegmentationResult(labels=labels_in, grid=grid, segment_names=names, probabilities=probs_in,
                              slices=nz, slices_with_teeth=with_teeth, model_slices=m, batch=plan.batch,
                              timings=timings, outputs=written)
