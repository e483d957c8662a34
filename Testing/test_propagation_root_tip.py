"""A root's last section (``PropagationConfig.follow_tip``, off by default: docs/segmentation.md, *The root's last
section*, measured why): at an apex the last section is a voxel or a few, below
what root following keeps (``min_area_fraction`` of the prompted section), and it can lie a voxel beside the
previous section instead of on it (a root bending between slices). Where the structure would end on its root's
side, that section is kept, and the structure ends after it: one slice at most.

A synthetic tooth on 1 × 1 × 2 mm voxels: a crown in air, its root in bone narrowing to an apex of two voxels beside
the section before it (as the real head CT's 12, 13 and 23, docs/segmentation.md); SAM's stand-in marks the crown
and, in the bone, the voxels beside the root (as SAM does on the real CT's root slices), so the root is followed.
Each test fails without the rule, or with the tip allowed to go on.
"""

from __future__ import annotations

import numpy as np
from _infer_helpers import BoxSegmenter, disc

from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig, Propagator

AIR, BONE, TOOTH = 0.1, 0.6, 0.95
APEX = 4
CROWN = range(12, 16)  # in air; slice 16 and beyond: air (the gap)
ROOT = range(6, 12)  # in bone, 13 voxels each


def tooth_volume(beyond: int = 0) -> np.ndarray:
    """The tooth; ``beyond``: a chain of that many single bright voxels past the apex (noise in the bone)."""
    vol = np.full((20, 64, 64), AIR, np.float32)
    vol[0:12, 8:56, 8:56] = BONE
    for z in CROWN:
        vol[z][disc(32, 32, 5)] = TOOTH  # 81 voxels: min_area_fraction 0.05 of it is 4 voxels
    for z in ROOT:
        vol[z][disc(32, 32, 2)] = TOOTH
    vol[APEX + 1][disc(32, 32, 1)] = TOOTH  # 5 voxels
    vol[APEX, 32, 34] = vol[APEX, 33, 33] = TOOTH  # the apex: two voxels beside the section above, not on it
    for k in range(1, beyond + 1):
        vol[APEX - k, 32, 34 + k] = TOOTH
    return vol


class RootSegmenter(BoxSegmenter):
    """SAM's stand-in: what is brighter than soft tissue in its box; in the bone, SAM's habit on the real CT's root
    slices: the box's voxels beside the root (bone), so that the root is followed (``StopRules.follow``)."""

    def decode(self, z, box=None, points=(), mask=None, view=None):
        logits, low, iou = super().decode(z, box, points, mask, view)
        if z < CROWN[0]:
            logits = self.beside(z, box, view)
        return logits, low, iou


PROMPT = VoxelPrompt("tooth", (14, 14, 26, 38, 26, 38), False, [], (0, 19))


def run(cfg: PropagationConfig, vol: np.ndarray):
    result = Propagator(RootSegmenter(vol, threshold=0.3), PROMPT, (1.0, 1.0, 2.0), cfg).run()
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    return result, (int(zs.min()), int(zs.max()))


def test_the_roots_last_voxel_is_kept_and_the_structure_ends_there():
    vol = tooth_volume()
    result, span = run(PropagationConfig(follow_tip=True), vol)
    assert span == (APEX, CROWN[-1]), (span, result.stopped)
    assert (result.mask[APEX] == (vol[APEX] >= TOOTH)).all()
    assert result.trace[APEX]["tip"] == 1.0 and result.trace[APEX]["on_previous"] == 0.0
    assert result.stopped[-1].endswith(f"; the root's last section (2 voxels) kept on slice {APEX}"), result.stopped
    assert not result.mask[CROWN[-1] + 1:].any()  # the crown's side, in air, ends at the crown
    result, span = run(PropagationConfig(), vol)  # off by default
    assert span == (APEX + 1, CROWN[-1]) and "root's last section" not in result.stopped[-1], (span, result.stopped)


def test_one_slice_at_most_past_where_the_root_would_end():
    """Single bright voxels go on past the apex of two (each beside the one before, narrower than it): the tip is
    the apex, never a chain; a rule that kept small sections slice after slice would follow noise."""
    result, span = run(PropagationConfig(follow_tip=True), tooth_volume(beyond=3))
    assert span == (APEX, CROWN[-1]), (span, result.stopped)


def test_no_tip_beside_a_crowns_occlusal_end_in_the_gap():
    """A bright voxel in the gap beside the crown's occlusal end (air around it, the crown's enamel before it: not the
    root's side, not in bone) is not a root's tip."""
    vol = tooth_volume()
    vol[CROWN[-1] + 1, 32, 37] = TOOTH
    result, span = run(PropagationConfig(follow_tip=True), vol)
    assert span == (APEX, CROWN[-1]), (span, result.stopped)
