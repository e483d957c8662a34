"""A crown's occlusal end with a prior: where CPD stops on a section the prior itself sees
(``PropagationConfig.past_prior_seen``: a cusp beside the carried centreline points, as on the real head CT's 15
and 25 with the demo prior, docs/segmentation.md) and on a section the prior is blind to that continues a box
structure's crown enamel (``past_prior_unseen``, against the chain's brightest section: ``unseen_brightest``;
``unseen_box_only``).

The synthetic tooth of test_propagation_root_in_bone (a crown in air on slices 14-17, the opposing crown touching its
tip from slice 18), with an oval crown (its centreline along x) whose last two sections are a small cusp off that
line. Each test fails when its rule is switched off; the last, where a stop reason does not say which of these rules
kept no section past CPD's stop, and why.
"""

from __future__ import annotations

import numpy as np
from _infer_helpers import BoxSegmenter, disc
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
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1].startswith(CPD_STOP), (span(result), result.stopped)


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
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1].startswith(CPD_STOP), (span(result), result.stopped)
    result = run(vol, maps, seen_share=0.5)
    assert span(result)[1] == CROWN[-1], (span(result), result.stopped)


def test_a_prior_blind_to_the_crowns_enamel_is_overruled_only_with_past_prior_unseen():
    vol = cusp_volume()
    maps = tooth_maps(vol, blind=CROWN[1:])  # sees the prompted section only
    result = run(vol, maps, past_prior_unseen=False)
    assert span(result)[1] == CROWN[0] and result.stopped[1].startswith(CPD_STOP), (span(result), result.stopped)
    result = run(vol, maps)  # on by default
    assert span(result)[1] == CROWN[-1], (span(result), result.stopped)
    assert not result.mask[OPPOSING[0]:].any()
    # a cusp darker than the crown's enamel (partial volume) is not overruled: the blind prior's stop stands there
    vol = cusp_volume(tip=0.8)
    result = run(vol, tooth_maps(vol, blind=CROWN[1:]))
    assert span(result)[1] == CUSP[0] - 1 and result.stopped[1].startswith(CPD_STOP), (span(result), result.stopped)


def test_a_blind_priors_enamel_test_is_against_the_brightest_crown_section_not_the_prompted_one():
    """``unseen_brightest``: a box drawn on a dim crown section (partial volume: 0.90), a bright crown (0.98) below
    it, then the other row's crown in occlusion (0.90: as bright as the prompted section, dimmer than the crown's
    enamel), which the prior sees for two slices and is blind to beyond (a held-out phantom's noisy box, tooth 11 of
    seed 9104: the PSC-trained prior had carried it two slices into the lower row). Against the prompted section the
    other row's crown is enamel and ``past_prior_unseen`` runs on through it; against the brightest section of the
    chain it is not, and CPD's stop stands."""
    upper, other, seen_until = range(10, 14), range(14, 20), 15
    vol = np.full((24, 64, 64), AIR, np.float32)
    for z in (*upper, *other):
        vol[z][disc(32, 32, 6)] = 0.90 if z in other or z == upper[0] else 0.98
    maps = Maps({z: (vol[z] >= 0.7) * 0.97 * (upper[0] <= z <= seen_until) for z in range(24)})
    prompt = VoxelPrompt("tooth", (upper[0], upper[0], 25, 39, 25, 39), False, [], (0, 23))

    def run_(**kw):
        cfg = PropagationConfig(view_context=0, past_prior_unseen=True, **kw)
        return PriorPropagator(BoxSegmenter(vol, threshold=0.3), prompt, (1.0, 1.0, 2.0), cfg, maps=maps).run()

    result = run_(unseen_brightest=False)
    assert span(result) == (upper[0], other[-1]), (span(result), result.stopped)
    result = run_()
    assert span(result) == (upper[0], seen_until), (span(result), result.stopped)
    assert result.stopped[1].startswith(CPD_STOP), result.stopped


