"""SPD's two Phase 2 terms: the saliency head's loss and the pairwise slice consistency (PSC) loss.

- Saliency: Dice + BCE of the saliency head's map (``model/saliency.py``, on the image embedding, resized to the
  S×S model image) against the reference mask of every class together ("tooth"). On cached embeddings (the lite
  preset) it costs no encoder pass.
- PSC: adjacent slices z and z+1 of one volume are decoded together; slice z's prediction, detached, guides slice
  z+1's (uni-directional: SPD found bi-directional enforcement no better, its Fig. 7), as a soft Dice restricted to
  the neighbourhood of the two slices' reference masks (a local term: far from the structure the slices may
  legitimately differ, and the supervised loss covers it). Needs the slice order of a volume, so it is on by default
  for prepared volume datasets and off for 2D image datasets (``FinetuneConfig.psc``).

``SpdNet`` wraps the network a step calls (the model, or cached embeddings) so one forward gives both the mask
logits and the saliency logits; ``PscPairs`` adds to every item its next slice (when that slice is in the dataset).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .loss import dice_bce_loss

# Half-width (model pixels of the 256 image) of the neighbourhood of the reference masks where PSC applies.
PSC_REACH = 8


def saliency_loss(logits: torch.Tensor, mask: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dice + BCE of saliency logits B×1×S×S against the union of the reference mask's classes (B×C×S×S), on the
    pixels whose label counts (``valid`` B×1×S×S, e.g. the reviewed part of a corrected case; None: all)."""
    target = (mask > 0.5).any(1, keepdim=True).float()
    return dice_bce_loss(logits, target, valid=valid)


def psc_loss(logits: torch.Tensor, next_logits: torch.Tensor, mask: torch.Tensor, next_mask: torch.Tensor,
             valid: torch.Tensor, counts: Optional[torch.Tensor] = None,
             next_counts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Uni-directional PSC: 1 − soft Dice of σ(next_logits) against σ(logits) detached, within ``PSC_REACH``
    pixels of either slice's reference mask; mean over the pairs with ``valid`` (B bool) and a non-empty
    neighbourhood (0 without any). ``counts`` / ``next_counts`` (B×1×S×S): where each slice's label counts (a
    partly reviewed case); an unreviewed label must not decide where PSC applies."""
    guide = torch.sigmoid(logits.float()).detach()
    pred = torch.sigmoid(next_logits.float())
    here, there = mask > 0.5, next_mask > 0.5
    if counts is not None:
        here = here & (counts > 0.5)
    if next_counts is not None:
        there = there & (next_counts > 0.5)
    near = (here | there).float()
    near = F.max_pool2d(near, 2 * PSC_REACH + 1, stride=1, padding=PSC_REACH)
    dims = tuple(range(1, pred.ndim))
    inter = (pred * guide * near).sum(dims)
    denom = ((pred + guide) * near).sum(dims)
    keep = valid.to(pred.device) & (near.sum(dims) > 0)
    if not bool(keep.any()):
        return pred.sum() * 0.0
    dice = (2.0 * inter + 1.0) / (denom + 1.0)
    return (1.0 - dice)[keep].mean()


class SpdNet(nn.Module):
    """``forward(image or embedding, yolo_image, boxes=None) -> (mask logits B×C×S×S, saliency logits B×1×S×S or
    None)``. ``cached``: the first input is the cached embedding (the lite preset), else the SAM image."""

    def __init__(self, model: nn.Module, cached: bool):
        super().__init__()
        self.model, self.cached = model, cached

    def forward(self, image: torch.Tensor, yolo_image: torch.Tensor,
                boxes: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        model = self.model
        embedding = image if self.cached else model.encode_image(image)
        logits = model.decode(embedding, model.prompt_features(yolo_image), boxes)
        head = getattr(model, "saliency_head", None)
        saliency = None if head is None else head.logits_at(embedding, logits.shape[-1])
        return logits, saliency


def neighbour_index(dataset: Any) -> Optional[List[int]]:
    """For each item, the index of the next slice of the same volume in ``dataset`` (-1: not in it); None for a
    dataset without slice order (2D images). Looks through Subset and the embedding cache's dataset."""
    picks: Optional[List[int]] = None
    inner = dataset
    while True:
        if isinstance(inner, torch.utils.data.Subset):
            idx = list(inner.indices)
            picks = idx if picks is None else [idx[i] for i in picks]
            inner = inner.dataset
        elif hasattr(inner, "dataset") and not hasattr(inner, "index"):
            inner = inner.dataset
        else:
            break
    order = getattr(inner, "index", None)
    if not isinstance(order, list) or not order or not isinstance(order[0], tuple):
        return None
    picks = list(range(len(order))) if picks is None else picks
    where: Dict[Tuple[int, int], int] = {tuple(order[j]): k for k, j in enumerate(picks)}
    return [where.get((order[j][0], order[j][1] + 1), -1) for j in picks]


class PscPairs(torch.utils.data.Dataset):
    """Items of ``dataset`` with their next slice's input, YOLO image and mask under ``next_*`` keys and
    ``has_next``; an item whose next slice is not in the dataset is paired with itself (``has_next`` False)."""

    def __init__(self, dataset: torch.utils.data.Dataset, neighbours: List[int]):
        self.dataset, self.neighbours = dataset, neighbours

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = dict(self.dataset[index])
        j = self.neighbours[index]
        other = self.dataset[j] if j >= 0 else item
        key = "embedding" if "embedding" in item else "sam_image"
        item.update(next_image=other[key], next_yolo=other["yolo_image"], next_mask=other["mask"],
                    has_next=torch.tensor(j >= 0))
        if "valid" in other:
            item["next_valid"] = other["valid"]
        return item


def psc_enabled(cfg: Any, data: Any) -> bool:
    """``FinetuneConfig.psc``: "on", "off", or "auto" (on for prepared volume datasets, whose slices have an
    order; off for 2D image datasets)."""
    if cfg.psc != "auto":
        return cfg.psc == "on"
    return data.info.get("format") == "slices" and data.info.get("kind") != "2d"


def with_psc_pairs(dataset: torch.utils.data.Dataset) -> Optional[PscPairs]:
    """The dataset paired with next slices, or None where it has no slice order (PSC cannot apply)."""
    neighbours = neighbour_index(dataset)
    return None if neighbours is None else PscPairs(dataset, neighbours)


def spd_terms(forward, out, batch: Dict[str, Any], mask: torch.Tensor, cfg: Any
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(mask logits, SPD's extra loss or None) of one training step. ``out``: what the step's network returned
    (a tuple from SpdNet); ``forward(image, yolo, mask)`` runs that network on the next slices for PSC."""
    if not isinstance(out, tuple):
        return out, None
    logits, saliency = out
    device = mask.device
    counts = batch["valid"].to(device) if "valid" in batch else None
    terms = []
    if saliency is not None and cfg.saliency_weight > 0:
        terms.append(cfg.saliency_weight * saliency_loss(saliency, mask, counts))
    if "next_image" in batch and cfg.psc_weight > 0:
        next_mask = batch["next_mask"].to(device)
        next_counts = batch["next_valid"].to(device) if "next_valid" in batch else None
        next_logits, _ = forward(batch["next_image"].to(device), batch["next_yolo"].to(device), next_mask)
        terms.append(cfg.psc_weight * psc_loss(logits, next_logits, mask, next_mask, batch["has_next"], counts,
                                               next_counts))
    return logits, (sum(terms) if terms else None)
