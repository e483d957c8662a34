"""Slices between two encoded neighbours decoded on their interpolated image embeddings
(``SegmentOptions.interpolate_embeddings``): the predictor, the coarse-to-fine schedule's choice of such slices,
and how far apart the neighbours may be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _infer_helpers import save_tiny_model
from test_infer_adaptive_slices import _model

from ldfsam.infer import load_model
from ldfsam.infer.adaptive_slices import COARSE_STEP, SliceSchedule
from ldfsam.infer.predictor import SlicePredictor
from ldfsam.infer.slice_sampling import SliceFiller
from ldfsam.infer.volume_prediction import MAX_BETWEEN_PX, _between


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=5))


def test_a_slice_between_is_decoded_on_the_interpolated_embedding_without_an_encoder_pass(loaded):
    predictor = SlicePredictor(loaded.model, 256, 256, torch.device("cpu"))
    encoded = []
    loaded.model.image_encoder.register_forward_hook(lambda m, a, o: encoded.append(a[0].shape[0]))
    torch.manual_seed(0)
    slices = torch.rand(3, 40, 48)
    keep = torch.ones(3, dtype=torch.bool)
    predictor.keep_embeddings = True
    every, _ = predictor.predict(slices, keep)
    emb = predictor.embeddings
    assert sorted(emb) == [0, 1, 2] and sum(encoded) == 3  # rows through the encoder (in groups on 2+ threads)
    mixed, _ = predictor.predict(slices, keep, between=[None, (emb[0], emb[2], 0.25), None])
    assert sum(encoded) == 5 and predictor.encoded == 5 and predictor.interpolated == 1
    assert sorted(predictor.embeddings) == [0, 2]  # only encoded embeddings are handed back
    torch.testing.assert_close(mixed[[0, 2]], every[[0, 2]])
    with torch.inference_mode():
        sam, yolo = predictor.inputs(slices[1:2])
        features = predictor.generator.features(yolo)
        expected = loaded.model.decode(torch.lerp(emb[0], emb[2], 0.25)[None], features)
    torch.testing.assert_close(mixed[1:2], expected, rtol=1e-4, atol=1e-4)
    assert (mixed[1] - every[1]).abs().max() > 1e-3  # not the slice's own encoding


def test_only_finest_level_middles_between_two_tooth_slices_are_offered():
    count = 101
    schedule = SliceSchedule(np.arange(count), SliceFiller(np.zeros((count, 40, 48), np.uint8), 0.0, 1), 0.0,
                             coarse=COARSE_STEP)
    offered, runs, kept, most = {}, [], set(), 0
    while (chosen := schedule.next_batch(8)) is not None:
        for i in chosen:
            gap = schedule.encoded_neighbours(i)
            if gap is not None:
                offered[i] = gap
                assert set(gap) <= kept  # an embedding dropped as no longer needed is never asked for
        runs.extend(chosen)
        logits, has = _model(chosen)
        schedule.record(chosen, logits, has)
        kept |= {i for i, h in zip(chosen, has.tolist()) if h and i not in offered}
        kept = {i for i in kept if schedule.may_be_neighbour(i)}  # as the pipeline drops them
        most = max(most, len(kept))
    assert offered, "the disc model's changing stretches reach the finest level"
    encoded = [i for i in runs if schedule.teeth[i] and i not in offered]
    assert not kept and most < len(encoded)  # dropped along the way, not only at the end
    for i, (a, b) in offered.items():
        assert (a, b) == (i - 1, i + 1) and schedule.teeth[a] and schedule.teeth[b]
    # Middles at the finest level next to a tooth-free slice (where teeth begin or end) are encoded.
    finest = [i for i in runs if i % 2 == 1]
    assert any(i not in offered for i in finest)
    assert all(not (schedule.teeth[i - 1] and schedule.teeth[i + 1]) for i in finest if i not in offered)


class _Schedule:
    def __init__(self, gap):
        self.gap = gap

    def encoded_neighbours(self, i):
        return self.gap


def test_neighbours_further_apart_than_the_reach_are_encoded():
    a, b = torch.zeros(4, 2, 2), torch.ones(4, 2, 2)
    positions = np.array([0, 2, 5, 9, 13])
    reach = 5.0
    got = _between(_Schedule((0, 2)), {0: a, 2: b}, positions, 1, reach)
    assert got is not None and got[0] is a and got[1] is b and got[2] == pytest.approx(0.4)
    assert _between(_Schedule((2, 4)), {2: a, 4: b}, positions, 3, reach) is None  # 8 slices apart
    assert _between(_Schedule((0, 2)), {2: b}, positions, 1, reach) is None  # no embedding kept for 0
    assert _between(_Schedule(None), {0: a, 2: b}, positions, 1, reach) is None
    assert 2.0 <= MAX_BETWEEN_PX < 3.0  # two candidates about one model pixel apart, not thick slices


@pytest.mark.slow  # two segmentations with the bundled demo model: about a minute on a loaded 2-core machine
def test_on_a_thin_sliced_phantom_the_demo_model_encodes_fewer_slices_within_the_accuracy_rule(tmp_path):
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer import segment_volume

    # 0.1 mm slices of a 64 mm field of view (0.25 mm model pixels): candidates 2-3 slices apart, as on the
    # thin-sliced CBCT the interpolation is meant for.
    image, truth = make_phantom((64, 160, 160), spacing=(0.4, 0.4, 0.1), seed=11, teeth_fraction=0.8)
    path = tmp_path / "thin.nrrd"
    sitk.WriteImage(image, str(path))
    truth = sitk.GetArrayFromImage(truth) > 0
    loaded = load_model(None)
    runs = {}
    for on in (False, True):
        r = segment_volume(path, None, model=loaded, device="cpu", precision="fp32", interpolate_embeddings=on)
        pred = r.labels > 0
        runs[on] = (r, 2 * np.count_nonzero(pred & truth) / (pred.sum() + truth.sum()))
    (off, dice_off), (on, dice_on) = runs[False], runs[True]
    assert off.encoded_slices == off.slices_with_teeth > 0
    assert on.encoded_slices < on.slices_with_teeth
    assert dice_off > 0.8 and dice_on >= dice_off - 0.01, (dice_off, dice_on)
