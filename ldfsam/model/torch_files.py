"""Third-party PyTorch files (``.pt``, ``.pth``: SAM and ultralytics checkpoints), read with ``weights_only``.

A file that is not a PyTorch file at all, or is damaged (empty, cut short, corrupt), is a CheckpointError that
says so; a file that holds pickled classes ``weights_only`` refuses is :class:`PickledClasses` (the caller
decides whether another loader may read it); any other failure is a bug and surfaces as it is.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import CheckpointError

PathLike = Union[str, Path]


class PickledClasses(Exception):
    """The file holds pickled Python classes outside torch's weights-only allow-list."""


def damage(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a PyTorch file (empty, cut short, another format), or None. PyTorch files are zip
    archives (since torch 1.6) or, older, a bare pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "is an empty file"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path):  # reads the central directory at the end: a cut file has none
                return None
        except zipfile.BadZipFile as e:
            return f"is damaged: its zip archive is cut short or corrupt ({e})"
    if head[0] == 0x80:  # pickle protocol 2+
        return None
    return "is not a PyTorch file (neither a zip archive nor a pickle)"


def load_weights_only(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU. Raises CheckpointError (no such file, damaged, not a
    PyTorch file) or :class:`PickledClasses`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such file", path)
    problem = damage(path)
    if problem is not None:
        raise CheckpointError(problem, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in first:
            raise PickledClasses(first) from None
        raise CheckpointError(f"is damaged: its pickle cannot be read ({first[:200]})", path) from None
    except EOFError:
        raise CheckpointError("is damaged: it ends in the middle of its data", path) from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):
            raise
        raise CheckpointError(f"is damaged: {str(e).splitlines()[0][:200]}", path) from None
