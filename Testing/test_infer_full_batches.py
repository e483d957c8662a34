"""The encoder and decoder run on full batches of tooth slices, taken across the batches the prompt generator
screened (``volume_prediction._Queue``): a batch of candidates often holds an odd number of tooth slices, whose
last one ran alone before. Which slices run and what they give stay those of one batch at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _infer_helpers import save_tiny_model

from ldfsam.infer import SegmentOptions, load_model, read_input, segment_image
from ldfsam.infer.adaptive_slices import SliceSchedule
from ldfsam.models.registry import RESOURCES

PHANTOM = RESOURCES / "demo" / "phantom.nii.gz"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=5))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one group: each encoder call sees the whole run of rows
    yield
    torch.set_num_threads(before)


def _keep(image) -> np.ndarray:
    # Random weights cannot find teeth: say which slices hold them, about three in five (odd counts per batch).
    return np.random.default_rng(7).random(image.GetSize()[2]) < 0.6


def _segment(loaded, image, batch: int, spacing: str):
    options = SegmentOptions(batch=batch, precision="fp32", slice_spacing=spacing, probabilities=True)
    return segment_image(image, loaded, options=options, device="cpu", keep_slices=_keep(image))


def test_tooth_slices_are_encoded_in_full_batches_across_screened_ones(loaded, one_thread, monkeypatch):
    image = read_input(PHANTOM)
    events = []
    encode = loaded.model.encode_image
    monkeypatch.setattr(loaded.model, "encode_image", lambda x: events.append(x.shape[0]) or encode(x))
    refine = SliceSchedule._refine
    monkeypatch.setattr(SliceSchedule, "_refine", lambda self: events.append("level") or refine(self))
    result = _segment(loaded, image, 4, "auto")
    levels, run = [], []
    for e in events:
        if e == "level":
            levels.append(run)
            run = []
        else:
            run.append(e)
    assert not run and sum(map(sum, levels)) == result.encoded_slices
    assert max(map(max, filter(None, levels))) == 4  # never more rows than the batch
    # Within a level every call but its last runs a full batch (batch by batch, a batch of candidates with 1 or 3
    # tooth slices ran them as they came).
    assert all(n == 4 for calls in levels for n in calls[:-1]), levels
    assert sum(len(calls) > 1 for calls in levels) >= 2, levels


def test_full_batches_give_what_one_slice_at_a_time_gives(loaded, one_thread):
    image = read_input(PHANTOM)
    paired = _segment(loaded, image, 4, "1px")
    alone = _segment(loaded, image, 1, "1px")  # one candidate per batch: nothing to pair
    assert paired.encoded_slices == alone.encoded_slices > 0
    np.testing.assert_allclose(paired.probabilities, alone.probabilities, atol=1e-4)
    assert np.mean(paired.labels != alone.labels) < 1e-4  # only where a probability sits on the threshold
