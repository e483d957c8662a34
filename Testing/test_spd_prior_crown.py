"""A crown's occlusal end with a prior: where CPD stops on a section the prior itself sees
(``PropagationConfig.past_prior_seen``: a cusp beside the carried centreline points, as on the real head CT's 15
and 25 with the demo prior, docs/segmentation.md) and, off by default, on a section the prior is blind to that
continues the prompted crown's enamel (``past_prior_unseen``).

The synthetic tooth of test_propagation_root_in_bone (a crown in air on slices 14-17, the opposing crown touching its
tip from slice 18), with an oval crown (its centreline along x) whose last two sections are a small cusp off that
line. Each test fails when its rule is switched off.
"""

from __future__ import annotations

import numpy as np
from _infer_helpers import disc
from test_propagation_root_in_bone import AIR, CROWN, OPPOSING, TOOTH, Maps, RootSegmenter, span, tooth_volume

from ldfsam.infer.context_prompts import PriorPropagator
from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig

CPD_STOP = "the prior and the carried prompts stop agreeing"
CUSP = CROWN[-2:]  # the crown's last two sections: a cusp
PROMPT = VoxelPrompt("tooth", (CROWN[0], CROWN[0], 25, 39, 22, 42), False, [], (0, 23))


def oval(cy: float = 32, cx: float = 32, ry: float = 4, rx: float = 8) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def cusp_volume(tip: float = TOOTH) -> np.ndarray:
    vol = tooth_volume()
    for z in CROWN:
        vol[z][disc(32, 32, 6)] = AIR
        vol[z][oval() if z not in CUSP else disc(35, 32, 1.5)] = tip if z in CUSP else TOOTH
    return vol


def run(vol: np.ndarray, maps: Maps, **kw):
    cfg = PropagationConfig(view_context=0, **kw)
    return PriorPropagator(RootSegmenter(vol, threshold=0.3), PROMPT, (1.0, 1.0, 2.0), cfg, maps=maps).run()


def tooth_maps(vol: np.ndarray, blind=()) -> Maps:
    """A prior that marks every tooth voxel (the opposing crown too, as a class-level prior does), except on the
    slices ``blind``."""
    return Maps({z: (vol[z] >= 0.7) * 0.97 * (z not in blind) for z in range(vol.shape[0])})


def test_where_the_prior_sees_a_cusp_beside_the_carried_points_the_crown_goes_on_to_its_end():
    vol = cusp_volume()
    maps = tooth_maps(vol)
    result = run(vol, maps)
    assert span(result)[1] == CROWN[-1], (span(result), result.stopped)
    assert result.trace[CUSP[0]]["past_prior"] == 1.0 and result.trace[CUSP[0]]["seen"] == 1.0
    assert not result.mask[OPPOSING[0]:].any()  # the opposing crown stays out (the gap guard), prior or not
    result = run(vol, maps, past_prior_seen=False)
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1] == CPD_STOP, (span(result), result.stopped)


def test_where_the_prior_sees_only_part_of_the_section_its_stop_stands():
    vol = cusp_volume()
    maps = tooth_maps(vol)
    half = maps.by_slice[CUSP[0]].copy()
    half[:35] = 0  # the prior marks 5 of the cusp's 9 voxels: another outline than the section's
    half[35, :32] = 0
    maps.by_slice[CUSP[0]] = half
    result = run(vol, maps)
    seen = result.trace[CUSP[0]]["seen"]
    assert 1 / 3 < seen < 2 / 3, seen
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1] == CPD_STOP, (span(result), result.stopped)
    result = run(vol, maps, seen_share=0.5)
    assert span(result)[1] == CROWN[-1], (span(result), result.stopped)


def test_a_prior_blind_to_the_crowns_enamel_is_overruled_only_with_past_prior_unseen():
    vol = cusp_volume()
    maps = tooth_maps(vol, blind=CROWN[1:])  # sees the prompted section only
    result = run(vol, maps)
    assert span(result)[1] == CROWN[0] and result.stopped[1] == CPD_STOP, (span(result), result.stopped)
    result = run(vol, maps, past_prior_unseen=True)
    assert span(result)[1] == CROWN[-1], (span(result), result.stopped)
    assert not result.mask[OPPOSING[0]:].any()
    # a cusp darker than the crown's enamel (partial volume) is not overruled: the blind prior's stop stands there
    vol = cusp_volume(tip=0.8)
    result = run(vol, tooth_maps(vol, blind=CROWN[1:]), past_prior_unseen=True)
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1] == CPD_STOP, (span(result), result.stopped)
