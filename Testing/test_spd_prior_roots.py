"""A root followed as far with a prior as without one where the prior does not mark roots (the demo prior on the real
head CT, docs/segmentation.md): ``PropagationConfig.past_prior_in_bone`` (CPD's stop overruled where the section lies
in bone), ``image_on_root`` (on the root's side the slices prompted as without a prior), ``gap_in_bone`` (the gap
guard lifted on a slice whose SAM mask lies in bone), ``ContextConfig.points_with_box`` 0 (carried points do
not prompt the decoder next to a box), the margins of a validated box and of CPD's consensus box
(``PropagationConfig.margin_mm``; ``ContextConfig.click_margin`` for structures prompted with clicks alone), and
``chain_skips_prompt`` (the bone chain starts below the prompted section) and ``chain_dentin`` (a section without
enamel continues the chain of ``past_prior_in_bone`` though its ring is darker than bone).

The synthetic tooth of test_propagation_root_in_bone: a crown in air, its root in bone, dentin as bright as enamel,
an opposing crown touching its tip. Each test fails when its rule is switched off.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from _infer_helpers import disc
from test_propagation_root_in_bone import (
    APEX,
    CROWN,
    HIDDEN,
    PROMPT,
    SAM_ROOT,
    TOOTH,
    Maps,
    RootSegmenter,
    run_prior,
    span,
    tooth_volume,
)

from ldfsam.infer.context_prompts import ContextConfig, ContextPrompts, PriorPropagator
from ldfsam.infer.prompt_validation import ValidationConfig, validate_box
from ldfsam.infer.prompts import VoxelPrompt
from ldfsam.infer.propagate import PropagationConfig, Propagator

CPD_STOP = "the prior and the carried prompts stop agreeing"


def crown_and_root_maps(vol: np.ndarray, root=SAM_ROOT) -> Maps:
    """A prior that marks the crown and the given root slices, and nothing else (no apex, no opposing crown)."""
    return Maps({z: ((vol[z] >= TOOTH) * 0.97 if z in CROWN or z in root else np.zeros(vol.shape[1:]))
                 for z in range(vol.shape[0])})


class Recorder(RootSegmenter):
    """The stand-in recording what the decoder was given: every call's points, each slice's first box."""

    def __init__(self, volume, threshold: float = 0.3) -> None:
        super().__init__(volume, threshold=threshold)
        self.calls, self.boxes = [], {}

    def decode(self, z, box=None, points=(), mask=None, view=None):
        self.calls.append((z, list(points)))
        self.boxes.setdefault(z, tuple(box))
        return super().decode(z, box, points, mask, view)


def test_where_cpd_stops_in_bone_the_root_is_followed_as_without_a_prior():
    """A box on a root section in bone; the prior marks the root down to slice 10 only. Below, CPD stops; the
    sections there and every one from the prompted slice lie in bone, so the root goes on as without a prior. From
    a box on the crown in air the chain of sections in bone is broken: CPD's stop stands (the other row's bone,
    reached across a gap, is no root of this tooth)."""
    vol = tooth_volume()
    maps = crown_and_root_maps(vol)
    in_bone = VoxelPrompt("root", (SAM_ROOT[-1], SAM_ROOT[-1], 28, 36, 28, 36), False, [], (0, 23))

    def run_root(prompt, **kw):
        cfg = PropagationConfig(view_context=0, image_on_root=False, **kw)
        return PriorPropagator(RootSegmenter(vol, threshold=0.9), prompt, (1.0, 1.0, 2.0), cfg, maps=maps).run()

    result = run_root(in_bone)
    assert span(result)[0] == APEX, (span(result), result.stopped)
    assert all(result.trace[z].get("past_prior") == 1.0 for z in HIDDEN)
    result = run_root(in_bone, past_prior_in_bone=False)
    assert span(result)[0] == SAM_ROOT[0] and result.stopped[-1].startswith(CPD_STOP), (span(result), result.stopped)
    result = run_root(PROMPT)
    assert span(result)[0] == SAM_ROOT[0] and result.stopped[-1].startswith(CPD_STOP), (span(result), result.stopped)


def test_the_priors_stop_stands_outside_bone():
    """With the gap guard off, propagation without a prior follows the crown into the touching opposing crown (in
    air); the prior, which does not mark that crown, ends the structure at its own tip: the section there is not in
    bone, so CPD's stop stands. (``past_prior_unseen``, on by default, keeps sections the prior is blind to that
    continue the crown's enamel: the opposing crown here is as bright, so without the gap guard it would follow the
    crown into it; that rule leaves the occlusal end to the image's rules, test_spd_prior_crown.py.)"""
    vol = tooth_volume()
    maps = crown_and_root_maps(vol)
    cfg = PropagationConfig(follow_gap=-np.inf, view_context=0)
    plain = Propagator(RootSegmenter(vol), PROMPT, (1.0, 1.0, 2.0), cfg).run()
    assert span(plain)[1] > CROWN[-1], span(plain)
    result = run_prior(maps, PropagationConfig(follow_gap=-np.inf, past_prior_unseen=False))
    assert span(result)[1] == CROWN[-1] and result.stopped[1].startswith(CPD_STOP), (span(result), result.stopped)