def test_a_blind_priors_stop_stands_for_a_structure_prompted_with_clicks_alone():
    """``unseen_box_only``: a line of clicks whose first click is on a root's dim apex section (grey 0.64); beyond it
    a section of bone as grey (0.62), which the prior does not mark. Against the prompted section it passes the enamel
    test, so ``past_prior_unseen`` would keep it; a click structure's prompted slice is no crown, and CPD's stop
    stands (with a box, the prompted section is the crown the box was drawn around)."""
    root, beyond = range(10, 14), 9
    vol = np.full((24, 64, 64), AIR, np.float32)
    for z in root:
        vol[z][disc(32, 32, 2)] = 0.64
    vol[beyond][disc(32, 32, 2)] = 0.62
    maps = Maps({z: (vol[z] >= 0.5) * 0.97 * (z in root) for z in range(24)})
    clicks = [(z, 32.0, 32.0, True) for z in root]
    prompt = VoxelPrompt("tooth", None, False, clicks, (0, 23))

    class ClickSegmenter(BoxSegmenter):  # the anchor slice's clicks alone: a box of 4 voxels around them
        def decode(self, z, box=None, points=(), mask=None, view=None):
            if box is None:
                ys, xs = [p[0] for p in points], [p[1] for p in points]
                box = (min(ys) - 4, max(ys) + 4, min(xs) - 4, max(xs) + 4)
            return super().decode(z, box, points, mask, view)

    def run_(**kw):
        cfg = PropagationConfig(view_context=0, past_prior_unseen=True, **kw)
        return PriorPropagator(ClickSegmenter(vol, threshold=0.3), prompt, (1.0, 1.0, 2.0), cfg, maps=maps).run()

    result = run_(unseen_box_only=False)
    assert span(result)[0] == beyond, (span(result), result.stopped)
    result = run_()
    assert span(result)[0] == root[0] and result.stopped[-1].startswith(CPD_STOP), (span(result), result.stopped)
    assert result.stopped[-1].endswith("past_prior_unseen: a structure prompted without a box (unseen_box_only)")
    # beyond the root's other end (air) the section decoded past CPD's stop ends the structure by the contrast rule
    assert result.stopped[1] == f"{CPD_STOP}, and the section decoded there lost its contrast", result.stopped


def test_where_the_rules_past_cpds_stop_keep_no_section_the_reason_says_which_rule_and_why():
    """Where CPD stops, ``past_prior_seen`` and ``past_prior_unseen`` decode the slice and keep no section there, the
    stop reason says what each of them found against it, not only that CPD stopped; where no rule decodes past CPD's
    stop, its reason stands alone."""
    vol = cusp_volume()
    maps = tooth_maps(vol)
    half = maps.by_slice[CUSP[0]].copy()
    half[:35] = 0  # the prior marks 5 of the cusp's 9 voxels (as in the test above)
    half[35, :32] = 0
    maps.by_slice[CUSP[0]] = half
    kept_none = f"{CPD_STOP}, and no rule keeps the section decoded there: "
    result = run(vol, maps)
    assert span(result)[1] == CUSP[0] - 1, (span(result), result.stopped)
    assert result.stopped[1] == kept_none + ("past_prior_seen: the prior sees 56 % of it, less than 67 %; "
                                             "past_prior_unseen: the prior sees 56 % of it, more than 33 %")
    result = run(vol, maps, past_prior_unseen=False)
    assert result.stopped[1] == kept_none + "past_prior_seen: the prior sees 56 % of it, less than 67 %"
    # a blind prior and a cusp darker than the crown's enamel: past_prior_unseen's enamel test rejects it
    vol = cusp_volume(tip=0.8)
    maps = tooth_maps(vol, blind=CROWN[1:])
    result = run(vol, maps)
    assert span(result)[1] == CUSP[0] - 1, (span(result), result.stopped)
    assert result.stopped[1] == kept_none + ("past_prior_seen: the prior sees 0 % of it, less than 67 %; "
                                             "past_prior_unseen: its grey 0.80 is below 0.90 (0.95 of the crown's "
                                             "enamel, 0.95)")
    result = run(vol, maps, past_prior_in_bone=False, past_prior_seen=False, past_prior_unseen=False)
    assert span(result)[1] == CROWN[0] and result.stopped[1] == CPD_STOP, (span(result), result.stopped)
