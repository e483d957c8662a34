"""The core's user folder: ``$LDFSAM_HOME`` or ``~/.ldfsam`` (model cache, ultralytics settings, the CPU's
measured precision)."""

from __future__ import annotations

import os
from pathlib import Path


def ldfsam_home() -> Path:
    """``$LDFSAM_HOME`` when set and not empty, else ``~/.ldfsam``; read on every call (tests and the Slicer module
    change it at run time)."""
    return Path(os.environ.get("LDFSAM_HOME") or Path.home() / ".ldfsam").expanduser()
