"""Preprocessing as in the paper (section 4.2): resampling, axial slices, intensity window, model input sizes.

Axial slices are taken in the image's index space: slice ``k`` is ``array[k]`` of the (z, y, x) array, i.e. the
plane of the first two index axes at the third index. The direction matrix is not applied to the pixels (no
reorientation), so every slice maps back onto the input grid exactly; for the usual axial CBCT/CT acquisition
the third index axis is the superior-inferior axis. :func:`slice_axis` reports which patient axis it is closest
to, so a sagittally or coronally stored volume can be flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .config import PreprocessConfig

# Percentiles are estimated on at most this many voxels (a regular sub-grid): exact enough, and fast on
# 420x650x650 CBCT volumes.
_PERCENTILE_SAMPLES = 2_000_000


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (x, y, z), spacing (mm), origin and direction, as SimpleITK orders them."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """The (z, y, x) shape of arrays on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def image(self, array: np.ndarray) -> sitk.Image:
        """An image on this grid holding ``array`` (z, y, x)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not fit grid (z, y, x) {self.shape}")
        out = sitk.GetImageFromArray(array)
        self.apply(out)
        return out

    def apply(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def crop(self, start: Sequence[int], shape: Sequence[int]) -> Grid:
        """The grid of the block of ``shape`` (z, y, x) whose first voxel is ``start`` (z, y, x) of this grid: same
        spacing and direction, so its voxels are this grid's voxels."""
        index = (float(start[2]), float(start[1]), float(start[0]))
        origin = np.asarray(self.origin) + np.asarray(self.direction, float).reshape(3, 3) @ (
            np.asarray(self.spacing) * index)
        return Grid((int(shape[2]), int(shape[1]), int(shape[0])), self.spacing, tuple(float(v) for v in origin),
                    self.direction)

    def reference(self) -> sitk.Image:
        """A tiny-pixel reference image for resampling onto this grid."""
        ref = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        self.apply(ref)
        return ref


def _spacing3(spacing: Union[float, Sequence[float]]) -> Tuple[float, float, float]:
    if np.isscalar(spacing):
        return (float(spacing),) * 3
    s = tuple(float(v) for v in spacing)
    if len(s) != 3:
        raise ValueError(f"spacing needs 1 or 3 values, got {spacing!r}")
    return s


def resampled_grid(grid: Grid, spacing: Union[float, Sequence[float]]) -> Grid:
    """The grid covering the same field of view at ``spacing`` (same origin and direction)."""
    new = _spacing3(spacing)
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(grid.size, grid.spacing, new))
    return Grid(size, new, grid.origin, grid.direction)


def resample_to_grid(image: sitk.Image, grid: Grid, label: bool = False) -> sitk.Image:
    """Resample onto ``grid``: linear (float32 output) for images, nearest neighbour for label maps."""
    if Grid.of(image) == grid:
        return image
    if label:
        return sitk.Resample(image, grid.reference(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             image.GetPixelID())
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    lo = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, grid.reference(), sitk.Transform(), sitk.sitkLinear, lo, sitk.sitkFloat32)


def resample_to_spacing(image: sitk.Image, spacing: Optional[Union[float, Sequence[float]]],
                        label: bool = False) -> sitk.Image:
    """Resample to ``spacing`` mm (None or already there: unchanged)."""
    if spacing is None:
        return image
    grid = Grid.of(image)
    target = resampled_grid(grid, spacing)
    if np.allclose(target.spacing, grid.spacing, rtol=1e-6) and target.size == grid.size:
        return image
    return resample_to_grid(image, target, label)


def resample_like(image: sitk.Image, reference: Union[sitk.Image, Grid], label: bool = True) -> sitk.Image:
    """Bring a result computed on the working grid back onto the input grid (nearest for labels)."""
    grid = reference if isinstance(reference, Grid) else Grid.of(reference)
    out = resample_to_grid(image, grid, label)
    return out


def slice_axis(image: Union[sitk.Image, Grid]) -> str:
    """The patient axis (LPS: 'L', 'P' or 'S') that the slice-stacking (third) index axis is closest to."""
    direction = np.array(image.direction if isinstance(image, Grid) else image.GetDirection()).reshape(3, 3)
    return "LPS"[int(np.argmax(np.abs(direction[:, 2])))]


# -- intensities -------------------------------------------------------------------------------------------------


