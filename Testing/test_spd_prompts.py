"""SPD's prompt logic on known saliency maps: local validation of clicks and boxes, CPD's dual validation and its
stop, and the prompts file's line of clicks. (The same with a trained head on a phantom: test_spd_prompted.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from ldfsam.infer.context_prompts import ContextPrompts, centreline
from ldfsam.infer.prompt_validation import ValidationConfig, validate_box, validate_points

VIEW = (10, 70, 20, 80)  # y0, y1, x0, x1 of the slice region the maps cover


def disc(cy=30, cx=30, r=8, shape=(60, 60)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float32)


def test_clicks_the_prior_contradicts_are_moved_or_dropped():
    prob = 0.02 + 0.96 * disc()  # tooth centred at slice voxel (40, 50)
    points = [(0, 40.0, 50.0, True),   # on the tooth
              (1, 40.0, 59.5, True),   # 1.5 voxels beside it
              (2, 62.0, 25.0, True),   # on "bone", far from any tooth
              (3, 41.0, 49.0, False),  # exclude click inside the tooth
              (4, 65.0, 75.0, False)]  # exclude click off the tooth
    keep, decisions = validate_points(7, points, prob, VIEW, 0.5, (0.5, 0.5), ValidationConfig(max_move_mm=2.0))
    actions = {d.point: d.action for d in decisions}
    assert actions == {0: "kept", 1: "moved", 2: "dropped", 3: "dropped", 4: "kept"}
    moved = next(d for d in decisions if d.action == "moved")
    assert moved.moved_to[0] == 7 and prob[int(moved.moved_to[1]) - 10, int(moved.moved_to[2]) - 20] > 0.5
    assert "off the tooth" in decisions[2].reason and "inside the tooth" in decisions[3].reason
    assert [p[2] for p in keep] == [True, True, False] and (62.0, 25.0, True) not in keep
    # Without a nearby tooth the moved click would be dropped too.
    _, strict = validate_points(7, points[1:2], prob, VIEW, 0.5, (0.5, 0.5), ValidationConfig(max_move_mm=0.5))
    assert strict[0].action == "dropped"


def test_an_exclude_click_on_another_tooth_is_kept():
    # Two teeth: the include click on the left one, exclude clicks on both. Cutting a leak off into the neighbour
    # is a clinician's correction, not noise; only the one contradicting the include click is dropped.
    prob = 0.02 + 0.96 * np.maximum(disc(cx=20, r=7), disc(cx=42, r=7))
    points = [(0, 40.0, 40.0, True), (1, 41.0, 41.0, False), (2, 40.0, 62.0, False)]
    keep, decisions = validate_points(7, points, prob, VIEW, 0.5, (0.5, 0.5), ValidationConfig())
    assert [d.action for d in decisions] == ["kept", "dropped", "kept"]
    assert (40.0, 62.0, False) in keep and (41.0, 41.0, False) not in keep
    assert "another tooth" in decisions[2].reason
    # With no include click on the slice there is no tooth to contradict: both exclude clicks stay.
    keep, decisions = validate_points(7, points[1:], prob, VIEW, 0.5, (0.5, 0.5), ValidationConfig())
    assert [d.action for d in decisions] == ["kept", "kept"]


def test_a_box_is_fitted_to_the_tooth_it_mostly_covers():
    prob = disc() * 0.97 + disc(cy=30, cx=52, r=5) * 0.97  # tooth at slice (40, 50), r 8; a neighbour at (40, 72)
    loose = (28.0, 52.0, 36.0, 64.0)  # four voxels too wide on every side
    fitted, decision = validate_box(3, loose, prob, VIEW, 0.5, ValidationConfig())
    assert decision.action == "tightened" and fitted == (32.0, 48.0, 42.0, 58.0)
    short = (34.0, 48.0, 42.0, 58.0)  # misses the tooth's top rows
    fitted, decision = validate_box(3, short, prob, VIEW, 0.5, ValidationConfig())
    assert decision.action == "extended" and fitted[0] == 32.0
    # A box on background keeps its shape; so does one that covers only a sliver of a tooth.
    assert validate_box(3, (60.0, 66.0, 22.0, 30.0), prob, VIEW, 0.5, ValidationConfig())[1].action == "kept"
    assert validate_box(3, (46.0, 50.0, 40.0, 60.0), prob, VIEW, 0.5, ValidationConfig())[1].action == "kept"


def test_a_box_is_not_extended_into_a_touching_tooth_through_the_maps_uncertain_band():
    # Tooth B (drawn around) at slice (40, 65), r 6; a neighbour A at (40, 52), r 3, joined to it by a bridge in the
    # map's uncertain band (0.7): one component at the head's threshold, 80 % of it inside the drawn box. As on the
    # real head CT's teeth 22 and 23, the bridge is where the two touch, not B cut by the box.
    prob = np.maximum(disc(cy=30, cx=45, r=6), disc(cy=30, cx=32, r=3)) * 0.97
    prob[29:32, 35:39] = 0.7
    box = (34.0, 46.0, 59.0, 71.0)  # B's crown and a voxel of margin; its left side cuts the bridge
    fitted, decision = validate_box(3, box, prob, VIEW, 0.5, ValidationConfig())
    assert decision.action == "kept" and fitted == box
    # Extended to the whole component (the rule off), the box would reach over A.
    old, was = validate_box(3, box, prob, VIEW, 0.5, ValidationConfig(extend_level=0.5))
    assert was.action == "extended" and old[2] < 56
    # A box that cuts B itself is still extended onto B's confident pixels, not over the bridge.
    short = (34.0, 46.0, 63.0, 71.0)
    fitted, decision = validate_box(3, short, prob, VIEW, 0.5, ValidationConfig())
    assert decision.action == "extended" and fitted[2] == 59.0
    # A tail of uncertain pixels one voxel past the side (the real CT's 23: 0.68 and 0.82) extends nothing either.
    tail = disc(cy=30, cx=45, r=6) * 0.97
    tail[33:35, 37:40] = 0.75
    fitted, decision = validate_box(3, box, tail, VIEW, 0.5, ValidationConfig())
    assert fitted[2] == 59.0, decision
    assert validate_box(3, box, tail, VIEW, 0.5, ValidationConfig(extend_level=0.5))[0][2] < 59.0


class Maps:
    """Known saliency maps by slice (the interface of saliency_prior.SaliencyMaps)."""

    threshold = 0.5

    def __init__(self, by_slice):
        self.by_slice = by_slice
        self.calls = 0

    def map(self, z, view=None):
        self.calls += 1
        return self.by_slice[z]

    def salient(self, z, view=None):
        return self.map(z, view) >= self.threshold


def test_cpd_carries_prompts_where_the_prior_agrees_and_stops_where_it_ends():
    tooth = disc()
    maps = Maps({z: (tooth if z <= 5 else np.zeros_like(tooth)) for z in range(9)})
    cpd = ContextPrompts(maps, VIEW)
    for z in (3, 4):
        cpd.remember(z, tooth > 0)
    points, carried = cpd.carried(5)
    assert carried == 6 and 1 <= len(points) <= 6
    grown = (25.0, 55.0, 35.0, 65.0)
    box, consensus = cpd.prompts(5, grown, [])
    assert all(inc for _, _, inc in consensus) and len(consensus) <= cpd.cfg.max_points
    assert grown[0] <= box[0] <= box[1] <= grown[1] and grown[2] <= box[2] <= box[3] <= grown[3]
    # Slice 6 has no tooth by the prior: nothing carried survives, propagation stops there ...
    cpd.remember(5, tooth > 0)
    assert cpd.prompts(6, grown, []) is None
    # ... unless the user clicked on it.
    assert cpd.prompts(6, grown, [(40.0, 50.0, True)]) is not None
    # Dual validation: a point whose own slice the prior rejects is not carried, even onto a salient slice.
    maps.by_slice[2] = np.zeros_like(tooth)
    lonely = ContextPrompts(maps, VIEW)
    lonely.remember(2, tooth > 0)
    assert lonely.carried(3) == ([], 3)


def test_centreline_points_lie_inside_the_mask_along_its_long_axis():
    mask = np.zeros((40, 60), bool)
    mask[15:25, 5:55] = True
    points = centreline(mask, 3)
    assert len(points) == 3 and all(mask[int(y), int(x)] for y, x in points)
    xs = sorted(x for _, x in points)
    assert xs[0] < 20 and xs[-1] > 40  # ends of the long (x) axis


def test_a_line_of_clicks_is_an_include_click_on_every_slice_it_crosses():
    import SimpleITK as sitk

    from ldfsam.data.preprocess import Grid
    from ldfsam.errors import InputError
    from ldfsam.infer.prompts import parse_structure, to_voxels

    image = sitk.Image(20, 20, 10, sitk.sitkInt16)
    image.SetSpacing((0.5, 0.5, 2.0))
    grid = Grid.of(image)
    line = parse_structure({"name": "t", "line": [[1.0, 1.0, 0.0], [3.0, 2.0, 8.0], [3.0, 2.0, 12.0]]}, 0)
    vp = to_voxels(line, grid)
    assert [k for k, _, _, _ in vp.points] == [0, 1, 2, 3, 4, 5, 6]
    assert vp.points[0] == (0, 2.0, 2.0, True) and vp.points[4] == (4, 4.0, 6.0, True)
    assert all(inc for *_, inc in vp.points)
    with pytest.raises(InputError, match=r"structures\[0\] \('t'\)\.line\[1\]: expected a list of 3"):
        parse_structure({"name": "t", "line": [[1, 1, 0], [1, 1]]}, 0)
    with pytest.raises(InputError, match=r"\.line\[0\]: at voxel .* lies outside the volume"):
        to_voxels(parse_structure({"name": "t", "line": [[100.0, 1.0, 0.0]]}, 0), grid)


def test_the_segment_panel_states_the_clicks_the_prior_did_not_use():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LDFSAMSegment"))
    from LDFSAMSegmentLib.prompts import not_used_text

    reply = {"voxels": 10, "not_used": [
        {"point": 1, "label": "include", "action": "dropped", "reason": "include click off the tooth by the prior"},
        {"point": None, "label": "include", "action": "tightened", "reason": "box tightened to the tooth"}]}
    text = not_used_text(reply)
    assert text.startswith("Not used as given: include click 2 dropped: include click off the tooth")
    assert "box tightened" in text
    assert not_used_text({"voxels": 10}) == "" and not_used_text({"not_used": []}) == ""
