"""Following a root through the bone (``PropagationConfig.follow``) where SAM's mask leaves it, on a synthetic tooth:
a bright crown in air over a tapering, drifting bright root inside darker bone (1 × 1 × 2 mm voxels, as the real head
CT of docs/segmentation.md).

The segmenter stands in for SAM's habit on such slices: in a box it takes everything brighter than soft tissue, so
below the crown its mask is the root *and* the bone around it, loses its contrast and the stop rule ends the tooth
at its neck. With ``follow`` the structure goes on along the root to its apex and no further; without it (the test
fails if the part is removed) it ends at the neck.
"""

from __future__ import annotations

import numpy as np
from _infer_helpers import BoxSegmenter, disc

from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig, Propagator

AIR, BONE, TOOTH = 0.1, 0.45, 0.95


def leaky_segmenter(volume: np.ndarray) -> BoxSegmenter:
    """SAM's stand-in taking bone and tooth alike (everything brighter than soft tissue)."""
    return BoxSegmenter(volume, threshold=0.3)


def tooth_volume() -> np.ndarray:
    """Slices 12-17: the crown (radius 6) in air; slices 4-11: the root in bone, its radius 5 -> 1.5 and its centre
    moving half a voxel per slice (a tilted root); bone on slices 0-11."""
    vol = np.full((24, 64, 64), AIR, np.float32)
    vol[0:12, 8:56, 8:56] = BONE
    for z in range(12, 18):
        vol[z][disc(32, 32, 6)] = TOOTH
    for k, z in enumerate(range(11, 3, -1)):
        vol[z][disc(32, 32 - 0.5 * k, 5 - 0.5 * k)] = TOOTH
    return vol


def extent(cfg: PropagationConfig):
    vol = tooth_volume()
    prompt = VoxelPrompt("tooth", (15, 15, 25, 39, 25, 39), False, [], (0, 23))
    result = Propagator(leaky_segmenter(vol), prompt, (1.0, 1.0, 2.0), cfg).run()
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    return result, (int(zs.min()), int(zs.max())), vol


def test_the_root_is_followed_through_the_bone_to_its_apex():
    result, span, vol = extent(PropagationConfig())
    assert span == (4, 17), (span, result.stopped, result.trace)
    # On the root's slices the mask is the root, not the bone around it.
    for z in range(4, 12):
        root = vol[z] > 0.7
        mask = result.mask[z]
        assert (mask & root).sum() >= 0.8 * root.sum() and (mask & ~root).sum() <= 0.2 * mask.sum(), z
        assert result.trace[z]["followed"] == 1.0
        assert result.trace[z]["sam_contrast"] < result.trace[z]["contrast"]
    assert result.stopped == {1: "lost its contrast", -1: "lost its contrast"}


def test_without_following_the_tooth_ends_at_its_neck():
    result, span, _ = extent(PropagationConfig(follow=False))
    assert span == (12, 17), (span, result.stopped)
    assert result.stopped[-1] == "lost its contrast"


def test_following_does_not_cross_a_gap_into_a_darker_mask():
    """Beyond the crown SAM's blob lies in air, darker than its surroundings: the structure ends there (a mask
    darker than its ring is in a gap, never followed), even where a bright structure lies beyond the gap."""
    vol = tooth_volume()
    vol[19:24][:, disc(32, 32, 6)] = TOOTH  # the opposing tooth, past a gap of one slice
    prompt = VoxelPrompt("tooth", (15, 15, 25, 39, 25, 39), False, [], (0, 23))
    result = Propagator(leaky_segmenter(vol), prompt, (1.0, 1.0, 2.0), PropagationConfig()).run()
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    assert zs.max() == 17, (zs, result.stopped)
