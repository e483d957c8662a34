"""A toy 2D dataset (Kvasir layout: images/ + masks/) of bright discs on noise, for fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def toy_disc_dataset(root: Path, n: int, seed: int, size: int = 40) -> Path:
    """Write ``n`` RGB images with one disc each and their binary masks under ``root``; returns ``root``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(12, 28), rng.integers(12, 28), rng.integers(5, 11)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = (rng.normal(60, 20, (size, size, 3)) + m[..., None] * 120).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"c{i}.png")
    return root
