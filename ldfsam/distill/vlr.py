"""The Valuable Localization Region (VLR) for an anchor-free YOLOv8 head (section 3.3, LD paper's ATSS rule).

YOLOv8 predicts from anchor *points* and its task-aligned assigner has no IoU threshold, so the VLR is defined on
ATSS virtual anchors: a square of side ``anchor_scale * stride`` centred on every anchor point. For each ground-truth
box, ATSS takes the ``topk`` anchors nearest its centre on every level and sets the positive threshold
alpha_pos = mean + std (unbiased) of their IoUs with the box. An anchor's score X_k is its largest DIoU with any
ground-truth box; it lies in the VLR when gamma * alpha_pos <= X_k < alpha_pos, with alpha_pos that of the box giving
the largest DIoU, and it is not already in the main region (the assigner's positives).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def virtual_anchors(anchor_points: torch.Tensor, strides: torch.Tensor, anchor_scale: float) -> torch.Tensor:
    """A x 4 squares (x0, y0, x1, y1) of side anchor_scale * stride around the A x 2 anchor points (pixels)."""
    half = strides.reshape(-1, 1) * (anchor_scale / 2)
    return torch.cat((anchor_points - half, anchor_points + half), dim=-1)


def pairwise_iou_diou(boxes: torch.Tensor, anchors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU and DIoU of B x M x 4 boxes against A x 4 anchors (xyxy) -> two B x M x A tensors."""
    # Contiguous per-coordinate columns: broadcasting B x M x 1 against A keeps every step a dense loop.
    bx0, by0, bx1, by1 = (c.unsqueeze(-1) for c in boxes.unbind(-1))
    ax0, ay0, ax1, ay1 = (c.contiguous() for c in anchors.unbind(-1))
    iw = (torch.minimum(bx1, ax1) - torch.maximum(bx0, ax0)).clamp_(min=0)
    ih = (torch.minimum(by1, ay1) - torch.maximum(by0, ay0)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = ((bx1 - bx0) * (by1 - by0) + (ax1 - ax0) * (ay1 - ay0)) - inter
    iou = inter.div_(union.clamp_(min=1e-9))
    cw = torch.maximum(bx1, ax1) - torch.minimum(bx0, ax0)
    ch = torch.maximum(by1, ay1) - torch.minimum(by0, ay0)
    diag2 = cw.pow_(2).add_(ch.pow_(2)).clamp_(min=1e-9)
    centre_dist2 = ((bx0 + bx1) - (ax0 + ax1)).pow_(2).add_(((by0 + by1) - (ay0 + ay1)).pow_(2)).div_(4)
    diou = iou - centre_dist2.div_(diag2)
    return iou, diou


def atss_alpha_pos(iou: torch.Tensor, gt_boxes: torch.Tensor, anchor_points: torch.Tensor,
                   level_sizes: Sequence[int], topk: int) -> torch.Tensor:
    """ATSS threshold per ground-truth box: mean + std of the IoU of its topk nearest anchors on each level.

    iou: B x M x A; gt_boxes: B x M x 4; anchor_points: A x 2; level_sizes: anchors per level (sum A). Returns B x M.
    """
    centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # B x M x 2
    dist = (centres[..., None, :] - anchor_points[None, None]).pow(2).sum(-1)  # B x M x A
    picked = []
    start = 0
    for n in level_sizes:
        k = min(topk, n)
        idx = dist[..., start:start + n].topk(k, dim=-1, largest=False).indices + start
        picked.append(iou.gather(-1, idx))
        start += n
    cand = torch.cat(picked, dim=-1)  # B x M x K
    std = cand.std(dim=-1) if cand.shape[-1] > 1 else torch.zeros_like(cand[..., 0])
    return cand.mean(dim=-1) + std


@torch.no_grad()
def valuable_localization_region(anchor_points: torch.Tensor, strides: torch.Tensor, level_sizes: Sequence[int],
                                 gt_boxes: torch.Tensor, gt_mask: torch.Tensor, fg_mask: torch.Tensor,
                                 gamma: float = 0.25, anchor_scale: float = 8.0, topk: int = 9) -> torch.Tensor:
    """Boolean B x A mask of VLR anchors.

    anchor_points: A x 2 anchor centres in pixels; strides: A (or A x 1) stride of each anchor; level_sizes: number of
    anchors per level, in the order of ``anchor_points``; gt_boxes: B x M x 4 xyxy pixels; gt_mask: B x M (or
    B x M x 1) true for real (not padding) boxes; fg_mask: B x A main region.
    """
    bsz, num_anchors = fg_mask.shape
    gt_mask = gt_mask.reshape(bsz, -1).bool()
    if gt_boxes.shape[1] == 0 or not gt_mask.any():
        return torch.zeros_like(fg_mask, dtype=torch.bool)
    anchors = virtual_anchors(anchor_points.float(), strides.float(), anchor_scale)
    iou, diou = pairwise_iou_diou(gt_boxes.float(), anchors)
    alpha = atss_alpha_pos(iou, gt_boxes.float(), anchor_points.float(), level_sizes, topk)  # B x M
    diou = diou.masked_fill(~gt_mask[..., None], float("-inf"))
    score, best = diou.max(dim=1)  # B x A: X_k and the box it comes from
    alpha_k = alpha.gather(1, best)
    return (score >= gamma * alpha_k) & (score < alpha_k) & ~fg_mask.bool()
