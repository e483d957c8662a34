"""Coarse-to-fine choice of model slices (ldfsam/infer/adaptive_slices.py) with a synthetic model whose masks
are discs changing along z, against running the model on every candidate."""

from __future__ import annotations

import numpy as np
import torch

from ldfsam.infer.adaptive_slices import COARSE_STEP, SliceSchedule
from ldfsam.infer.slice_sampling import SliceFiller

S = 32  # model slice size
YX = (40, 48)  # input slice size


def _radius(i: int) -> float:
    """Teeth on candidates 10..90: growing over 10..30 (a crown), steady over 30..80, shrinking to 90."""
    if i < 10 or i > 90:
        return 0.0
    if i < 30:
        return 2.0 + 0.5 * (i - 10)
    if i <= 80:
        return 12.0
    return 12.0 - 1.0 * (i - 80)


def _model(indices, classes: int = 1):
    """Logits B×C×S×S (signed distance to the disc edge, scaled) and teeth flags for candidate indices."""
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                            indexing="ij")
    dist = torch.sqrt((yy - S / 2) ** 2 + (xx - S / 2) ** 2)
    out, has = [], []
    for i in indices:
        r = _radius(i)
        logit = 2.0 * (r - dist)
        if classes == 1:
            out.append(logit[None])
        else:  # class 2 on the left half, class 1 on the right: the split moves with z
            left = (xx < S / 2 + (i - 50) / 4).float()
            out.append(torch.stack([logit - 10 * left, logit - 10 * (1 - left)]))
        has.append(r > 0)
    return torch.stack(out), torch.tensor(has)


def _segment(count: int, coarse: int, classes: int = 1, batch: int = 8):
    labels = np.zeros((count,) + YX, np.uint8)
    schedule = SliceSchedule(np.arange(count), SliceFiller(labels, 0.0, classes), 0.0, coarse=coarse)
    runs, held = [], 0
    while (chosen := schedule.next_batch(batch)) is not None:
        assert len(chosen) <= batch
        runs.extend(chosen)
        logits, has = _model(chosen, classes)
        schedule.record(chosen, logits, has)
        held = max(held, len(schedule.logits))
        assert schedule.resolved <= count
    assert schedule.resolved == count
    assert schedule.model_slices == len(runs)
    return labels, runs, held


def _dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_fixed_spacing_runs_every_candidate_in_order_and_streams():
    labels, runs, held = _segment(101, coarse=1, batch=3)
    assert runs == list(range(101))
    assert held <= 1  # each model slice goes to the label map as soon as it is recorded
    # Exactly what the filler gives when fed directly.
    direct = np.zeros_like(labels)
    filler = SliceFiller(direct, 0.0, 1)
    logits, has = _model(range(101))
    filler.add(list(range(101)), logits, has)
    filler.finish()
    assert np.array_equal(labels, direct)


def test_adaptive_runs_fewer_slices_and_agrees_with_every_candidate():
    every, _, _ = _segment(101, coarse=1)
    labels, runs, held = _segment(101, coarse=COARSE_STEP)
    assert len(runs) == len(set(runs)), "a candidate ran twice"
    assert len(runs) < 0.6 * 101, len(runs)
    assert _dice(labels > 0, every > 0) >= 0.99
    # Where teeth begin and end, the model ran on the neighbouring candidates themselves.
    assert {9, 10, 90, 91} <= set(runs)
    # Where the masks do not change (30..80), most candidates are interpolated.
    steady = [i for i in runs if 34 <= i <= 76]
    assert len(steady) <= (76 - 34) / COARSE_STEP + 1
    # The slices without teeth are left as they are: no label outside 10..90.
    assert not labels[:9].any() and not labels[92:].any()
    assert held < len(runs)


def test_adaptive_with_several_classes():
    every, _, _ = _segment(101, coarse=1, classes=2)
    labels, runs, _ = _segment(101, coarse=COARSE_STEP, classes=2)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(runs) < 101
    for c in (1, 2):
        assert _dice(labels == c, every == c) >= 0.98


def test_batches_never_mix_levels_and_the_first_level_is_coarse():
    labels = np.zeros((50,) + YX, np.uint8)
    schedule = SliceSchedule(np.arange(50), SliceFiller(labels, 0.0, 1), 0.0, coarse=4)
    first = []
    while (chosen := schedule.next_batch(100)) is not None and not first:
        first = chosen
        schedule.record(chosen, *_model(chosen))
    assert first == list(range(0, 50, 4)) + [49]


def test_positions_map_candidates_to_input_slices():
    """Candidates are indices into ``positions``: the filler writes input slices between them."""
    positions = np.arange(0, 303, 3)  # 101 candidates, 3 input slices apart
    labels = np.zeros((303,) + YX, np.uint8)
    schedule = SliceSchedule(positions, SliceFiller(labels, 0.0, 1), 0.0, coarse=COARSE_STEP)
    while (chosen := schedule.next_batch(8)) is not None:
        schedule.record(chosen, *_model(chosen))
    rows = labels.reshape(303, -1).any(1)
    assert rows[30] and rows[270] and not rows[:26].any() and not rows[275:].any()


def test_a_half_whose_curve_through_three_slices_is_straight_enough_is_interpolated_unseen():
    """Teeth whose radius bends along z (10 + 0.1 z² pixels): the middles of the first gaps miss the line between
    their ends, and each half differs across its ends by more than the tolerance, but the parabola through the
    three model slices around a half and the line across it agree at its middle, so the candidates between are
    interpolated without running; the result still agrees with the model on every candidate."""
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    dist = torch.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)

    def segment(count, coarse):
        labels = np.zeros((count, size, size), np.uint8)
        schedule = SliceSchedule(np.arange(count), SliceFiller(labels, 0.0, 1), 0.0, coarse=coarse)
        runs = []
        while (chosen := schedule.next_batch(8)) is not None:
            runs.extend(chosen)
            radius = torch.tensor([10.0 + 0.1 * i * i for i in chosen])
            schedule.record(chosen, (2.0 * (radius[:, None, None] - dist))[:, None], radius > 0)
        return labels, runs

    every, _ = segment(9, 1)
    labels, runs = segment(9, COARSE_STEP)
    assert sorted(runs) == [0, 2, 4, 6, 8], runs  # the odd candidates were all run before (every one of the 9)
    assert _dice(labels > 0, every > 0) >= 0.99