def intensity_window(array: np.ndarray, cfg: PreprocessConfig) -> Tuple[float, float]:
    """The (low, high) grey-value window: ``cfg.fixed_window`` or per-volume percentiles."""
    if cfg.fixed_window is not None:
        lo, hi = (float(v) for v in cfg.fixed_window)
        if hi <= lo:
            raise ValueError(f"fixed_window must be (low, high) with low < high, got {cfg.fixed_window}")
        return lo, hi
    p0, p1 = (float(v) for v in cfg.window_percentiles)
    if not 0.0 <= p0 < p1 <= 100.0:
        raise ValueError(f"window_percentiles must be 0 <= low < high <= 100, got {cfg.window_percentiles}")
    sample = array
    if array.size > _PERCENTILE_SAMPLES:
        step = int(np.ceil((array.size / _PERCENTILE_SAMPLES) ** (1.0 / array.ndim)))
        sample = array[(slice(None, None, step),) * array.ndim]
    lo, hi = (float(v) for v in np.percentile(sample, (p0, p1)))
    if hi <= lo:  # a nearly constant volume: fall back to the full range
        lo, hi = float(array.min()), float(array.max())
    return lo, hi


def normalize(array: np.ndarray, window: Tuple[float, float], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Map ``window`` linearly to [0, 1] (clipped), as float32; one output array, no other temporaries."""
    lo, hi = window
    if out is None:
        out = np.empty(array.shape, np.float32)
    np.subtract(array, np.float32(lo), out=out, casting="unsafe")
    if hi > lo:
        out *= np.float32(1.0 / (hi - lo))
    else:
        out[...] = 0
    np.clip(out, 0.0, 1.0, out=out)
    return out


@dataclass
class PreparedVolume:
    """A volume ready for slicing: ``array`` (z, y, x) float32 in [0, 1] on ``grid`` (the working grid)."""

    array: np.ndarray
    grid: Grid
    input_grid: Grid
    window: Tuple[float, float]

    @property
    def num_slices(self) -> int:
        return int(self.array.shape[0])


def prepare_volume(image: sitk.Image, cfg: PreprocessConfig) -> PreparedVolume:
    """Resample to ``cfg.target_spacing`` (linear) and window to [0, 1]: the input of both phases and inference."""
    input_grid = Grid.of(image)
    work = resample_to_spacing(image, cfg.target_spacing, label=False)
    view = sitk.GetArrayViewFromImage(work)
    window = intensity_window(view, cfg)
    array = normalize(view, window)
    return PreparedVolume(array, Grid.of(work), input_grid, window)


def prepare_labels(labels: sitk.Image, prepared: PreparedVolume) -> np.ndarray:
    """The label map (z, y, x) on the prepared volume's working grid (nearest neighbour)."""
    return sitk.GetArrayFromImage(resample_to_grid(labels, prepared.grid, label=True))


def quantize(array: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8 (what the caches store); :func:`dequantize` is the inverse up to 1/510."""
    out = np.empty(array.shape, np.uint8)
    flat_in, flat_out = array.reshape(array.shape[0], -1), out.reshape(array.shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat_in.shape[1]))
    for i in range(0, flat_in.shape[0], step):  # in chunks: no full-size float temporary
        flat_out[i:i + step] = np.rint(flat_in[i:i + step] * np.float32(255.0))
    return out


def dequantize(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, np.float32) * np.float32(1.0 / 255.0)


# -- model inputs ------------------------------------------------------------------------------------------------


def to_model_input(slices, size: int, channels: int = 3):
    """Slices (N, H, W) grey or (N, H, W, 3) colour, float [0, 1] or uint8 -> torch N×3×size×size float32 [0, 1].

    Bilinear resizing (antialiased when shrinking) to a square, grey replicated to 3 channels; used identically
    for the SAM input (256) and the prompt generator input (640) in training and inference. Both filters have
    non-negative weights, so values stay in [0, 1]. ``channels=1`` keeps grey input single-channel.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(slices)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).mul_(1.0 / 255.0)
    elif x.dtype != torch.float32:
        x = x.to(torch.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (3, 4) and x.shape[1] not in (1, 3):
        x = x[..., :3].permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-2] > size or x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def resize_class_map(class_map, size: int):
    """Class-index maps (N, H, W) -> torch (N, size, size) uint8 by nearest neighbour (no new labels)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(class_map))
    if x.ndim == 2:
        x = x[None]
    if x.shape[-2:] == (size, size):
        return x.to(torch.uint8)
    y = F.interpolate(x[:, None].to(torch.float32), size=(size, size), mode="nearest-exact")
    return y[:, 0].to(torch.uint8)


def one_hot(class_map, num_classes: int):
    """(…, H, W) class indices (0 = background) -> (…, C, H, W) float {0, 1} for classes 1..C."""
    import torch

    x = torch.as_tensor(class_map).long()
    classes = torch.arange(1, num_classes + 1, device=x.device).view(-1, 1, 1)
    return (x.unsqueeze(-3) == classes).to(torch.float32)


def logits_to_slice(logits, height: int, width: int):
    """Model logits B×C×S×S -> B×C×height×width (bilinear), to label the slice at its working-grid size."""
    import torch.nn.functional as F

    if logits.shape[-2:] == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
