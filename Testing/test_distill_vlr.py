"""The Valuable Localization Region on ATSS virtual anchors: hand-derived and brute-force reference cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ldfsam.distill.vlr import atss_alpha_pos, pairwise_iou_diou, valuable_localization_region, virtual_anchors


def grid(size: int, strides):
    """Anchor points (cell centres, pixels), per-anchor strides and level sizes, in ultralytics' order."""
    points, per_stride, sizes = [], [], []
    for s in strides:
        n = size // s
        for y in range(n):
            for x in range(n):
                points.append(((x + 0.5) * s, (y + 0.5) * s))
                per_stride.append(float(s))
        sizes.append(n * n)
    return torch.tensor(points), torch.tensor(per_stride), sizes


def test_hand_derived_single_level():
    # One level, stride 8 on 64 px: an 8 x 8 grid of anchor points at 4, 12, ..., 60. anchor_scale 2 makes every
    # virtual anchor a 16 px square. The box [12, 12, 28, 28] is the virtual anchor of cell (x=2, y=2).
    # Its 9 nearest anchors are the 3 x 3 block around that cell:
    #   centre IoU 1; the 4 edge neighbours overlap 8 x 16 -> IoU 128 / 384 = 1/3; the 4 corners 8 x 8 -> 1/7.
    #   alpha_pos = mean + std = 61/189 + 0.27124 = 0.59399, gamma * alpha_pos = 0.14850.
    # DIoU of an edge neighbour: 1/3 - 8^2 / (24^2 + 16^2) = 0.25641 (in the band); corners: 1/7 - 128/1152 =
    # 0.03175 (below); the centre 1.0 (above); the next ring does not overlap (DIoU < 0).
    points, strides, sizes = grid(64, [8])
    gt = torch.tensor([[[12.0, 12.0, 28.0, 28.0], [0.0, 0.0, 0.0, 0.0]]])  # second row: padding
    mask = torch.tensor([[[True], [False]]])
    fg = torch.zeros(1, 64, dtype=torch.bool)
    vlr = valuable_localization_region(points, strides, sizes, gt, mask, fg, gamma=0.25, anchor_scale=2.0, topk=9)
    expected = {2 * 8 + 1, 2 * 8 + 3, 1 * 8 + 2, 3 * 8 + 2}  # (x=1,y=2), (3,2), (2,1), (2,3) -> 17, 19, 10, 26
    assert set(vlr[0].nonzero().flatten().tolist()) == expected

    # The thresholds themselves, as derived above.
    iou, diou = pairwise_iou_diou(gt[:, :1], virtual_anchors(points, strides, 2.0))
    alpha = atss_alpha_pos(iou, gt[:, :1], points, sizes, 9)
    assert alpha.item() == pytest.approx(61 / 189 + 0.271238, abs=1e-5)
    assert diou[0, 0, 17].item() == pytest.approx(1 / 3 - 64 / 832, abs=1e-6)
    assert diou[0, 0, 9].item() == pytest.approx(1 / 7 - 128 / 1152, abs=1e-6)

    # Anchors of the main region never belong to the VLR; a gamma of 1 leaves an empty band.
    fg[0, 17] = True
    vlr = valuable_localization_region(points, strides, sizes, gt, mask, fg, gamma=0.25, anchor_scale=2.0, topk=9)
    assert set(vlr[0].nonzero().flatten().tolist()) == expected - {17}
    none = valuable_localization_region(points, strides, sizes, gt, mask, fg, gamma=1.0, anchor_scale=2.0, topk=9)
    assert not none.any()


def _reference(points, strides, sizes, boxes, fg, gamma, scale, topk):
    """The documented rule in plain Python floats, one anchor and one box at a time."""
    pts = points.tolist()
    st = strides.tolist()
    anchors = [(x - s * scale / 2, y - s * scale / 2, x + s * scale / 2, y + s * scale / 2)
               for (x, y), s in zip(pts, st)]

    def iou_diou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        iou = inter / union
        cw = max(a[2], b[2]) - min(a[0], b[0])
        ch = max(a[3], b[3]) - min(a[1], b[1])
        d2 = ((a[0] + a[2] - b[0] - b[2]) ** 2 + (a[1] + a[3] - b[1] - b[3]) ** 2) / 4
        return iou, iou - d2 / (cw**2 + ch**2)

    alphas = []
    for b in boxes:
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        cand, start = [], 0
        for n in sizes:
            level = sorted(range(start, start + n), key=lambda k: (pts[k][0] - cx) ** 2 + (pts[k][1] - cy) ** 2)
            cand += [iou_diou(anchors[k], b)[0] for k in level[:topk]]
            start += n
        alphas.append(statistics.mean(cand) + statistics.stdev(cand))
    selected = set()
    for k, a in enumerate(anchors):
        scores = [iou_diou(a, b)[1] for b in boxes]
        g = max(range(len(boxes)), key=lambda i: scores[i])
        if not fg[k] and gamma * alphas[g] <= scores[g] < alphas[g]:
            selected.add(k)
    return selected


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_matches_reference_on_three_levels(gamma):
    # 128 px, strides 8/16/32 (16x16 + 8x8 + 4x4 anchors), default virtual anchors of side 8 * stride. Box centres
    # sit off the grid's symmetry lines so that "the 9 nearest" has no ties.
    points, strides, sizes = grid(128, [8, 16, 32])
    boxes = [(20.3, 30.1, 61.7, 58.9), (70.2, 66.6, 121.0, 119.4), (5.1, 90.2, 27.3, 101.9)]
    gt = torch.tensor([boxes])
    mask = torch.ones(1, 3, 1, dtype=torch.bool)
    fg = torch.zeros(1, points.shape[0], dtype=torch.bool)
    fg[0, [37, 38, 53, 300, 301]] = True
    vlr = valuable_localization_region(points, strides, sizes, gt, mask, fg, gamma=gamma)
    expected = _reference(points, strides, sizes, boxes, fg[0].tolist(), gamma, 8.0, 9)
    got = set(vlr[0].nonzero().flatten().tolist())
    assert got == expected
    assert len(got) > 5  # a real band, not an empty set that would match trivially


def test_batch_images_are_independent_and_empty_images_select_nothing():
    points, strides, sizes = grid(64, [8, 16, 32])
    boxes = torch.tensor([[[10.2, 12.7, 40.1, 33.3]], [[0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[[True]], [[False]]])
    fg = torch.zeros(2, points.shape[0], dtype=torch.bool)
    vlr = valuable_localization_region(points, strides, sizes, boxes, mask, fg)
    assert vlr[0].any() and not vlr[1].any()
    single = valuable_localization_region(points, strides, sizes, boxes[:1], mask[:1], fg[:1])
    assert torch.equal(single[0], vlr[0])
    assert not valuable_localization_region(points, strides, sizes, boxes[:, :0], mask[:, :0], fg).any()
    assert math.isfinite(float(atss_alpha_pos(*pairwise_iou_diou(boxes, virtual_anchors(points, strides, 8))[:1],
                                             boxes, points, sizes, 9)[0, 0]))
