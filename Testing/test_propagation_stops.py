"""Where propagation ends without a prior (``PropagationConfig``'s stop rules), on synthetic volumes where the
propagation without them runs past the structure.

The segmenter here (``_infer_helpers.BoxSegmenter``) is a stand-in for SAM with SAM's habit in a box: it always
finds something. It takes the voxels of the box brighter than half the window, and where there are none, the middle
of the box (as SAM gives a blob in a box on flat background). Each volume is built so that exactly one rule can end
the structure; each test checks that the structure ends there with the rules, and runs past it without them
(``stop_rules=False``), so it fails if the rule is removed. The same rules on LiteMedSAM and a phantom:
``test_infer_prompted.py``.
"""

from __future__ import annotations

import numpy as np
from _infer_helpers import BoxSegmenter

from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig, Propagator


def disc(shape, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def run(volume: np.ndarray, z: int, box, cfg: PropagationConfig):
    y0, y1, x0, x1 = box
    prompt = VoxelPrompt("s", (z, z, y0, y1, x0, x1), False, [], (0, volume.shape[0] - 1))
    result = Propagator(BoxSegmenter(volume), prompt, (1.0, 1.0, 2.0), cfg).run()
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    return result, (int(zs.min()), int(zs.max()))


def test_a_structure_ends_where_it_loses_its_contrast():
    """A bright rod on slices 6-13 in a dark volume: without the rules the box's blob goes on through the dark
    slices to both ends of the volume; with them the structure ends where its contrast is gone."""
    vol = np.full((24, 64, 64), 0.1, np.float32)
    vol[6:14][:, disc((64, 64), 32, 32, 5)] = 0.9
    _, old = run(vol, 9, (26, 38, 26, 38), PropagationConfig(stop_rules=False))
    assert old == (0, 23)
    result, new = run(vol, 9, (26, 38, 26, 38), PropagationConfig())
    assert new == (6, 13), result.stopped
    assert result.stopped == {1: "lost its contrast", -1: "lost its contrast"}
    assert result.trace[14]["contrast"] < 0.1 < result.trace[13]["contrast"]


def test_a_structure_ends_where_the_mask_jumps_to_another_one():
    """A rod on slices 4-11 and, from slice 12 on, a wider rod beside it that touches its side (another tooth
    seen from one slice to the next): without the rules propagation walks into the second rod and along it; with
    them the structure ends where most of the mask is no longer on the previous one."""
    vol = np.full((20, 64, 64), 0.1, np.float32)
    vol[4:12][:, disc((64, 64), 32, 26, 4)] = 0.9
    vol[12:20][:, disc((64, 64), 32, 39, 9)] = 0.9
    _, old = run(vol, 7, (27, 37, 21, 31), PropagationConfig(stop_rules=False))
    assert old[1] == 19
    result, new = run(vol, 7, (27, 37, 21, 31), PropagationConfig())
    assert new == (4, 11), result.stopped
    assert result.stopped[1] == "jumped to another structure"
    assert result.trace[12]["on_previous"] < PropagationConfig().min_on_previous


def test_rules_do_not_cut_a_structure_that_narrows_or_drifts():
    """A rod that tapers and drifts half a voxel per slice (a root) is followed to its end, as without the rules;
    only the dark slices beyond its ends are left out."""
    vol = np.full((20, 64, 64), 0.1, np.float32)
    for k, z in enumerate(range(3, 15)):
        vol[z][disc((64, 64), 32, 24 + 0.5 * k, 6 - 0.25 * k)] = 0.9
    _, old = run(vol, 4, (25, 39, 17, 31), PropagationConfig(stop_rules=False))
    result, new = run(vol, 4, (25, 39, 17, 31), PropagationConfig())
    assert old == (0, 19)
    assert new == (3, 14), (result.stopped, result.trace)
