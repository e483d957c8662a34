"""``PropagationConfig``: the numbers of prompted propagation (``propagate.Propagator``) and of its stop rules
(``stop_rules.StopRules``, whose docstring explains each rule). Every rule is a named field, on or off here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PropagationConfig:
    margin_mm: float = 2.0  # growth of the previous mask's box, at least ...
    margin_fraction: float = 0.15  # ... this share of its side
    min_area_mm2: float = 1.0
    min_area_fraction: float = 0.05
    inside_fraction: float = 0.5
    agree_iou: float = 0.97  # where blending between anchors stops (see above); above 1: blend all the way
    mask_prompt: bool = False  # previous slice's logits as SAM's mask prompt (measured: see docs/segmentation.md)
    # The encoder's view of a structure with a box: a square of this many times the box's longer side (at least
    # min_view voxels) around it, so that a tooth fills a good part of LiteMedSAM's 256×256 input; 0: whole slices.
    view_context: float = 3.0
    min_view: int = 32
    # Stop rules (see stop_rules.py); ``stop_rules=False`` gives the propagation without them.
    stop_rules: bool = True
    ring_mm: float = 1.5  # width of the ring around a mask that its contrast is measured against
    min_contrast: float = 0.25  # ends where the contrast falls below this share of the primary slice's ...
    min_primary_contrast: float = 0.05  # ... (a rule only for structures that differ from their surroundings)
    min_on_previous: float = 0.5  # ends where less than this share of the mask lies on the previous one (a jump)
    # Following a root where SAM's mask leaves it (see stop_rules.py); ``follow=False``: stop there.
    follow: bool = True
    # Only where SAM's mask is not darker than its surroundings: a root is followed through the bone, where SAM's
    # mask is bone-grey; a mask darker than its ring lies in a gap (between the rows, beyond a cusp).
    follow_gap: float = 0.0
    # ... except on a root's side: once the last ``root_sections`` sections in a row held no enamel (mean grey below
    # ``root_grey`` of the prompted crown's), the structure is in the jaw, where a darker SAM mask is the bone or the
    # ligament between roots, not a gap between the rows; near the enamel (a crown's occlusal end) the guard stays.
    root_grey: float = 0.95  # between the real CT's necks (0.84-0.92 of the window) and crowns (0.97-0.99)
    root_sections: int = 2  # a crown's last, partial-volume slice can be dentin-dark for one slice; 0: rule off
    # A section also counts as the root's side where it lies in bone: the median grey of the ring around it is at
    # least ``root_bone`` of the prompted crown's. Where the window saturates dentin like enamel (the real CT: the
    # enamel test above rarely fires) this is what tells the jaw: rings of its root sections 0.58-0.78 of the crown,
    # the phantom's crown tip crossing into the touching row 0.44 (soft tissue around). 0 or above 1: off.
    root_bone: float = 0.5
    # ... and at most ``root_bone_max`` of it: a brighter ring is mostly teeth (a crowded arch's neighbours around a
    # crown: 0.8-1.07 of the crown on phantoms at 0.5 mm), not bone (the real CT's root rings: up to 0.78).
    root_bone_max: float = 0.8
    # True: the gap guard is lifted on a slice whose SAM mask itself lies in bone (``StopRules.in_bone``), not only
    # after ``root_sections`` such sections: a gap between the rows is ringed by air or soft tissue, not bone.
    gap_in_bone: bool = True
    follow_slope: float = 0.5  # a root's side moves by at most this many mm per mm between slices (about 27°)
    follow_level: float = 0.5  # dentin: grey at least this far from the surroundings' (ring median) to the tooth's
    # A followed section continues the previous mask: it covers at least follow_keep of it, or it is an island
    # (at least follow_whole of the bright region it belongs to lies within follow_mm of the previous mask) ...
    follow_keep: float = 0.2
    follow_whole: float = 0.5
    follow_growth: float = 0.1  # ... and at most this much larger than the narrowest section followed so far,
    # or this many voxels larger, whichever is more: on 1 mm voxels a root's section of 6-20 voxels changes by a
    # voxel or two with partial volume alone, which 10 % (under one voxel) would read as a wider structure.
    follow_growth_voxels: int = 2
    # True: where SAM's mask vanishes or is too small on the root's side (``root_sections``), the root is followed
    # there too (its apex narrows below what SAM marks), where the followed section lies in bone (``root_bone``).
    # Off: measured, it gains nothing on the real head CT and on held-out phantoms at 0.5 mm it followed crowns 1-2
    # slices into the touching row (a crowded arch puts neighbouring teeth in a crown's ring: "in bone").
    follow_vanished: bool = False
    # True: on a root's side (``root_sections``), where the structure would end on a slice (its mask lost its
    # contrast, vanished, is too small, or CPD stopped and no rule past its stop keeps a section), the root's last
    # section is kept there if one is left: the bright part (``follow_level``) within ``follow_slope`` of the previous
    # section, of at least a voxel but smaller than that section (a root narrows to its apex), passing the contrast
    # rule, in bone (``root_bone``, ``root_bone_max``); the structure ends after it (one slice at most: a chain of
    # such sections would follow noise). Root following needs a section of ``min_area_fraction`` of the prompted one
    # that overlaps the previous section; at an apex the last section is smaller and can lie a voxel beside it.
    # Measured (docs/segmentation.md, *The root's last section*): on the real head CT 15, 13, 12 and 23 reach their
    # root's end by the image (11 and 24 a slice past it); on phantoms with exact truth every clean box reaches its
    # apex (19 of 24 before), but results that crossed the occlusal contact into the other row get that tooth's apex
    # the same way, one slice further into it (its last section looks the same), so the noisy-prompt table's slices
    # beyond the tooth and HD95 get worse. Off until a structure's own root side can be told from the other row's.
    follow_tip: bool = False
    # True: with a prior, on a root's side, where CPD's prior and the carried prompts stop agreeing (a prior that
    # does not mark roots), the root is followed on the image if the followed section lies in bone (``root_bone``).
    # Off: on the real head CT it gains 1-2 slices on three teeth, but on held-out phantoms at 0.5 mm it followed
    # two crowns 2-4 slices into the touching row (a crowded arch's crown rings read as bone).
    follow_past_prior: bool = False
    # True: with a prior, where CPD's prior and the carried prompts stop agreeing, the slice is prompted as without a
    # prior (the previous mask's grown box, the stop rules, root following), and the section is kept where it and
    # every section from the prompted slice to it lie in bone (``StopRules.in_bone``): a prior that is silent inside
    # the jaw is no evidence against a root (the demo prior does not mark the real head CT's roots), while its veto
    # stands in air, soft tissue, among crowded crowns, and in the other row's bone reached across the gap (a noisy
    # phantom box taken by the other row's crown ran three slices into that tooth's root without the chain test).
    # Takes the place of ``follow_past_prior`` where both are on.
    past_prior_in_bone: bool = True
    # True: with a prior, on a root's side (``StopRules.on_root``) reached without leaving bone (every section from
    # the prompted slice in bone) the slices are prompted as without one. Without the bone chain a noisy phantom box
    # taken by the other row's crown ran two slices further into that tooth's root.
    image_on_root: bool = True
    # True: the bone chain of ``past_prior_in_bone`` and ``image_on_root`` starts below the prompted slice: the
    # prompted section is where the user drew the box or clicked, and its ring is what the user drew around (a crown
    # among its neighbours' crowns: the real head CT's tooth 22, 0.87 of its crown's grey); the chain tests where
    # propagation went from there. False: the prompted section must lie in bone too (tooth 22 then ends a slice
    # before its root's end with the demo prior).
    chain_skips_prompt: bool = True
    # True: for ``past_prior_in_bone`` (not ``image_on_root``), a section that holds no enamel (mean grey below
    # ``root_grey`` of the prompted crown's) continues the bone chain though its ring is darker than ``root_bone``
    # (not brighter than ``root_bone_max``): a neck beside the maxillary sinus or soft tissue (the real head CT's 17:
    # rings 0.48-0.49 of its crown) is dentin, where a crown's tip crossing into the touching row is enamel. In
    # ``image_on_root`` too, it cost noisy clicks on held-out phantoms 0.03 Dice on two teeth (their root slices
    # prompted without CPD). On by default since rows (c), (d0), (d) of the noisy-prompt benchmark were measured with
    # it: no result lost, a few click results reach their root's end (docs/segmentation.md, *Row (d)*).
    chain_dentin: bool = True
    # True: with a prior, where CPD's prior and the carried prompts stop agreeing, the slice is prompted as without a
    # prior (the stop rules, root following) and its section kept where the prior sees at least ``seen_share`` of it
    # (salient at the head's threshold): the carried points are the previous sections' centrelines, and towards a
    # crown's occlusal end the section shrinks to a cusp beside them (the real head CT's 15 and 25, with the demo
    # prior: 4-5 voxels, all salient, no carried point on them), where the prior agrees that the section is
    # tooth. The map is bimodal (per pixel "tooth" or not), so a section the prior sees is salient nearly throughout;
    # two thirds leaves out the phantoms' crossings into the touching row (40-58 % salient there: there the carried
    # points' stop stands). Measured: no result of rows (c), (d0), (d) on the six noisy-prompt phantoms changed.
    past_prior_seen: bool = True
    seen_share: float = 2 / 3
    # True: ... and, where the prior sees at most ``blind_share`` of the section, kept where it and every section from
    # the prompted one hold the crown's enamel (``root_grey``, ``StopRules.on_crown``), off the root's side
    # (``on_root``: where a window saturates dentin like enamel, as on the real head CT, roots pass the enamel test;
    # there the bone chain decides, ``past_prior_in_bone``): a prior blind to a crown the image shows (the demo prior
    # on the real head CT's 16, 14 and 22: 0-17 % of their next crown sections) is no evidence against it; with it
    # every upper tooth there ends on the crown side where it ends without a prior. The occlusal end is then the
    # image's rules' (contrast, the gap guard): where the rows touch with equal enamel and no gap, neither they nor a
    # blind prior can tell the crown from the other row's.
    past_prior_unseen: bool = True
    blind_share: float = 1 / 3
    # True: that enamel test is against the brightest section of the chain so far, not the prompted one. A crown's
    # enamel is the brightest the chain shows; a box drawn a quarter of the way down a crown can sit on a dimmer
    # section, against which the other row's crown in occlusion passes as enamel: on a held-out phantom (tooth 11 of
    # seed 9104, PSC-trained prior, a noisy box that CPD had carried two slices into the lower row: prompted section
    # 0.89, the crown 0.98, the lower crown 0.90) the rule ran five slices further down the lower incisor.
    unseen_brightest: bool = True
    # True: only for a structure prompted with a box, drawn around the crown whose enamel the test is against. A
    # click structure's prompted slice is its first clicked one, which can be a root's dim apex (held-out phantoms:
    # noisy clicks on the lower molar 36 start on its apex), against which bone and roots pass as enamel.
    unseen_box_only: bool = True
