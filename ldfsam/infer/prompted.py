"""Prompted segmentation of a volume: each structure of a prompts file becomes its own segment.

read the volume -> validate every prompt against its grid (before any model work) -> per-volume intensity
window (``ldfsam.data.preprocess``) -> LiteMedSAM on the slices the structures need (``slice_sam``), each
structure propagated from its prompts (``propagate``) -> optionally on top of an existing segmentation -> outputs
written atomically (``outputs``), never over the input.

``PromptedSession`` keeps the model and the slice embeddings of one volume between calls, for clicks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..progress import Progress
from .prompts import StructurePrompt, VoxelPrompt, parse_prompts, read_prompts, to_voxels
from .propagate import PropagationConfig, Propagator
from .slice_sam import DEFAULT_CACHE_BYTES, SamParts, SliceSAM, litemedsam_parts, sam_parts_of
from .structure_result import StructureResult

PathLike = Union[str, Path]


@dataclass
class PromptedResult:
    """Labels z×y×x on the input grid; ``names[i]`` is the name of label ``values[i]``."""

    labels: np.ndarray
    grid: Any
    names: List[str]
    values: List[int]
    structures: Dict[str, StructureResult] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)


def resolve_parts(model: Any = None) -> SamParts:
    """LiteMedSAM as published (None), SamParts as they are, or an LDFSAM model / checkpoint / model name whose
    SAM has point and mask prompts (ConfigError otherwise)."""
    if model is None:
        return litemedsam_parts()
    if isinstance(model, SamParts):
        return model
    if isinstance(model, (str, Path)):
        from .pipeline import load_model

        model = load_model(model)
    return sam_parts_of(model)


class PromptedSession:
    """One volume and one SAM: structures segmented on demand, embeddings and decoder results kept between calls.

    ``volume``: an image (SimpleITK) or a path. ``window``: the grey-value window (default: the project's
    per-volume percentiles). ``precision``: auto (the faster measured here), fp32 or bf16. ``spacing``: the true
    voxel size (x, y, z) mm of a volume read from a path, replacing the file's. ``prior``: a lite model with a
    saliency head (name, path or loaded) for SPD: clicks validated against it, prompts carried across slices
    (``context_prompts``); None: every prompt taken as given."""

    def __init__(self, volume: Union[sitk.Image, PathLike], model: Any = None,
                 propagation: Optional[PropagationConfig] = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 window: Optional[Tuple[float, float]] = None, precision: str = "auto",
                 spacing: Optional[Sequence[float]] = None, prior: Any = None) -> None:
        from ..data.preprocess import Grid, PreprocessConfig, intensity_window

        if not isinstance(volume, sitk.Image):
            from ..data.volume import read_volume

            volume = read_volume(volume, spacing=spacing)
        self.image = volume
        self.grid = Grid.of(volume)
        self.array = sitk.GetArrayViewFromImage(volume)
        self.window = window or intensity_window(self.array, PreprocessConfig())
        self.propagation = propagation or PropagationConfig()
        self._parts_source = model
        self._cache_bytes = cache_bytes
        self._precision = precision
        self._sam: Optional[SliceSAM] = None
        self._prior_source = prior
        self._prior = None
        self._maps = None

    @property
    def sam(self) -> SliceSAM:
        if self._sam is None:
            self._sam = SliceSAM(resolve_parts(self._parts_source), self.array, self.window, self._cache_bytes,
                                 self._precision)
        return self._sam

    def voxels(self, prompts: Sequence[StructurePrompt]) -> List[VoxelPrompt]:
        """Every prompt checked against the volume (InputError naming the structure and field)."""
        return [to_voxels(s, self.grid, i) for i, s in enumerate(prompts)]

    def segment(self, prompt: Union[StructurePrompt, VoxelPrompt]) -> StructureResult:
        """One structure's mask (z×y×x bool on the volume's grid)."""
        if isinstance(prompt, StructurePrompt):
            prompt = to_voxels(prompt, self.grid)
        if self.prior is None:
            return Propagator(self.sam, prompt, self.grid.spacing, self.propagation).run()
        from .context_prompts import PriorPropagator

        return PriorPropagator(self.sam, prompt, self.grid.spacing, self.propagation, self.maps).run()

    @property
    def prior(self):
        """SPD's prior (``saliency_prior.Prior``; None without one), loaded on first use."""
        if self._prior is None and self._prior_source is not None:
            from .saliency_prior import load_prior

            self._prior = load_prior(self._prior_source)
        return self._prior

    @property
    def maps(self):
        """The prior's saliency maps on this volume's slices (None without a prior)."""
        if self.prior is not None and self._maps is None:
            from .saliency_prior import SaliencyMaps

            self._maps = SaliencyMaps(self.prior, self.sam)
        return self._maps


