"""Training slices from augmented phantoms: what the demo and `lite` models learn from without real labels.

Each phantom draws its shape, spacing, tooth-row height, fillings and non-tooth anatomy (spine, rami, hyoid,
skull base, thick jaw cortex) from :class:`PhantomSampling`, is augmented by ``augment.augment_phantom``, then
prepared exactly as the model's input (``preprocess.prepare_volume``: resampling and the per-volume window) and
cut into axial slices resized to the model's size. Phantom ``k`` depends only on ``(seed, k)``, so any subset of
a run can be rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .augment import AugmentConfig, Augmented, Range, augment_phantom
from .config import PreprocessConfig
from .phantom import make_phantom
from .phantom_anatomy import Anatomy

SHAPES: Tuple[Tuple[int, int, int], ...] = ((48, 128, 128), (64, 128, 128), (64, 160, 160), (56, 112, 144),
                                            (72, 160, 160), (48, 96, 96))


@dataclass
class PhantomSampling:
    """How phantoms vary. ``anatomy_p``: probability of each non-tooth structure (0 gives the plain jaws)."""

    shapes: Sequence[Tuple[int, int, int]] = SHAPES
    spacing: Range = (0.25, 0.6)  # mm, isotropic
    teeth_fraction: Range = (0.35, 0.9)
    noise: Range = (0.0, 40.0)  # the phantom's own noise (grey units; augmentation adds more)
    fillings: Tuple[int, int] = (0, 3)  # inclusive
    anatomy_p: float = 0.8
    cortex: Range = (1.2, 3.5)
    cortical_grey: Range = (1250.0, 1900.0)
    # Real jaws' marrow is barely brighter than soft tissue (40); the plain phantom's 650 is bright.
    trabecular_grey: Range = (200.0, 650.0)

    @classmethod
    def clean(cls) -> PhantomSampling:
        """Plain jaws with the bundled demo phantom's look (more noise of its own, no non-tooth anatomy): the demo
        model's second training family, and its clean held-out phantoms."""
        return cls(noise=(15.0, 70.0), anatomy_p=0.0)


@dataclass
class TrainingSlices:
    """Axial slices at the model's size S.

    images: uint8 (N, S, S), the [0, 1] window quantised; masks: bool (N, S, S), tooth or not; boxes: per slice
    a K×5 int array (class 0, x_min, y_min, x_max, y_max; pixels, inclusive), one per connected piece of each
    tooth; fdi: per slice the K FDI numbers of those boxes; phantom, slice: (N,) where each slice came from.
    """

    images: np.ndarray
    masks: np.ndarray
    boxes: List[np.ndarray]
    fdi: List[np.ndarray]
    phantom: np.ndarray
    slice: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def yolo(self) -> List[np.ndarray]:
        """Boxes as YOLO rows (class, x_c, y_c, w, h) normalised to [0, 1], float32 K×5 per slice."""
        from .boxes import boxes_to_yolo

        s = self.images.shape[-1]
        return [boxes_to_yolo(b, s, s).astype(np.float32) for b in self.boxes]

    @classmethod
    def concatenate(cls, parts: Sequence[TrainingSlices]) -> TrainingSlices:
        return cls(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                   [b for p in parts for b in p.boxes], [f for p in parts for f in p.fdi],
                   np.concatenate([p.phantom for p in parts]), np.concatenate([p.slice for p in parts]))


def random_phantom(seed: int, sampling: Optional[PhantomSampling] = None
                   ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]:
    """A phantom with drawn parameters: (image int16 (z, y, x), FDI labels uint8 (z, y, x), spacing (z, y, x))."""
    s = PhantomSampling() if sampling is None else sampling
    rng = np.random.default_rng([seed, 2])
    shape = tuple(s.shapes[int(rng.integers(len(s.shapes)))])
    spacing = float(rng.uniform(*s.spacing))
    on = rng.random(5) < s.anatomy_p
    anatomy = None
    if on.any():
        switches = dict(zip(("spine", "airway", "ramus", "hyoid", "skull_base"), (bool(v) for v in on)))
        anatomy = Anatomy(**switches, cortex=float(rng.uniform(*s.cortex)),
                          cortical_grey=float(rng.uniform(*s.cortical_grey)),
                          trabecular_grey=float(rng.uniform(*s.trabecular_grey)))
    image, labels = make_phantom(shape, spacing, seed=seed, teeth_fraction=float(rng.uniform(*s.teeth_fraction)),
                                 noise=float(rng.uniform(*s.noise)),
                                 fillings=int(rng.integers(s.fillings[0], s.fillings[1] + 1)), anatomy=anatomy)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels), (spacing,) * 3


