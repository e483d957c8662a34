"""The user's model cache: ``$LDFSAM_HOME/models`` (default ``~/.ldfsam/models``), never the install folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Optional

from ..atomic import atomic_path
from ..errors import Arg, CheckpointError, InputError, LDFSAMError, OutputError
from ..file_format import read_checkpoint_meta
from ..home import ldfsam_home
from .registry import check_name

MODEL_SUFFIX = ".safetensors"


def models_dir(create: bool = False) -> Path:
    """The cache folder for model files (created on request)."""
    d = ldfsam_home() / "models"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def installed_models() -> Dict[str, Path]:
    """Model files in the cache by name (file name without ``.safetensors``); partial downloads are not listed."""
    d = models_dir()
    if not d.is_dir():
        return {}
    out = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part"):
            name = p.name[: -len(MODEL_SUFFIX)] if p.name.endswith(MODEL_SUFFIX) else p.name
            out[name] = p
    return out


def check_model_file(path: Path) -> dict:
    """Read a model file's header and return its metadata; CheckpointError when it is not an LDFSAM model."""
    return read_checkpoint_meta(path)


def import_model(source: Path, name: Optional[str] = None, force: bool = False) -> Path:
    """Copy a checked LDFSAM model file into the cache under ``name`` (default: the file's stem)."""
    source = Path(source)
    if not source.is_file():
        raise InputError("no such model file", source)
    if not source.name.endswith(MODEL_SUFFIX):
        raise CheckpointError(f"not an LDFSAM model file (expected a {MODEL_SUFFIX} file)", source)
    name = check_name(name or source.name[: -len(MODEL_SUFFIX)])
    check_model_file(source)
    target = models_dir(create=True) / f"{name}{MODEL_SUFFIX}"
    if target.exists() and not force:
        raise OutputError(f"a model named '{name}' is installed already; pass {{}} to replace it", target,
                          arguments=[Arg("force", True)])
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def remove_model(name: str) -> Path:
    """Delete a cached model (and any partial download of it)."""
    installed = installed_models()
    if name not in installed:
        from .registry import load_registry

        entry = load_registry().get(name)
        by_file = {p.name: n for n, p in installed.items()}
        if entry is not None and entry.file in by_file:
            name = by_file[entry.file]
    if name not in installed:
        raise LDFSAMError(f"no installed model named '{name}' (installed: {', '.join(installed) or 'none'})",
                          models_dir())
    path = installed[name]
    path.unlink()
    partial = path.with_name(path.name + ".part")
    if partial.exists():
        partial.unlink()
    return path
