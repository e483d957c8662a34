"""The ``ldfsam`` command lines the Segment module runs, and the environment they run in.

Every command runs with Slicer's own Python (``PythonSlicer``) as ``python -m ldfsam ...``, with the folder that
holds the ``ldfsam`` package on ``PYTHONPATH`` (the extension installs the core beside its modules, a folder the
launcher does not put on the path of child processes).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}


def python_executable() -> str:
    """Slicer's Python interpreter (PythonSlicer) when running in Slicer, else the current interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def core_folder() -> Path:
    """The folder that contains the ``ldfsam`` package in use."""
    import ldfsam

    return Path(ldfsam.__file__).resolve().parent.parent


def core_env(ldfsam_home: Optional[str] = None, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a core process: the core importable, the chosen model cache, library chatter quiet."""
    env = dict(os.environ if base is None else base)
    paths = [str(core_folder())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if ldfsam_home:
        env["LDFSAM_HOME"] = str(ldfsam_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def device_arg(choice: str) -> str:
    """Map the device shown in the GUI (auto, CPU, GPU) to the core's ``--device`` value."""
    if choice in DEVICES:
        return DEVICES[choice]
    if choice in DEVICES.values():
        return choice
    raise ValueError(f"unknown device {choice!r} (choose one of {', '.join(DEVICES)})")


def ldfsam_argv(*args: object, python: Optional[str] = None) -> List[str]:
    """``python -m ldfsam ARGS...`` with every argument as a string."""
    return [python or python_executable(), "-m", "ldfsam", *[str(a) for a in args]]


def segment_argv(input_path: str, output_path: str, model: str, device: str = "auto", threshold: float = 0.5,
                 min_island_mm3: float = 10.0, split_teeth: bool = False, batch: Optional[int] = None,
                 slice_spacing: str = "auto", python: Optional[str] = None) -> List[str]:
    """``ldfsam segment INPUT -o OUTPUT.seg.nrrd`` with the module's options and JSON progress events."""
    if not str(output_path).endswith(".seg.nrrd"):
        raise ValueError(f"{output_path}: the output must be a .seg.nrrd file")
    args: List[object] = ["segment", input_path, "-o", output_path, "--model", model, "--device", device_arg(device),
                          "--threshold", f"{threshold:g}", "--min-island-mm3", f"{min_island_mm3:g}",
                          "--slice-spacing", slice_spacing, "--progress", "json"]
    if split_teeth:
        args.append("--split-teeth")
    if batch:
        args += ["--batch", batch]
    return ldfsam_argv(*args, python=python)


def models_download_argv(name: str, python: Optional[str] = None) -> List[str]:
    return ldfsam_argv("models", "download", name, "--progress", "json", python=python)


def models_import_argv(path: str, name: Optional[str] = None, force: bool = False,
                       python: Optional[str] = None) -> List[str]:
    args: List[object] = ["models", "import", path]
    if name:
        args += ["--name", name]
    if force:
        args.append("--force")
    return ldfsam_argv(*args, python=python)