def augmented_phantom(seed: int, sampling: Optional[PhantomSampling] = None,
                      augment: Optional[AugmentConfig] = None) -> Tuple[Augmented, Tuple[float, float, float]]:
    """:func:`random_phantom` through ``augment_phantom``; returns the result and its spacing (z, y, x)."""
    image, labels, spacing = random_phantom(seed, sampling)
    return augment_phantom(image, labels, spacing, np.random.default_rng([seed, 3]), augment), spacing


def prepare_slices(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], size: int,
                   pre: PreprocessConfig, min_pixels: int = 4) -> TrainingSlices:
    """One volume (z, y, x) and its FDI labels as model-ready slices, preprocessed as the model's input."""
    import torch

    from .boxes import instance_boxes
    from .preprocess import prepare_labels, prepare_volume, resize_class_map, to_model_input

    sp = tuple(float(v) for v in spacing)
    img = sitk.GetImageFromArray(np.asarray(image, np.float32))
    img.SetSpacing((sp[2], sp[1], sp[0]))
    lab = sitk.GetImageFromArray(np.asarray(labels))
    lab.CopyInformation(img)
    prepared = prepare_volume(img, pre)
    fdi = resize_class_map(prepare_labels(lab, prepared), size).numpy()
    x = to_model_input(torch.from_numpy(prepared.array), size)[:, 0]
    images = x.mul_(255).round_().to(torch.uint8).numpy()
    boxes, ids = [], []
    for z in range(fdi.shape[0]):
        b, v = instance_boxes((fdi[z] > 0).astype(np.uint8), 1, instances=fdi[z], min_pixels=min_pixels,
                              with_ids=True)
        boxes.append(b)
        ids.append(v)
    n = fdi.shape[0]
    return TrainingSlices(images, fdi > 0, boxes, ids, np.zeros(n, np.int64), np.arange(n))


def iter_training_slices(n_phantoms: int, size: int, seed: int = 1000, pre: Optional[PreprocessConfig] = None,
                         sampling: Optional[PhantomSampling] = None, augment: Optional[AugmentConfig] = None
                         ) -> Iterator[TrainingSlices]:
    """Slices of phantoms ``seed .. seed + n_phantoms - 1``, one :class:`TrainingSlices` per phantom.

    pre: the model's preprocessing (default: the input's spacing kept, per-volume percentile window);
    augment: ``AugmentConfig()`` by default, ``AugmentConfig.none()`` for clean phantoms.
    """
    if n_phantoms < 1 or size < 8:
        raise ValueError(f"n_phantoms must be >= 1 and size >= 8, got {n_phantoms} and {size}")
    pre = PreprocessConfig(target_spacing=None) if pre is None else pre
    for k in range(n_phantoms):
        result, spacing = augmented_phantom(seed + k, sampling, augment)
        part = prepare_slices(result.image, result.labels, spacing, size, pre)
        part.phantom[:] = k
        yield part


def training_slices(n_phantoms: int, size: int, seed: int = 1000, pre: Optional[PreprocessConfig] = None,
                    sampling: Optional[PhantomSampling] = None,
                    augment: Optional[AugmentConfig] = None) -> TrainingSlices:
    """All slices of :func:`iter_training_slices` in one :class:`TrainingSlices`."""
    return TrainingSlices.concatenate(list(iter_training_slices(n_phantoms, size, seed, pre, sampling, augment)))

