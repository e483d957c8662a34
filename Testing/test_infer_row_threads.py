"""A batch's slices side by side on the CPU's cores (``ldfsam.infer.row_threads``): the slice predictor runs its
prompt generator, encoder and decoder on groups of rows, each on its own thread with its own intra-op threads,
with the same results as one batch on all threads, and the caller's thread count untouched."""

from __future__ import annotations

import threading

import pytest
import torch
from _infer_helpers import save_tiny_model

from ldfsam.infer import load_model
from ldfsam.infer.predictor import SlicePredictor
from ldfsam.infer.row_threads import RowThreads


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=3))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_rows_are_split_into_groups_and_joined_in_order():
    seen = []

    def fn(x, parts, per_row):
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled(),
                     x.shape[0], len(per_row)))
        return x * 2, [p + 1 for p in parts]

    rows = RowThreads(3)
    x = torch.arange(7.0)[:, None]
    doubled, (plus,) = rows(fn, 7, x, (x,), list(range(7)))
    assert torch.equal(doubled, x * 2) and torch.equal(plus, x + 1)
    # Three equal groups of two side by side, each on one thread; the seventh row afterwards on the caller's.
    assert [n for *_, n, _ in seen[:3]] == [2, 2, 2] and all(n == k for *_, n, k in seen)
    assert all(name.startswith("ldfsam-rows") and threads == 1 and inference
               for name, threads, inference, *_ in seen[:3])
    assert seen[3][0] == threading.current_thread().name and seen[3][3] == 1
    seen.clear()
    rows(fn, 1, x[:1], (x[:1],), [0])  # one row: the caller's own thread
    assert seen[0][0] == threading.current_thread().name
    rows.close()


def test_the_predictor_runs_a_batch_side_by_side_with_the_results_of_one_batch(loaded, two_threads):
    predictor = SlicePredictor(loaded.model, 256, 256, torch.device("cpu"))
    calls = {"encoder": [], "decoder": [], "generator": []}

    def hook(name):
        return lambda module, args, out: calls[name].append(
            (threading.current_thread().name, torch.get_num_threads(), args[0].shape[0]))

    loaded.model.image_encoder.register_forward_hook(hook("encoder"))
    loaded.model.mask_decoder.register_forward_hook(hook("decoder"))
    predictor.generator.detector.model[0].register_forward_hook(hook("generator"))  # the YOLO stem
    torch.manual_seed(0)
    slices = torch.rand(4, 40, 48)
    keep = torch.ones(4, dtype=torch.bool)
    side, _ = predictor.predict(slices, keep)
    for stage in ("generator", "encoder", "decoder"):
        names = {name for name, _, _ in calls[stage]}
        assert len(names) == 2 and all(n.startswith("ldfsam-rows") for n in names), (stage, calls[stage])
        assert [(t, b) for _, t, b in calls[stage]] == [(1, 2), (1, 2)], (stage, calls[stage])
    assert torch.get_num_threads() == 2  # the caller's count is left as it was
    predictor._rows = RowThreads(1)  # one batch on the caller's two threads
    for stage in calls:
        calls[stage].clear()
    whole, _ = predictor.predict(slices, keep)
    assert [b for _, _, b in calls["encoder"]] == [4]
    torch.testing.assert_close(side, whole, rtol=1e-4, atol=1e-3)


def test_threads_started_later_keep_the_callers_count(two_threads):
    rows = RowThreads(0)
    rows(lambda x: x @ x.transpose(-1, -2), 4, torch.rand(4, 16, 16))  # the workers run at one thread each
    later = []
    thread = threading.Thread(target=lambda: later.append((torch.ones(64, 64) @ torch.ones(64, 64),
                                                           torch.get_num_threads())[1]))
    thread.start()
    thread.join()
    assert later == [2] and torch.get_num_threads() == 2
    rows.close()