def test_on_the_roots_side_the_slices_are_prompted_as_without_a_prior():
    """A prior whose salient region on the root slices lies beside the root (it holds the carried points, so CPD
    goes on): its consensus box would be fitted to that region; on the root's side, reached from a box on the root
    without leaving bone, the decoder gets the previous mask's box, as without a prior. From a box on the crown in
    air (the bone chain broken) CPD prompts as before."""
    vol = tooth_volume()
    beside = {z: np.where(disc(32, 38, 4) | disc(32, 32, 1), 0.97, 0.0) for z in list(SAM_ROOT) + list(HIDDEN)}
    maps = Maps({z: beside.get(z, (vol[z] >= TOOTH) * 0.97 if z in CROWN else np.zeros(vol.shape[1:]))
                 for z in range(vol.shape[0])})
    in_bone = VoxelPrompt("root", (SAM_ROOT[-1], SAM_ROOT[-1], 28, 36, 28, 36), False, [], (0, 23))
    root = range(APEX, SAM_ROOT[-2])  # the root's side: two sections in bone before each
    for prompt, on, expected in ((in_bone, True, True), (in_bone, False, False), (PROMPT, True, False)):
        seg = Recorder(vol, threshold=0.9)
        Propagator(seg, prompt, (1.0, 1.0, 2.0), PropagationConfig(view_context=0)).run()
        plain = dict(seg.boxes)
        seg = Recorder(vol, threshold=0.9)
        PriorPropagator(seg, prompt, (1.0, 1.0, 2.0), PropagationConfig(view_context=0, image_on_root=on),
                        maps=maps).run()
        same = [z for z in root if seg.boxes.get(z) == plain.get(z)]
        assert (same == list(root)) == expected, (prompt.name, on, same, seg.boxes, plain)


def test_a_root_prompted_in_bone_is_followed_from_the_next_slice():
    """A box on the root's first slice in bone: on the next one SAM's mask lies beside the root, darker than its
    ring. The ring is bone, not the air of a gap between the rows, so the gap guard is lifted there already."""
    prompt = VoxelPrompt("root", (SAM_ROOT[0], SAM_ROOT[0], 29, 35, 29, 35), False, [], (0, 23))
    vol = tooth_volume()
    for on, first in ((True, APEX), (False, SAM_ROOT[0])):
        cfg = PropagationConfig(view_context=0, gap_in_bone=on)
        result = Propagator(RootSegmenter(vol, threshold=0.9), prompt, (1.0, 1.0, 2.0), cfg).run()
        assert span(result)[0] == first, (on, span(result), result.stopped)
    assert result.trace[HIDDEN[-1]]["sam_contrast" if on else "contrast"] < 0


def test_carried_points_do_not_prompt_the_decoder_next_to_a_box():
    vol = tooth_volume()
    maps = Maps({z: (vol[z] >= TOOTH) * 0.97 for z in range(vol.shape[0])})
    for context, carried in ((None, False), (ContextConfig(points_with_box=4), True)):
        seg = Recorder(vol)
        PriorPropagator(seg, PROMPT, (1.0, 1.0, 2.0), PropagationConfig(view_context=0), maps=maps,
                        context=context).run()
        assert any(points for _, points in seg.calls) == carried, seg.calls


