"""Shared by the inference tests: a small random-weight model file and small volumes, made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def tiny_model_config():
    from ldfsam.model.presets import model_config, sam_config

    cfg = model_config("small")
    cfg.sam = sam_config("small", embed_dim=64, num_heads=2, prompt_embed_dim=64, decoder_mlp_dim=128)
    cfg.feature_prompts.mix_channels = 32
    cfg.feature_prompts.sparse_hidden = 64
    return cfg


def save_tiny_model(path: Path, cfg=None, seed: int = 0) -> Path:
    """A randomly initialised LDFSAM model file (small preset, narrow) with 256-pixel inputs."""
    import torch

    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.model.build import build_model
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    torch.manual_seed(seed)
    cfg = cfg or tiny_model_config()
    model = build_model(cfg)
    save_checkpoint(path, model, cfg, PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256))
    return path


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=None) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def oblique_direction(angle_deg: float = 20.0, tilt_deg: float = 10.0):
    """A proper rotation (det +1) about z then x: an oblique direction matrix, row-major 9 values."""
    a, t = np.radians(angle_deg), np.radians(tilt_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


class BoxSegmenter:
    """SliceSAM's interface (``volume``, ``window``, ``full_view``, ``decode``) with SAM's habit in a box: it
    always finds something. It takes the box's voxels brighter than ``threshold`` (grey values in [0, 1]), and
    where there are none, the middle of the box (as SAM gives a blob in a box on flat background); decode returns
    logits on the view, a dummy low-res tensor and a predicted IoU of 0.9."""

    def __init__(self, volume: np.ndarray, threshold: float = 0.5) -> None:
        self.volume, self.window, self.threshold = volume, None, threshold

    def full_view(self):
        return (0, self.volume.shape[1], 0, self.volume.shape[2])

    def decode(self, z, box=None, points=(), mask=None, view=None):
        import torch

        y0, y1, x0, x1 = (int(v) for v in box)
        grey = self.volume[z]
        out = np.full(grey.shape, -5.0, np.float32)
        inner = grey[y0:y1 + 1, x0:x1 + 1] > self.threshold
        if inner.any():
            out[y0:y1 + 1, x0:x1 + 1][inner] = 5.0
        else:
            h, w = y1 - y0 + 1, x1 - x0 + 1
            out[y0 + h // 4:y1 + 1 - h // 4, x0 + w // 4:x1 + 1 - w // 4] = 5.0
        vy0, vy1, vx0, vx1 = view
        return out[vy0:vy1, vx0:vx1], torch.zeros(1, 1, 4, 4), 0.9

    def beside(self, z, box, view, empty: bool = False) -> np.ndarray:
        """Logits on the view of a mask that has left the structure: the box's voxels darker than 0.7 (the bone or
        air beside a root); none with ``empty`` (SAM's mask vanished)."""
        y0, y1, x0, x1 = (int(v) for v in box)
        out = np.full(self.volume.shape[1:], -5.0, np.float32)
        if not empty:
            out[y0:y1 + 1, x0:x1 + 1][self.volume[z, y0:y1 + 1, x0:x1 + 1] < 0.7] = 5.0
        vy0, vy1, vx0, vx1 = view
        return out[vy0:vy1, vx0:vx1]


def disc(cy: float, cx: float, r: float, n: int = 64) -> np.ndarray:
    """An n×n boolean disc of radius r centred at (cy, cx): a tooth's section in the synthetic propagation tests."""
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
