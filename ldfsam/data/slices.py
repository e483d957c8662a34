"""The Phase 2 slice dataset: cached cases as model-ready 2D items.

Item: ``{"sam_image": 3×S×S float [0, 1], "yolo_image": 3×Y×Y float [0, 1], "mask": C×S×S float {0, 1},
"case_id": str, "slice_index": int}``. Arrays are memory-mapped from the cache and resized on access (cheap),
so a second epoch or a second phase never repeats resampling or windowing.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cache import CaseEntry
from .config import PreprocessConfig


def select_slices(entry: CaseEntry, empty_ratio: float = 0.1, detection: bool = False) -> List[int]:
    """Slices used for training: every slice with foreground plus ``empty_ratio`` × that many empty slices.

    The empty slices are spread evenly over the case (deterministic), so the model also sees slices above and
    below the tooth rows, where it must predict nothing. A partly reviewed case (``ldfsam.data.training_case``)
    offers only its reviewed slices: for ``detection`` (Phase 1's boxes) the wholly reviewed ones, since a box
    missing in an unchecked corner would teach the detector that a tooth there is background; for Phase 2 every
    slice with a reviewed voxel (its loss is masked per pixel). Empty slices come from wholly reviewed slices.
    """
    review = entry.review
    n = entry.num_slices
    if review is not None:
        # Decided on reviewed voxels alone, so that no unreviewed label changes which slices are used.
        whole = set(review["whole_slices"])
        usable = whole if detection else set(review["any_slices"])
        fg_reviewed = review["foreground_slices"]
        fg = [z for z in fg_reviewed if z in usable]
        empty = [z for z in sorted(whole) if z not in set(fg_reviewed)]
    elif n == 1:
        return [0]
    else:
        fg = entry.teeth_slices
        fg_set = set(fg)
        empty = [z for z in range(n) if z not in fg_set]
    k = min(len(empty), int(round(empty_ratio * len(fg))))
    if k > 0:
        picks = np.linspace(0, len(empty) - 1, k).round().astype(int)
        chosen = sorted(set(fg) | {empty[i] for i in picks})
    else:
        chosen = list(fg)
    return chosen


class SliceDataset:
    """A torch-compatible Dataset over cached cases (``len`` and integer indexing)."""

    def __init__(self, entries: Sequence[CaseEntry], cfg: PreprocessConfig, empty_ratio: float = 0.1,
                 all_slices: bool = False):
        self.cfg = cfg
        self.entries = list(entries)
        self.index: List[Tuple[int, int]] = []
        for i, e in enumerate(self.entries):
            chosen = range(e.num_slices) if all_slices else select_slices(e, empty_ratio)
            self.index.extend((i, z) for z in chosen)
        self._arrays: Dict[int, Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _open(self, i: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        # Opened lazily in each DataLoader worker (memory maps are not shared across processes).
        arrays = self._arrays.get(i)
        if arrays is None:
            e = self.entries[i]
            arrays = self._arrays[i] = (e.image(), e.classes(), e.reviewed())
        return arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __getitem__(self, idx: int) -> dict:
        import torch

        from .preprocess import one_hot, resize_class_map, to_model_input

        if idx < 0:
            idx += len(self.index)
        i, z = self.index[idx]
        image, classes, reviewed = self._open(i)
        sl = torch.from_numpy(np.array(image[z]))  # one slice copied out of the memory map
        sam = to_model_input(sl[None], self.cfg.sam_size)[0]
        yolo = to_model_input(sl[None], self.cfg.yolo_size)[0]
        cm = resize_class_map(np.array(classes[z]), self.cfg.sam_size)[0]
        mask = one_hot(cm, len(self.cfg.class_names))
        # Which pixels' labels count (1 × S × S): all of them, except in a partly reviewed case.
        valid = (torch.ones((1, *mask.shape[1:])) if reviewed is None
                 else resize_class_map(np.array(reviewed[z]), self.cfg.sam_size).float())
        return {"sam_image": sam, "yolo_image": yolo, "mask": mask, "valid": valid,
                "case_id": self.entries[i].case_id, "slice_index": int(z)}

    @property
    def case_ids(self) -> List[str]:
        return [e.case_id for e in self.entries]
