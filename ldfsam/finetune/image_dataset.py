"""2D image/mask datasets (Kvasir-SEG, ISIC 2018, MMOTU OTU_2d layouts) as Phase 2 training items.

Cases come from ``ldfsam.data.layouts.find_image_cases``; images and masks are read by ``ldfsam.data.images``
(masks with values above 1 are thresholded: Kvasir's are JPEG). Items have the keys of the CBCT slice datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from ..data.images import read_mask_image, read_rgb, resize_square
from ..errors import InputError


class ImageMaskDataset(torch.utils.data.Dataset):
    """Items: sam_image 3×S×S and yolo_image 3×Y×Y in [0, 1], mask 1×S×S in {0, 1}, case_id, slice_index 0.

    Images are resized (not padded) to the square inputs, as section 4.2 resizes slices to 256×256.
    """

    def __init__(self, pairs: Sequence[Tuple[str, Path, Path]], sam_size: int = 256, yolo_size: int = 640):
        self.pairs = list(pairs)
        self.sam_size, self.yolo_size = sam_size, yolo_size

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The original RGB image (H×W×3 uint8) and mask (H×W bool) of item ``index``."""
        _, image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask_image(mask_path)
        if image.shape[:2] != mask.shape:
            raise InputError(f"mask size {mask.shape[::-1]} differs from its image's {image.shape[1::-1]}", mask_path)
        return image, mask

    def __getitem__(self, index: int) -> Dict[str, object]:
        image, mask = self.load(index)
        sam = torch.from_numpy(resize_square(image, self.sam_size, False).copy()).permute(2, 0, 1).float() / 255.0
        yolo = torch.from_numpy(resize_square(image, self.yolo_size, False).copy()).permute(2, 0, 1).float() / 255.0
        m = resize_square(mask.astype(np.uint8), self.sam_size, True)
        return {"sam_image": sam, "yolo_image": yolo, "mask": torch.from_numpy(m.copy()).float()[None],
                "case_id": self.pairs[index][0], "slice_index": 0}
