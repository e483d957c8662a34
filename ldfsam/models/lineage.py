"""Model versions: a model improved by ``ldfsam train --from`` installed under the user's name, with its lineage.

The installed file is the run's Phase 2 model with one more part in its JSON document, ``lineage``: the name, the
parent model (name, file SHA256 and the parent's own lineage, so the chain back to the bundled model travels with
the file), the cases it saw (training, validation, held-out test; mixed-in phantoms listed apart), its validation
figures and those of the parent on the same held-out cases, and the run folder. A name already installed is never
overwritten: every improvement is a new version beside its parent.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import InputError, OutputError
from .cache import MODEL_SUFFIX, models_dir
from .registry import check_name, load_registry

PathLike = Union[str, Path]


def _sha256(path: Path) -> str:
    from .download import sha256_of

    return sha256_of(path)


def lineage_of(path: PathLike) -> Optional[Dict[str, Any]]:
    """The ``lineage`` record of a model file (None for a model that was not made by improving another)."""
    from ..checkpoint import read_document

    try:
        return read_document(Path(path)).get("lineage")
    except Exception:  # a damaged file is reported where it is loaded; a listing must not fail on it
        return None


def check_new_name(name: str) -> Path:
    """The cache file a new model version of ``name`` would take; OutputError when the name is taken."""
    check_name(name)
    if name in load_registry():
        raise OutputError(f"'{name}' is a model of the registry; give the new model a name of its own")
    target = models_dir() / f"{name}{MODEL_SUFFIX}"
    if target.exists():
        raise OutputError(f"a model named '{name}' is installed already and is never overwritten; choose another "
                          "name for the new version", target)
    return target


def _summary_means(summary: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not summary:
        return None
    out = {"cases": summary.get("cases")}
    for cls, metrics in (summary.get("metrics") or {}).items():
        dice = metrics.get("dice") or {}
        out[cls] = {"dice": dice.get("mean"), "ci_low": dice.get("ci_low"), "ci_high": dice.get("ci_high")}
    return out


def lineage_record(run: PathLike, name: str) -> Dict[str, Any]:
    """The lineage of the model of the ``ldfsam train --from`` run folder ``run``."""
    from ..data.splits import read_splits
    from ..train.from_model import phantom_ids
    from ..train.run import RunFolder

    folder = RunFolder(run)
    cfg = folder.read_config()
    if not cfg.init_model:
        raise InputError("was not started from a model (--from): nothing to record as its parent", folder.root)
    parent_path = Path(cfg.init_model)
    parent = {"name": cfg.init_model_name, "file": str(parent_path), "sha256": None, "lineage": None}
    if parent_path.is_file():
        parent.update(sha256=_sha256(parent_path), lineage=lineage_of(parent_path))
    splits = read_splits(folder.splits)
    mixed = phantom_ids(list(splits.train))
    stages = folder.read_stages()

    def read(path: Path):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    return {
        "name": name, "parent": parent,
        "cases": {"train": [c for c in splits.train if c not in mixed], "val": list(splits.val),
                  "test": list(splits.test), "mixed_phantoms": mixed},
        "validation": {"best_val_dice": (stages.get("phase2") or {}).get("best_val_dice"),
                       "split": cfg.evaluate.split,
                       "new": _summary_means(read(folder.evaluation / "summary.json")),
                       "parent": _summary_means(read(folder.evaluation / "starting_model" / "summary.json"))},
        "run": str(folder.root.resolve()), "data": cfg.data,
        "installed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def install_version(run: PathLike, name: str) -> Path:
    """Install the run's model as ``name`` with its lineage; returns the installed file.

    Installing the same run under the same name again (a resumed run) returns the installed file.
    """
    from ..checkpoint import load_state, save_state
    from ..train.run import RunFolder

    folder = RunFolder(run)
    target = models_dir() / f"{check_name(name)}{MODEL_SUFFIX}"
    if target.exists():
        existing = lineage_of(target) or {}
        if existing.get("run") == str(folder.root.resolve()):
            return target
    check_new_name(name)
    if not folder.model.is_file():
        raise InputError("the run has no model yet", folder.model)
    tensors, document = load_state(folder.model)
    document["lineage"] = lineage_record(folder.root, name)
    models_dir(create=True)
    save_state(target, tensors, document)
    return target


def describe(lineage: Dict[str, Any]) -> str:
    """One line for ``ldfsam models list``: parent, cases and the held-out Dice of both."""
    parent = (lineage.get("parent") or {}).get("name") or "?"
    cases = lineage.get("cases") or {}
    text = f"improved from {parent} on {len(cases.get('train') or [])} case(s)"
    if cases.get("mixed_phantoms"):
        text += f" + {len(cases['mixed_phantoms'])} phantoms"
    val = lineage.get("validation") or {}
    new, old = val.get("new") or {}, val.get("parent") or {}
    for cls, m in new.items():
        if isinstance(m, dict) and m.get("dice") is not None:
            was = (old.get(cls) or {}).get("dice")
            text += f"; {val.get('split', 'test')} Dice {m['dice']:.3f}" + (f" (was {was:.3f})" if was is not None
                                                                          else "")
            break
    return text


def chain(lineage: Optional[Dict[str, Any]]) -> list:
    """Names from the model back to its first ancestor, e.g. ['clinic-v2', 'clinic-v1', 'ldfsam-demo']."""
    names = []
    while lineage:
        names.append(lineage.get("name"))
        parent = lineage.get("parent") or {}
        if not parent.get("lineage"):
            names.append(parent.get("name"))
        lineage = parent.get("lineage")
    return names
