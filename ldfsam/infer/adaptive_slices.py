"""Which candidate slices the model runs on, coarse to fine, and when their logits may go to the label map.

``--slice-spacing auto`` gives the model candidate slices about one model pixel apart (``slice_sampling``). Most
of them are not needed: along a root or a crown the masks change steadily, and linear interpolation between two
candidates a few apart recovers the ones between. So the model first runs on every ``coarse``-th candidate
(first and last included); then, level by level, on the candidate halfway between two model slices whose masks
differ by more than ``tolerance`` (the share of their union where they disagree, or teeth on one side only).
When that middle slice comes out as interpolation predicted it (within the same tolerance), both halves are
interpolated without going finer; otherwise they are refined in turn, down to neighbouring candidates, except a
half whose three model slices (the gap's ends and its middle, all with teeth) bend too little for the line across
it to miss: where the parabola through them and that line give the same mask at the half's middle, the half is
interpolated unseen (on the 420-slice benchmark volume 36 encoder passes instead of 51 at Dice -0.0007;
docs/segmentation.md). Two model
slices without teeth leave the candidates between them without teeth, unseen: no tooth fits within ``coarse``
model pixels (2.5 mm for a 16 cm field of view). Fixed spacings are ``coarse=1``: every candidate, in order.

Model slices reach the ``SliceFiller`` in increasing z as soon as the gap before them is settled, so at most the
unsettled ones are held (fixed spacings hold none).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from .predictor import EMPTY_LOGIT
from .slice_sampling import SliceFiller, threshold_logits

# Candidates between the first model slices: 4 model pixels (2.5 mm for a 16 cm field of view).
COARSE_STEP = 4
# Largest share of two masks' union on which they may disagree: two neighbouring model slices, to be interpolated
# without looking between them; an interpolated middle slice and the model's, to trust interpolation on both
# halves. Chosen on demo-model phantoms (docs/segmentation.md): at 0.05 the result agrees with every candidate at
# Dice 0.998-1.0 on all five; 0.075 and 0.1 save a few more slices but fall to 0.9915 and 0.989 on some.
TOLERANCE = 0.05


class SliceSchedule:
    """Coarse-to-fine choice among the candidate slices at input ``positions``, feeding a :class:`SliceFiller`.

    ``next_batch(n)`` gives up to n candidate indices to run (None when done); ``record`` takes their logits
    (B×C×S×S) and teeth flags; the filler receives every model slice once its left gap is settled.
    """

    def __init__(self, positions: Sequence[int], filler: SliceFiller, cut: float, coarse: int = 1,
                 tolerance: float = TOLERANCE) -> None:
        if len(positions) < 1:
            raise ValueError("no candidate slices")
        self.positions, self.filler = [int(p) for p in positions], filler
        count = len(self.positions)
        self.cut, self.tolerance = cut, tolerance
        self.logits: Dict[int, Optional[torch.Tensor]] = {}  # model slices not yet flushed (None: no teeth)
        self.teeth: Dict[int, bool] = {}  # every model slice
        self.settled: Set[Tuple[int, int]] = set()  # gaps (a, b) that are interpolated, not refined
        self.parent: Dict[int, Tuple[int, int]] = {}  # a midpoint -> the gap it splits
        self.triple: Dict[Tuple[int, int], Tuple[int, int, int]] = {}  # a half -> the three model slices around it
        self.flushed = -1  # candidates up to here are in the filler
        step = max(1, int(coarse))
        self.pending: List[int] = sorted(set(range(0, count, step)) | {count - 1})

    @property
    def model_slices(self) -> int:
        return len(self.teeth)

    @property
    def resolved(self) -> int:
        """Candidates whose fate is known: run, or inside a settled gap (for progress)."""
        return len(self.teeth) + sum(b - a - 1 for a, b in self.settled)

    def encoded_neighbours(self, i: int) -> Optional[Tuple[int, int]]:
        """(a, b) when candidate ``i`` is run as the middle of a gap between its two neighbouring candidates a and
        b (the finest level) and both hold teeth, else None."""
        gap = self.parent.get(i)
        if gap is None or gap[1] - gap[0] != 2 or not (self.teeth.get(gap[0]) and self.teeth.get(gap[1])):
            return None
        return gap

    def may_be_neighbour(self, i: int) -> bool:
        """Whether model slice ``i`` may still be an end of a gap that ``encoded_neighbours`` offers: the gap to
        the model slice before or after it has candidates inside and is not settled (or there is none yet)."""
        done = sorted(self.teeth)
        k = done.index(i)
        for j in (done[k - 1] if k > 0 else None, done[k + 1] if k + 1 < len(done) else None):
            if j is None:
                if 0 < i < len(self.positions) - 1:
                    return True  # the candidates on that side are not run yet
                continue
            a, b = min(i, j), max(i, j)
            if b - a > 1 and (a, b) not in self.settled:
                return True
        return False

    def next_batch(self, size: int) -> Optional[List[int]]:
        if not self.pending:
            self.pending = self._refine()
        if not self.pending:
            self._flush()
            self.filler.finish()
            return None
        batch, self.pending = self.pending[:size], self.pending[size:]
        return batch

    def record(self, indices: Sequence[int], logits: torch.Tensor, has_teeth: torch.Tensor) -> None:
        for j, (i, h) in enumerate(zip(indices, has_teeth.tolist())):
            self.teeth[i] = bool(h)
            self.logits[i] = logits[j].clone() if h else None  # a clone: the batch tensor is not kept alive
        for i in indices:
            if i in self.parent:
                a, b = self.parent.pop(i)
                if self._predicted(a, i, b):  # interpolation got the middle right: trust it on both halves
                    self.settled.update({(a, i), (i, b)})
                else:  # each half is judged by its curve through the three (``_curved``)
                    self.triple[(a, i)] = self.triple[(i, b)] = (a, i, b)
        self._flush()

    def _refine(self) -> List[int]:
        done = sorted(self.teeth)
        middles = []
        for a, b in zip(done, done[1:]):
            if b - a < 2 or (a, b) in self.settled:
                continue
            if self._differ(a, b) and self._curved(a, b):
                middles.append((a + b) // 2)
                self.parent[middles[-1]] = (a, b)
            else:
                self.settled.add((a, b))
        return middles

    def _differ(self, a: int, b: int) -> bool:
        ta, tb = self.teeth[a], self.teeth[b]
        if not ta and not tb:
            return False
        if ta != tb:
            return True
        ma, mb = self._mask(self.logits[a]), self._mask(self.logits[b])
        union = torch.count_nonzero((ma > 0) | (mb > 0)).item()
        return torch.count_nonzero(ma != mb).item() > self.tolerance * union

    def _predicted(self, a: int, m: int, b: int) -> bool:
        """Whether interpolating between a and b would have given m's mask, within the tolerance."""
        la, lm, lb = self.logits.get(a), self.logits.get(m), self.logits.get(b)
        like = next(x for x in (la, lb, lm) if x is not None)
        empty = torch.full_like(like, EMPTY_LOGIT)
        pa, pm, pb = self.positions[a], self.positions[m], self.positions[b]
        guess = torch.lerp(la if la is not None else empty, lb if lb is not None else empty, (pm - pa) / (pb - pa))
        mg, mm = self._mask(guess), self._mask(lm if lm is not None else empty)
        union = torch.count_nonzero((mg > 0) | (mm > 0)).item()
        return torch.count_nonzero(mg != mm).item() <= self.tolerance * union

    def _curved(self, a: int, b: int) -> bool:
        """Whether a half (a, b) of a gap whose middle interpolation missed may still be off between a and b: the
        line through a and b and the parabola through the three model slices around it (the gap's ends and its
        middle) give masks at the middle of (a, b) that differ by more than the tolerance. Where they agree, the
        logits bend too little over (a, b) for the line to miss: the error of linear interpolation is what the
        parabola adds to it, and a quarter of what it was over the whole gap. True (look) without three slices that
        all hold teeth."""
        three = self.triple.get((a, b))
        if three is None or any(i not in self.logits for i in three):
            return True
        la, lm, lb = (self.logits[i] for i in three)
        if la is None or lm is None or lb is None:
            return True  # where teeth begin or end, the candidates themselves: no curve through "no teeth"
        x0, x1, x2 = (self.positions[i] for i in three)
        x = self.positions[(a + b) // 2]
        pa, pb = self.positions[a], self.positions[b]
        line = torch.lerp(self.logits[a], self.logits[b], (x - pa) / (pb - pa))
        w0 = (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2))
        w1 = (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
        w2 = (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1))
        curve = w0 * la + w1 * lm + w2 * lb
        ml, mc = self._mask(line), self._mask(curve)
        union = torch.count_nonzero((ml > 0) | (mc > 0)).item()
        return torch.count_nonzero(ml != mc).item() > self.tolerance * union

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        return threshold_logits(logits, self.cut)[0]  # as the filler thresholds

    def _flush(self) -> None:
        """Hand the filler every model slice whose left gap is settled (or has no candidates), in order."""
        done = sorted(i for i in self.teeth if i > self.flushed)
        for b in done:
            a = self.flushed
            if a >= 0 and b - a > 1 and (a, b) not in self.settled and not self._settles(a, b):
                return
            self.filler.add_slice(self.positions[b], self.logits.get(b))
            if a >= 0:
                self.logits.pop(a, None)  # its gaps on both sides are settled: not needed again
            self.flushed = b

    def _settles(self, a: int, b: int) -> bool:
        """A gap with no candidate pending inside it that the refinement step would leave alone (decided now,
        so fixed spacings and finished levels flush without waiting for ``_refine``)."""
        if any(a < p < b for p in self.pending) or self._differ(a, b):
            return False
        self.settled.add((a, b))
        return True
