"""Turn ``--model`` (a name or a path) into a model file on disk."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, InputError
from .cache import MODEL_SUFFIX, installed_models
from .registry import load_registry

# The model used when none is named: the demo model shipped in the package (synthetic phantoms; no hand-labelled scan).
DEFAULT_MODEL = "ldfsam-demo"


def resolve_model(model: str | Path | None = None) -> Path:
    """A model file for ``model``: an existing path, an installed name, or the bundled demo model.

    A registry name that is not downloaded yet gives a message with the command that downloads it.
    """
    model = str(model) if model is not None else DEFAULT_MODEL
    path = Path(model).expanduser()
    looks_like_path = model.endswith(MODEL_SUFFIX) or "/" in model or "\\" in model
    if path.is_file():
        return path
    if looks_like_path:
        raise InputError("no such model file", path)
    registry = load_registry()
    entry = registry.get(model)
    if entry is not None and entry.kind != "ldfsam":
        use = {"prompt-generator": "start Phase 1 from it with `ldfsam distill`",
               "encoder-neck": "a lite model segments with it given `--encoder half`"}.get(
            entry.kind, "fine-tune from it with `ldfsam finetune`")
        raise CheckpointError(f"'{model}' is a {entry.kind}, not a segmentation model; {use}", model)
    installed = installed_models()
    if model in installed:
        return installed[model]
    if entry is not None and entry.bundled_path is not None:
        if not entry.bundled_path.is_file():
            raise CheckpointError(f"the bundled model '{model}' is missing from this installation",
                                  entry.bundled_path)
        return entry.bundled_path
    if entry is not None:
        raise InputError(f"model '{model}' is not downloaded yet; run `ldfsam models download {model}`", model)
    known = sorted(set(installed) | {n for n, e in registry.items() if e.kind == "ldfsam"})
    raise InputError(f"unknown model (known: {', '.join(known) or 'none'}; or give a path to a {MODEL_SUFFIX} "
                     "file)", model)
