"""2D images and masks (PNG, JPEG, BMP, TIFF) with Pillow: the one place the core reads and writes them.

Masks are binary unless read as label images: values above 1 (JPEG masks such as Kvasir-SEG's carry
compression noise) are thresholded at :data:`MASK_THRESHOLD`, 0/1 masks are taken as they are. Every read
decodes the whole file, so an image cut short is an InputError naming it, as is any unreadable file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 127  # foreground above this grey value (JPEG masks)
# The flips of an image (C×H×W tensors: -1 horizontal, -2 vertical), the first being the image itself: Phase 2's
# flip augmentation (finetune/flip_augment.py) and test-time flips (infer/predict_2d.py) use the same ones.
FLIPS: Dict[str, Tuple[Tuple[int, ...], ...]] = {"none": ((),), "h": ((), (-1,)), "hv": ((), (-1,), (-2,), (-2, -1))}


def _decode(path: PathLike, what: str, convert=None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a file cut short fails here, not later as a half-grey image
            return np.asarray(convert(im) if convert else im)
    except OSError as e:  # includes PIL's UnidentifiedImageError
        raise InputError(f"cannot be read as {what} ({e})", path) from None


def read_rgb(path: PathLike) -> np.ndarray:
    """An image as H×W×3 uint8 RGB."""
    return _decode(path, "an image", lambda im: im.convert("RGB"))


def read_image(path: PathLike) -> np.ndarray:
    """An image as it is stored: grey (H×W, 8 or 16 bit) or colour (H×W×3 uint8)."""
    return _decode(path, "an image", lambda im: im.convert("RGB") if im.mode not in ("L", "I;16", "I") else
                   im.convert("L") if im.mode == "L" else im)


def binary_mask(grey: np.ndarray) -> np.ndarray:
    """A grey mask as booleans: above :data:`MASK_THRESHOLD` when it goes above 1, else nonzero."""
    return grey > (MASK_THRESHOLD if grey.max(initial=0) > 1 else 0)


def read_grey_mask(path: PathLike) -> np.ndarray:
    """A mask image as H×W uint8 grey values (not yet thresholded: :func:`binary_mask`)."""
    return _decode(path, "a mask image", lambda im: im.convert("L"))


def read_mask_image(path: PathLike) -> np.ndarray:
    """A binary 2D mask image as an H×W bool array."""
    return binary_mask(read_grey_mask(path))


def read_label_image(path: PathLike) -> np.ndarray:
    """A 2D label image as H×W int32: 8-bit images above 1 are binary masks (0/1); 16-bit, palette and 1-bit
    images keep their values as labels."""
    arr = _decode(path, "a mask image", lambda im: im.convert("L") if im.mode not in ("L", "I", "I;16", "1", "P")
                  else im)
    if arr.ndim != 2:
        raise InputError(f"expected a single-channel mask image, got shape {arr.shape}", path)
    if arr.dtype == np.uint8 and arr.max() > 1:
        arr = binary_mask(arr).astype(np.uint8)
    return arr.astype(np.int32)


def resize_square(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """An H×W(×3) uint8 image resized (not padded) to size×size, bilinear or nearest."""
    from PIL import Image

    im = Image.fromarray(arr)
    return np.asarray(im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def write_label_png(path: PathLike, labels: np.ndarray) -> Path:
    """A label array (H×W, values < 256) as an 8-bit PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)