def test_a_validated_box_keeps_a_margin_around_the_priors_tooth():
    prob = np.zeros((64, 64))
    prob[disc(32, 32, 4)] = 0.97  # rows and columns 28-36
    view = (0, 64, 0, 64)
    cfg = ValidationConfig()
    drawn = (27.0, 37.0, 26.0, 38.0)  # one and two voxels around it
    assert validate_box(16, drawn, prob, view, 0.5, cfg, (2.0, 2.0))[0] == drawn
    assert validate_box(16, drawn, prob, view, 0.5, cfg)[0] == (28.0, 36.0, 28.0, 36.0)  # without a margin
    loose = (24.0, 37.0, 26.0, 41.0)
    assert validate_box(16, loose, prob, view, 0.5, cfg, (2.0, 2.0))[0] == (26.0, 37.0, 26.0, 38.0)
    short = (30.0, 37.0, 26.0, 38.0)  # cuts the tooth: moved out to the margin
    assert validate_box(16, short, prob, view, 0.5, cfg, (2.0, 2.0))[0] == (26.0, 37.0, 26.0, 38.0)
    # the propagator gives the margin of its boxes, in voxels
    pp = PriorPropagator(RootSegmenter(tooth_volume()), PROMPT, (0.5, 0.5, 2.0), PropagationConfig(view_context=0),
                         maps=Maps({z: np.zeros((64, 64)) for z in range(24)}))
    assert pp.context.margin == (4.0, 4.0)


def test_the_consensus_box_keeps_the_margin_of_propagations_boxes():
    prob = np.zeros((64, 64))
    prob[24:41, 24:41] = 0.97
    maps = Maps({z: prob for z in range(3)})
    grown = (16.0, 48.0, 16.0, 48.0)
    for margin, box in (((3.0, 3.0), (21.0, 43.0, 21.0, 43.0)), ((1.0, 1.0), (23.0, 41.0, 23.0, 41.0))):
        cpd = ContextPrompts(maps, (0, 64, 0, 64), margin=margin, margin_fraction=0.0)
        cpd.remember(0, prob > 0.5)
        assert cpd.prompts(1, grown, [])[0] == box, margin


def test_a_few_salient_voxels_do_not_shrink_a_box_prompted_structures_consensus_box():
    prob = np.zeros((64, 64))
    prob[31:34, 31:34] = 0.97  # 9 voxels of a structure whose grown box is 25 × 25
    maps = Maps({z: prob for z in range(3)})
    grown = (20.0, 44.0, 20.0, 44.0)
    fitted = (30.0, 34.0, 30.0, 34.0)
    for cfg, box_prompt, box in ((ContextConfig(), True, grown), (ContextConfig(box_fill=0), True, fitted),
                                 (ContextConfig(), False, fitted)):
        cpd = ContextPrompts(maps, (0, 64, 0, 64), cfg, margin=(1.0, 1.0), margin_fraction=0.0)
        cpd.remember(0, prob > 0.5)
        assert cpd.prompts(1, grown, [], box_prompt)[0] == box, (cfg, box_prompt)


def test_a_click_prompted_structures_consensus_box_keeps_a_one_voxel_margin():
    """With clicks alone the consensus box keeps one voxel (or the margin fraction) around the prior's region; with a
    box, propagation's margin (2 mm: four voxels of 0.5 mm). ``click_margin`` 0: propagation's margin for clicks too
    (held-out phantoms' noisy clicks lost 0.017 Dice with it, docs/segmentation.md)."""
    maps = Maps({z: np.zeros((64, 64)) for z in range(24)})
    clicks = VoxelPrompt("tooth", None, False, [(16, 32.0, 32.0, True)], (0, 23))
    cfg = PropagationConfig(view_context=0)
    for prompt, context, margin in ((clicks, None, (1.0, 1.0)), (clicks, ContextConfig(click_margin=0), (4.0, 4.0)),
                                    (PROMPT, None, (4.0, 4.0))):
        pp = PriorPropagator(RootSegmenter(tooth_volume()), prompt, (0.5, 0.5, 2.0), cfg, maps=maps, context=context)
        assert pp.context.margin == margin, (prompt.name, context)


