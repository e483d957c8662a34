"""Box prompts from the reference masks (SAM-Med2D's box protocol), for the box baseline without a detector.

In ``box`` mode LDFSAM prompts SAM with the boxes its YOLO detects. With ``box_prompts="ground_truth"`` the
trainer and the evaluation give it instead the tight box of every connected component of the reference mask
(the paper's box construction, section 4.2): an oracle baseline that does not depend on the detector.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from torch import nn


def boxes_from_masks(mask: torch.Tensor, scale: float = 1.0) -> List[torch.Tensor]:
    """mask B×C×H×W {0, 1} -> per image N×6 (x0, y0, x1, y1, 1, 0), one box per connected component of the
    union of the classes, in pixel coordinates times ``scale`` (x1, y1 exclusive)."""
    from scipy import ndimage

    out = []
    fg = (mask > 0.5).any(dim=1).cpu().numpy()
    for m in fg:
        labels, n = ndimage.label(m)
        rows = []
        for sl in ndimage.find_objects(labels):
            if sl is not None:
                y, x = sl
                rows.append([x.start * scale, y.start * scale, x.stop * scale, y.stop * scale, 1.0, 0.0])
        out.append(torch.tensor(np.asarray(rows, dtype=np.float32).reshape(-1, 6)))
    return out


class BoxPrompted(nn.Module):
    """LDFSAM in box mode with given boxes: ``forward(sam_image, yolo_image, boxes) -> logits B×C×S×S``.

    A module (not a function) so that DistributedDataParallel can wrap it like the model itself.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sam_image: torch.Tensor, yolo_image: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        features = self.model.prompt_features(yolo_image)
        return self.model.decode(self.model.encode_image(sam_image), features, boxes)
