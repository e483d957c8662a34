"""Networks built for their shapes only: on the meta device, with no random initialisation."""

from __future__ import annotations

import contextlib
import threading

import torch

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_")

# ``torch.nn.init`` is one module for every thread, while a model may load on a thread of its own beside another that
# builds a network for real: the skipping functions are installed once for all users (the last one out restores
# torch's), and they skip only in a thread that is inside ``meta_without_init``.
_lock = threading.Lock()
_users = 0
_originals: dict = {}
_inside = threading.local()


def _skipping(original):
    def init(tensor, *args, **kwargs):
        if getattr(_inside, "depth", 0):
            return tensor
        return original(tensor, *args, **kwargs)

    return init


@contextlib.contextmanager
def meta_without_init():
    """Build on the meta device with ``torch.nn.init`` switched off in this thread. Random initialisation of meta
    tensors is pointless, and any random op on them makes torch import its compiler stack (1-2 s of every model
    load). Other threads keep initialising as torch does (``torch.device`` as a context is per thread too)."""
    global _users
    with _lock:
        if _users == 0:
            for name in _INIT_FUNCTIONS:
                _originals[name] = getattr(torch.nn.init, name)
                setattr(torch.nn.init, name, _skipping(_originals[name]))
        _users += 1
    _inside.depth = getattr(_inside, "depth", 0) + 1
    try:
        with torch.device("meta"):
            yield
    finally:
        _inside.depth -= 1
        with _lock:
            _users -= 1
            if _users == 0:
                for name, fn in _originals.items():
                    setattr(torch.nn.init, name, fn)
                _originals.clear()