def _read_base(path: PathLike, image: sitk.Image) -> Tuple[np.ndarray, Dict[int, str]]:
    """An existing segmentation on the image's grid, and its segment names by label value."""
    from ..data.volume import label_on_image_grid, read_volume, volume_suffix

    labels = label_on_image_grid(read_volume(path, label=True), image, path)
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v]
    names = {v: f"Segment {v}" for v in values}
    if volume_suffix(path) == ".seg.nrrd":
        import slicerio

        for seg in slicerio.read_segmentation(str(path), skip_voxels=True).get("segments", []):
            if int(seg.get("labelValue", 0)) in names and seg.get("layer", 0) == 0:
                names[int(seg["labelValue"])] = str(seg.get("name", names[int(seg["labelValue"])]))
    return array, names


def segment_with_prompts(input: Union[PathLike, sitk.Image], output: Optional[PathLike],
                         prompts: Union[PathLike, Sequence[StructurePrompt], Dict[str, Any]], *, model: Any = None,
                         base_segmentation: Optional[PathLike] = None, force: bool = False,
                         propagation: Optional[PropagationConfig] = None, progress: Optional[Progress] = None,
                         session: Optional[PromptedSession] = None, precision: str = "auto",
                         spacing: Optional[Sequence[float]] = None, prior: Any = None) -> PromptedResult:
    """Segment each structure of ``prompts`` (a prompts JSON path, its parsed document, or StructurePrompts) in
    the volume ``input`` and write ``output`` (.seg.nrrd: one named segment per structure; .nii.gz etc.: one label
    value per structure). ``base_segmentation``: an existing label map / .seg.nrrd on the same grid; a structure
    with the name of one of its segments replaces it, others are added (structures drawn over it). ``model``:
    None for LiteMedSAM as published. ``session``: reuse a PromptedSession's embeddings (its volume is used).
    ``precision``: auto (the faster measured on this machine), fp32 or bf16. ``spacing``: the true voxel size
    (x, y, z) mm of the input file, replacing its own. ``prior``: SPD's saliency prior (see PromptedSession).
    Every input is checked before the model runs; nothing is written on an error."""
    from ..errors import LDFSAMError
    from . import outputs as out_io

    progress = progress or Progress("none")
    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    if output is not None:
        if Path(output).is_dir():
            raise InputError("is a folder; give a file name for the output", output)
        if Path(output).exists() and not force:
            raise LDFSAMError("exists already; pass --force to overwrite it", output)
        out_io.output_kind(Path(output))
        if isinstance(input, (str, Path)) and Path(output).resolve() == Path(input).resolve():
            raise InputError("is the input volume; choose another output file", output)
        if base_segmentation is not None and Path(output).resolve() == Path(base_segmentation).resolve():
            raise InputError("is the base segmentation; write the corrected one to another file", output)
    if isinstance(prompts, (str, Path)):
        structures = read_prompts(prompts)
    elif isinstance(prompts, (dict, list)) and not all(isinstance(s, StructurePrompt) for s in prompts):
        structures = parse_prompts(prompts)
    else:
        structures = list(prompts)
    if session is None:
        session = PromptedSession(input, model, propagation, precision=precision, spacing=spacing, prior=prior)
    voxel_prompts = session.voxels(structures)
    image = session.image
    if base_segmentation is not None:
        labels, names = _read_base(base_segmentation, image)
    else:
        labels, names = np.zeros(session.grid.shape, np.uint16), {}
    labels = labels.astype(np.uint16, copy=False)
    by_name = {n: v for v, n in names.items()}
    taken = set(names) | {s.label for s in structures if s.label is not None}
    plan: List[Tuple[VoxelPrompt, int]] = []
    for s, vp in zip(structures, voxel_prompts):
        value = s.label or by_name.get(s.name)
        if value is None:
            value = max(taken | {0}) + 1
            taken.add(value)
        plan.append((vp, value))
    _ = session.sam, session.prior  # the models: after every prompt was checked
    timings["prepare"] = time.perf_counter() - t0
    progress.start("segment", total=len(plan), message=f"segmenting {len(plan)} prompted structure(s)")
    results: Dict[str, StructureResult] = {}
    for i, (vp, value) in enumerate(plan):
        result = session.segment(vp)
        results[vp.name] = result
        labels[labels == value] = 0
        labels[result.region][result.crop] = value
        names[value] = vp.name
        progress.update("segment", i + 1, len(plan), structure=vp.name, slices=len(result.slices))
    timings["segment"] = time.perf_counter() - t0 - timings["prepare"]
    values = sorted(v for v in names if (labels == v).any() or v in {value for _, value in plan})
    written: Dict[str, str] = {}
    if output is not None:
        if out_io.output_kind(Path(output)) == "seg":
            compact = np.zeros_like(labels)
            for i, v in enumerate(values, start=1):
                compact[labels == v] = i
            out_io.write_segmentation(Path(output), compact, session.grid, names=[names[v] for v in values],
                                      overwrite=force)
        else:
            out_io.write_label_map(Path(output), labels, session.grid, overwrite=force)
        written["output"] = str(output)
    timings["total"] = time.perf_counter() - t0
    progress.done("segment", message=f"{len(plan)} structure(s)" + (f"; wrote {output}" if output else ""),
                  seconds=round(timings["total"], 3), **written)
    return PromptedResult(labels, session.grid, [names[v] for v in values], values, results, timings, written)