def test_a_prompted_section_among_bright_neighbours_does_not_break_the_bone_chain():
    """A box on the root's first section in bone, whose ring there is brighter than bone (neighbouring crowns, as
    around the real head CT's tooth 22: 0.87 of its crown's grey); below it the root lies in bone and the prior marks
    it down to slice 10 only. The prompted section is what the user drew the box around, so the bone chain starts
    below it: the root goes on past CPD's stop as without a prior. With the prompted section in the chain, CPD's stop
    stands."""
    vol = tooth_volume()
    z = SAM_ROOT[-1]
    around = disc(32, 32, 8) & (vol[z] < TOOTH)
    vol[z][around] = 0.85  # brighter than bone (root_bone_max 0.8 of the crown's 0.95), darker than the tooth
    maps = crown_and_root_maps(vol)
    prompt = VoxelPrompt("root", (z, z, 28, 36, 28, 36), False, [], (0, 23))
    for skip, first in ((True, APEX), (False, SAM_ROOT[0])):
        cfg = PropagationConfig(view_context=0, image_on_root=False, chain_skips_prompt=skip)
        result = PriorPropagator(RootSegmenter(vol, threshold=0.9), prompt, (1.0, 1.0, 2.0), cfg, maps=maps).run()
        assert span(result)[0] == first, (skip, span(result), result.stopped)
        assert result.trace[z]["ring_median"] > 0.8 * result.trace[z]["grey"]


def test_a_dentin_neck_ringed_darker_than_bone_continues_the_bone_chain():
    """A box on the root's first section in bone; on the next slice the root is dentin (darker than the crown's
    enamel) ringed by soft tissue darker than bone, as the real head CT's 17 beside the maxillary sinus (rings 0.48-0.49
    of its crown); below it the root lies in bone and the prior marks it down to slice 10 only. With
    ``chain_dentin`` (the default) that section continues the bone chain (it holds no enamel: not a crown's tip
    crossing into the other row), so the root goes on past CPD's stop as without a prior; without it CPD's stop
    stands."""
    vol = tooth_volume()
    z = SAM_ROOT[-2]
    root = vol[z] >= TOOTH
    vol[z][disc(32, 32, 8) & ~root] = 0.4  # under root_bone (0.5 of the crown's 0.95): soft tissue, not bone
    vol[z][root] = 0.85  # dentin: under root_grey (0.95) of the crown's grey
    maps = crown_and_root_maps(tooth_volume())  # the prior marks the root there
    prompt = VoxelPrompt("root", (SAM_ROOT[-1], SAM_ROOT[-1], 28, 36, 28, 36), False, [], (0, 23))
    for on, first in ((None, APEX), (False, SAM_ROOT[0])):  # None: the default (on)
        cfg = PropagationConfig(view_context=0, image_on_root=False)
        cfg = cfg if on is None else replace(cfg, chain_dentin=on)
        result = PriorPropagator(RootSegmenter(vol, threshold=0.7), prompt, (1.0, 1.0, 2.0), cfg, maps=maps).run()
        assert span(result)[0] == first, (on, span(result), result.stopped)
    assert result.trace[z]["ring_median"] < 0.5 * result.trace[SAM_ROOT[-1]]["grey"]
    # A crown in air (enamel, ringed by air) still breaks the chain: CPD's stop stands there.
    cfg = PropagationConfig(view_context=0, image_on_root=False, chain_dentin=True)
    result = PriorPropagator(RootSegmenter(tooth_volume(), threshold=0.9), PROMPT, (1.0, 1.0, 2.0), cfg,
                             maps=crown_and_root_maps(tooth_volume())).run()
    assert span(result)[0] == SAM_ROOT[0] and result.stopped[-1].startswith(CPD_STOP), (span(result), result.stopped)
