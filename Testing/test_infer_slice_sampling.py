"""Which slices the model runs on and how the label map between them is filled (ldfsam/infer/slice_sampling.py),
and the pipeline with the bundled demo model on a thin-sliced phantom, model on every slice against model on
slices one model pixel apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldfsam.errors import ConfigError
from ldfsam.infer.predictor import EMPTY_LOGIT
from ldfsam.infer.slice_sampling import SliceFiller, resolve_slice_spacing, slice_positions


def test_positions_spread_evenly_at_the_spacing():
    for nz, dz, step in ((420, 0.25, 0.635), (100, 0.3, 0.9), (7, 0.2, 1.0), (50, 0.25, 0.26)):
        pos = slice_positions(nz, dz, step)
        assert pos[0] == 0 and pos[-1] == nz - 1
        gaps = np.diff(pos)
        mean = (nz - 1) / (len(pos) - 1)
        # Evenly spread: every gap is the mean gap rounded down or up to whole slices, and the mean is within
        # the spacing; one model slice fewer would make it wider.
        assert set(gaps.tolist()) <= {math.floor(mean), math.ceil(mean)} and gaps.min() > 0
        assert mean * dz <= step + 1e-9
        assert (nz - 1) * dz / (len(pos) - 2) > step
    assert len(slice_positions(420, 0.25, 0.635)) == 166


def test_every_slice_when_native_or_already_coarse():
    assert np.array_equal(slice_positions(30, 0.25, None), np.arange(30))
    assert np.array_equal(slice_positions(30, 0.5, 0.4), np.arange(30))
    assert np.array_equal(slice_positions(2, 0.1, 5.0), np.arange(2))


def test_resolve_slice_spacing():
    # auto: the finer in-plane model pixel, field of view / model input size
    assert resolve_slice_spacing("auto", (0.25, 0.3, 0.2), (100, 600, 650), 256) == pytest.approx(650 * 0.25 / 256)
    assert resolve_slice_spacing("native", (0.25,) * 3, (10, 20, 20), 256) is None
    assert resolve_slice_spacing(None, (0.25,) * 3, (10, 20, 20), 256) is None
    assert resolve_slice_spacing("0.5", (0.25,) * 3, (10, 20, 20), 256) == 0.5
    assert resolve_slice_spacing(1.5, (0.25,) * 3, (10, 20, 20), 256) == 1.5
    assert resolve_slice_spacing("1px", (0.25,) * 3, (10, 650, 650), 256) == pytest.approx(650 * 0.25 / 256)
    assert resolve_slice_spacing("2px", (0.25,) * 3, (10, 650, 650), 256) == pytest.approx(2 * 650 * 0.25 / 256)
    for bad in ("fast", "-1", "0", "nan", "inf", "px", "-2px", "0px"):
        with pytest.raises(ConfigError) as e:
            resolve_slice_spacing(bad, (0.25,) * 3, (10, 20, 20), 256)
        assert str(e.value).startswith(f"slice_spacing={bad!r}:")
        assert e.value.for_command_line({"slice_spacing": "--slice-spacing"}).startswith(f"--slice-spacing {bad}:")


def _run(filler: SliceFiller, positions, logits, has, batch: int = 3) -> None:
    for k in range(0, len(positions), batch):
        filler.add(positions[k:k + batch], logits[k:k + batch], has[k:k + batch])
    filler.finish()


def test_every_slice_gives_the_model_result_exactly():
    torch.manual_seed(0)
    nz, ny, nx = 9, 23, 31
    logits = torch.randn(nz, 1, 16, 16) * 3
    has = torch.tensor([False, True, True, False, True, True, True, False, True])
    labels = np.zeros((nz, ny, nx), np.uint8)
    probs = np.zeros((nz, ny, nx), np.float32)
    _run(SliceFiller(labels, 0.0, 1, probs), np.arange(nz), logits, has)
    up = torch.nn.functional.interpolate(logits, size=(ny, nx), mode="bilinear", align_corners=False)[:, 0]
    for z in range(nz):
        want = (up[z] > 0).numpy() if has[z] else np.zeros((ny, nx), bool)
        assert np.array_equal(labels[z], want)
        if has[z]:
            assert np.allclose(probs[z], torch.sigmoid(up[z]).numpy())
        else:
            assert not probs[z].any()


def test_interpolation_along_z_is_linear_in_the_logits():
    """A logit field linear in z is reproduced exactly on every input slice from model slices far apart."""
    nz, ny, nx = 41, 8, 8
    field = lambda z: 2.0 * (z - 17.3)  # noqa: E731 - tooth above z = 17.3
    pos = slice_positions(nz, 0.1, 0.45)  # model slices ~4 input slices apart
    assert 8 < len(pos) < nz
    logits = torch.stack([torch.full((1, 4, 4), field(float(z))) for z in pos])
    labels = np.zeros((nz, ny, nx), np.uint8)
    probs = np.zeros((nz, ny, nx), np.float32)
    _run(SliceFiller(labels, 0.0, 1, probs), pos, logits, torch.ones(len(pos), dtype=torch.bool))
    assert np.array_equal(labels[:, 0, 0], (np.arange(nz) > 17.3).astype(np.uint8))
    want = 1 / (1 + np.exp(-field(np.arange(nz))))
    assert np.allclose(probs[:, 3, 5], want, atol=1e-6)


def test_slices_without_teeth_and_several_classes():
    nz, ny, nx = 13, 6, 6
    pos = np.array([0, 4, 8, 12])
    logits = torch.full((4, 2, 4, 4), -5.0)
    logits[1, 1] = 5.0  # class 2 on the model slice z = 4 only
    has = torch.tensor([False, True, False, False])
    labels = np.zeros((nz, ny, nx), np.uint8)
    _run(SliceFiller(labels, 0.0, 2), pos, logits, has, batch=2)
    # From z=4 (logit 5) to the empty model slices (EMPTY_LOGIT) on both sides, the label holds where the
    # interpolated logit stays above 0.
    reach = 4 * 5.0 / (5.0 - EMPTY_LOGIT)
    expect = [2 if abs(z - 4) < reach else 0 for z in range(nz)]
    assert labels[:, 2, 3].tolist() == expect
    assert set(np.unique(labels)) == {0, 2}


def test_slices_are_final_once_added():
    """Everything up to the newest model slice is written by ``add``: the pipeline streams."""
    nz = 12
    labels = np.zeros((nz, 4, 4), np.uint8)
    filler = SliceFiller(labels, 0.0, 1)
    ones = torch.full((2, 1, 4, 4), 3.0)
    filler.add([0, 3], ones, torch.ones(2, dtype=torch.bool))
    assert labels[:3].all() and not labels[3:].any()
    filler.add([6, 11], ones, torch.ones(2, dtype=torch.bool))
    assert labels[:11].all() and not labels[11].any()
    filler.finish()
    assert labels.all()


@pytest.mark.slow  # three segmentations of 180 slices with the bundled (lite) model: minutes on 2 cores
@pytest.mark.timeout(1800)
def test_pipeline_on_thin_slices_matches_every_slice(tmp_path):
    """The demo model on a phantom sliced at 0.1 mm: the model on candidates one model pixel (0.25 mm) apart
    (``1px``) agrees with the model on every slice and with the truth, with 2.5 times fewer model slices; ``auto``
    runs on fewer still (coarse to fine) and agrees with ``1px`` at Dice >= 0.99. With ``interpolate_embeddings``
    (an option: it cost 0.016 Dice here) fewer slices are encoded and the result stays close to ``1px``'s."""
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer import segment_volume
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    image, truth = make_phantom((180, 160, 160), spacing=(0.4, 0.4, 0.1), seed=3, teeth_fraction=0.6)
    path = tmp_path / "thin.nrrd"
    sitk.WriteImage(image, str(path))
    truth = sitk.GetArrayFromImage(truth) > 0
    native = segment_volume(path, slice_spacing="native", device="cpu")
    fixed = segment_volume(path, slice_spacing="1px", device="cpu")
    auto = segment_volume(path, tmp_path / "auto.seg.nrrd", device="cpu")
    between = segment_volume(path, device="cpu", interpolate_embeddings=True)
    assert native.model_slices == 180
    assert fixed.model_slices == math.ceil(179 * 0.1 / (160 * 0.4 / 256)) + 1 == 73
    assert auto.model_slices < 0.8 * fixed.model_slices, auto.model_slices

    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))

    d_native, d_fixed, d_auto = (dice(r.labels > 0, truth) for r in (native, fixed, auto))
    assert d_native > 0.85, d_native
    assert d_fixed > d_native - 0.01, (d_fixed, d_native)
    assert dice(fixed.labels > 0, native.labels > 0) > 0.97
    assert between.encoded_slices < auto.encoded_slices, (between.encoded_slices, auto.encoded_slices)
    assert dice(auto.labels > 0, fixed.labels > 0) >= 0.99
    assert dice(between.labels > 0, fixed.labels > 0) > 0.97
    assert d_auto > d_native - 0.01, (d_auto, d_native)
    assert auto.labels.shape == truth.shape
