"""Networks built for their shapes only: on the meta device, with no random initialisation."""

from __future__ import annotations

import contextlib

import torch

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_")


@contextlib.contextmanager
def meta_without_init():
    """Build on the meta device with ``torch.nn.init`` switched off. Random initialisation of meta tensors is
    pointless, and any random op on them makes torch import its compiler stack (1-2 s of every model load)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)
