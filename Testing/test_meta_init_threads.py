"""Building a network for its shapes on one thread must not switch initialisation off for another thread.

``segment_volume`` loads the model file on a thread of its own; a caller may build or load another network at the same
time. ``torch.nn.init`` is one module for all threads: when the switch was global, a network built beside a load got
uninitialised weights (NaN in 53 tests of one run), and two loads that overlapped left it switched off for good.
"""

from __future__ import annotations

import threading

import torch

from ldfsam.model.meta_init import _INIT_FUNCTIONS, meta_without_init


def _torch_init_functions() -> dict:
    return {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}


def _linear_weight(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 64).weight.detach().clone()


def test_a_network_built_beside_a_shapes_only_build_is_initialised_as_torch_does() -> None:
    expected = _linear_weight(7)
    inside, release = threading.Event(), threading.Event()

    def shapes_only() -> None:
        with meta_without_init():
            torch.nn.Linear(64, 64)
            inside.set()
            release.wait(30)

    t = threading.Thread(target=shapes_only)
    t.start()
    try:
        assert inside.wait(30)
        got = _linear_weight(7)
    finally:
        release.set()
        t.join(30)
    assert torch.equal(got, expected)


def test_overlapping_shapes_only_builds_give_torch_its_init_functions_back() -> None:
    before = _torch_init_functions()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    b_devices = []

    def a() -> None:  # enters first, leaves while b is still inside
        with meta_without_init():
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def b() -> None:
        a_in.wait(30)
        with meta_without_init():
            b_in.set()
            a_out.wait(30)
            b_devices.append(torch.nn.Linear(4, 4).weight.device.type)  # b is still inside after a has left

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert b_devices == ["meta"]
    assert _torch_init_functions() == before
    assert torch.equal(_linear_weight(3), _linear_weight(3))
    assert _linear_weight(3).abs().sum() > 0


def test_inside_the_context_init_is_skipped_and_the_device_is_meta() -> None:
    zeros = torch.zeros(3)
    with meta_without_init():
        layer = torch.nn.Linear(8, 8)
        torch.nn.init.normal_(zeros)
    assert zeros.eq(0).all()  # skipped inside: the tensor came back untouched
    assert layer.weight.device.type == "meta"
    assert torch.nn.init.normal_(torch.zeros(1000)).ne(0).any()
