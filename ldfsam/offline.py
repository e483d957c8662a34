"""Ultralytics without network: import it only through here.

ultralytics reaches for the internet in several places: a DNS probe at import (``is_online``), anonymous usage
analytics (``events``), a font download when plots are drawn (``check_font``), a weights download for the AMP check at
the start of GPU training (``check_amp``), release look-ups and downloads for any weights or asset name that is not
a local file (``attempt_download_asset``), pip auto-updates of missing requirements (``check_requirements``) and
Platform/hub/experiment-tracker callbacks in trainers. LDFSAM runs on machines without network and must never stall
or leak there, so this module switches every one of these off before and right after ultralytics is imported.

Call :func:`import_ultralytics` (or just import this module) before anything imports ultralytics.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from .home import ldfsam_home

_patched: Optional[ModuleType] = None


def ultralytics_dir() -> Path:
    """Where ultralytics keeps its settings file (and would keep fonts): ours, not the user's global one."""
    return ldfsam_home() / "ultralytics"


def _set_environment() -> None:
    # Read by ultralytics at import time, so they must be in place before the first import.
    # YOLO_OFFLINE: is_online() answers False without the DNS probe, which also turns off analytics and pip checks.
    os.environ["YOLO_OFFLINE"] = "1"
    # Never pip-install "missing" requirements at run time.
    os.environ["YOLO_AUTOINSTALL"] = "false"
    # Settings file under LDFSAM_HOME: our own sync=False etc. never touch (or depend on) the user's global file.
    os.environ["YOLO_CONFIG_DIR"] = str(ultralytics_dir())
    # ultralytics logs to stdout; keep it quiet unless the user asks, so JSON progress output stays clean.
    os.environ.setdefault("YOLO_VERBOSE", "false")


_set_environment()


class OfflineError(OSError):
    """Raised when ultralytics tries to download something (a weights file, a font, a data set)."""


def _no_download(*args: Any, **kwargs: Any) -> None:
    what = kwargs.get("url") or (args[0] if args else "a file")
    raise OfflineError(f"ldfsam runs offline: ultralytics tried to download {what}; put the file on disk instead")


def _apply_patches(ultralytics: ModuleType) -> None:
    import importlib

    utils = importlib.import_module("ultralytics.utils")
    checks = importlib.import_module("ultralytics.utils.checks")
    downloads = importlib.import_module("ultralytics.utils.downloads")
    callbacks = importlib.import_module("ultralytics.utils.callbacks")
    callbacks_base = importlib.import_module("ultralytics.utils.callbacks.base")
    data_utils = importlib.import_module("ultralytics.data.utils")
    plotting = importlib.import_module("ultralytics.utils.plotting")
    trainer = importlib.import_module("ultralytics.engine.trainer")

    # Analytics and every experiment tracker off; the file lives under LDFSAM_HOME, so this is ours to change.
    off = {k: False for k in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb",
                              "vscode_msg", "openvino_msg")}
    changed = {k: v for k, v in off.items() if utils.SETTINGS.get(k) != v}
    if utils.SETTINGS.get("api_key"):
        changed["api_key"] = ""
    if changed:
        try:
            utils.SETTINGS.update(changed)
        except OSError:  # read-only home: the in-memory values still apply for this process
            dict.update(utils.SETTINGS, changed)

    # Had ultralytics been imported before us, its import-time DNS probe already ran; make its answer "offline".
    for module in (utils, checks, importlib.import_module("ultralytics.utils.events")):
        module.ONLINE = False

    # Every download in ultralytics goes through safe_download (files) or get_github_assets (release lists).
    downloads.safe_download = _no_download
    downloads.get_github_assets = lambda *a, **k: ("", [])
    # is_url(check=True) sends a HEAD request; answer from the string alone.
    _is_url = downloads.is_url
    downloads.is_url = lambda url, check=False: _is_url(url, check=False)

    original_attempt = downloads.attempt_download_asset

    def attempt_download_asset(file: Any, *args: Any, **kwargs: Any) -> str:
        # Local files (and files in the weights folder) resolve as before; anything else is an error, not a fetch.
        path = Path(str(file).strip())
        weights_dir = Path(utils.SETTINGS["weights_dir"])
        if path.exists() or (weights_dir / path).exists():
            return original_attempt(file, *args, **kwargs)
        raise OfflineError(f"{file}: no such file (ldfsam runs offline and never downloads weights)")

    downloads.attempt_download_asset = attempt_download_asset

    # Fonts: use a local one if there is one; the Annotator falls back to PIL's built-in font on None.
    def check_font(font: str = "Arial.ttf") -> Optional[Path]:
        name = Path(font).name
        local = utils.USER_CONFIG_DIR / name
        if local.exists():
            return local
        try:
            from matplotlib import font_manager

            for f in font_manager.fontManager.ttflist:
                if font in f.fname and os.path.exists(f.fname):
                    return Path(f.fname)
        except Exception:  # matplotlib missing or its cache unreadable: no font is fine
            pass
        return None

    for module in (checks, data_utils, plotting):
        module.check_font = check_font

    # The AMP check loads yolo26n.pt (a download) and runs it; on CPU it is a no-op anyway. We trust AMP on CUDA
    # rather than fetch a model (Phase 1 trains with AMP on CUDA and without it on the CPU: distill/run.py).
    def check_amp(model: Any) -> bool:
        device = next(model.parameters()).device
        return device.type == "cuda"

    checks.check_amp = check_amp
    trainer.check_amp = check_amp

    # Platform (hub) upload callbacks and the tracker integrations: LDFSAM reports progress itself.
    def add_integration_callbacks(instance: Any) -> None:
        return None

    callbacks.add_integration_callbacks = add_integration_callbacks
    callbacks_base.add_integration_callbacks = add_integration_callbacks


def import_ultralytics() -> ModuleType:
    """Import ultralytics with all network use switched off; returns the ``ultralytics`` module."""
    global _patched
    if _patched is None:
        _set_environment()
        ultralytics_dir().mkdir(parents=True, exist_ok=True)
        # ultralytics sets OMP_NUM_THREADS=1 when it is unset; torch, if imported after that, would run every op
        # on one thread (measured: the demo at 99 % of one core on 2). torch is imported first, so its thread
        # pool keeps its own default, and the variable is taken back so that child processes do not inherit it.
        user_threads = os.environ.get("OMP_NUM_THREADS")
        from .heap import long_lived_objects

        with long_lived_objects():  # no garbage collection over torch's import (ldfsam.heap)
            import torch  # noqa: F401 - before ultralytics, see above
            import ultralytics

        if user_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        _apply_patches(ultralytics)
        _patched = ultralytics
    return _patched
