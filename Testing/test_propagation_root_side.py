"""The gap guard lifted on a root's side (``PropagationConfig.root_grey`` / ``root_sections``), on a synthetic tooth:
an enamel crown over a dentin neck in air, a dentin root in darker bone, and an opposing enamel crown touching the
crown's tip (1 × 1 × 2 mm voxels, as the real head CT of docs/segmentation.md).

The segmenter stands in for SAM's habit on the real CT's root slices: its mask lies beside the root (the bone or
the ligament between roots), darker than its ring, the sign the gap guard (``follow_gap``) reads as a gap between
the rows. Beyond two dentin-grey sections the structure is in the jaw, so the guard is lifted there and the root is
followed to its apex (the first test fails if the rule is removed); on the crown's enamel side the guard stays, so
the opposing crown beyond the same kind of darker mask is not entered.
"""

from __future__ import annotations

import numpy as np
import pytest
from _infer_helpers import BoxSegmenter, disc

from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig, Propagator

AIR, BONE, DENTIN, ENAMEL = 0.1, 0.45, 0.8, 0.95
ROOT = range(4, 12)  # slices of the root in the bone (apex: slice 4)
NECK = range(12, 15)  # dentin in air
CROWN = range(15, 18)  # enamel
OPPOSING = range(18, 24)  # the other row's crown, touching the tip (no gap slice)


class BesideTheRoot(BoxSegmenter):
    """SAM's stand-in: in a box, everything brighter than soft tissue; on the root's slices and the opposing
    crown's, everything in the box that is not tooth (a mask darker than its ring)."""

    def decode(self, z, box=None, points=(), mask=None, view=None):
        logits, low, iou = super().decode(z, box, points, mask, view)
        if z in ROOT or z in OPPOSING:
            logits = self.beside(z, box, view)
        return logits, low, iou


def tooth_volume() -> np.ndarray:
    vol = np.full((24, 64, 64), AIR, np.float32)
    vol[0:12, 8:56, 8:56] = BONE
    for z in CROWN:
        vol[z][disc(32, 32, 6)] = ENAMEL
    for z in NECK:
        vol[z][disc(32, 32, 5.5)] = DENTIN
    for k, z in enumerate(reversed(ROOT)):  # radius 5 -> 1.5 towards the apex, drifting half a voxel per slice
        vol[z][disc(32, 32 - 0.5 * k, 5 - 0.5 * k)] = DENTIN
    for z in OPPOSING:
        vol[z][disc(32, 32, 6)] = ENAMEL
    return vol


def run(cfg: PropagationConfig):
    vol = tooth_volume()
    prompt = VoxelPrompt("tooth", (16, 16, 25, 39, 25, 39), False, [], (0, 23))
    result = Propagator(BesideTheRoot(vol, threshold=0.3), prompt, (1.0, 1.0, 2.0), cfg).run()
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    return result, (int(zs.min()), int(zs.max())), vol


def test_the_root_is_followed_past_darker_masks_once_its_sections_are_dentin():
    result, span, vol = run(PropagationConfig())
    assert span == (ROOT[0], CROWN[-1]), (span, result.stopped, result.trace)
    for z in ROOT:
        root = vol[z] >= DENTIN
        mask = result.mask[z]
        assert (mask & root).sum() >= 0.8 * root.sum() and (mask & ~root).sum() <= 0.2 * mask.sum(), z
        assert result.trace[z]["sam_contrast"] < 0 and result.trace[z]["root_side"] == 1.0, z
    # Not entered: the opposing crown beyond the enamel, behind the same kind of darker mask.
    assert not result.mask[OPPOSING[0]:].any()


@pytest.mark.parametrize("cfg", [PropagationConfig(root_sections=0), PropagationConfig(root_grey=0.5)],
                         ids=["rule off", "neck taken for enamel"])
def test_without_the_root_side_rule_the_gap_guard_ends_the_tooth_at_its_neck(cfg):
    result, span, _ = run(cfg)
    assert span == (NECK[0], CROWN[-1]), (span, result.stopped)
    assert result.stopped[-1] == "lost its contrast"


def test_near_the_enamel_the_guard_keeps_the_opposing_crown_out():
    """The guard itself is what keeps the opposing crown out here: without it (``follow_gap`` −∞) the structure
    follows into the other row; with the root-side rule it still does not."""
    without, span, _ = run(PropagationConfig(follow_gap=-np.inf))
    assert span[1] > CROWN[-1], span
    result, span, _ = run(PropagationConfig())
    assert span[1] == CROWN[-1], (span, result.stopped)
    assert result.stopped[1] == "lost its contrast"
