"""The Phase 1 detection data: a YOLO data.yaml, checked early and rewritten with absolute paths for ultralytics.

ultralytics resolves a relative ``path:`` against its own global datasets folder, not against the yaml file; the
run folder therefore gets a copy whose paths are all absolute, found relative to the yaml's folder (or, failing
that, the working directory, as a data.yaml written with relative paths by a tool run there would need).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

from ..atomic import write_text_atomic
from ..errors import InputError

PathLike = Union[str, Path]
SPLITS = ("train", "val", "test")
# The image suffixes ultralytics reads.
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


@dataclass
class DetectionData:
    source: Path  # the data.yaml as given
    document: Dict[str, Any]  # its content with absolute paths
    names: Dict[int, str]

    def write(self, target: Path) -> Path:
        """Write the resolved data.yaml to ``target`` (atomically); returns ``target``."""
        write_text_atomic(target, yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True))
        return target


def _locate(entry: str, bases, what: str, source: Path) -> Path:
    p = Path(entry)
    candidates = [p] if p.is_absolute() else [b / p for b in bases]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise InputError(f"its {what} {entry!r} does not exist (looked for {', '.join(map(str, candidates))})", source)


def _has_images(p: Path) -> bool:
    if p.is_dir():
        return any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*"))
    if p.suffix == ".txt":  # a list of image paths
        return any(line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines())
    return p.suffix.lower() in IMAGE_SUFFIXES


def read_detection_data(path: PathLike, budget: float = 1.0, imgsz: Optional[int] = None) -> DetectionData:
    """Read and check a YOLO data.yaml; returns it with absolute paths and its class names.

    ``path`` may also be a folder holding a data.yaml, or a folder written by ``ldfsam prepare`` (its YOLO export
    for the annotation ``budget`` at the detector's input size ``imgsz``, made now if ``prepare`` did not make it).
    """
    path = Path(path)
    if (path / "prepared.json").is_file():
        from ..data.prepared import PreparedData

        path = PreparedData(path.resolve()).yolo_data_yaml(budget, size=imgsz)
    elif path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise InputError("no such YOLO data.yaml (run `ldfsam prepare` to export one)", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"not a readable YAML file ({str(e).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise InputError("is not a YOLO data.yaml (expected a mapping)", path)
    missing = [k for k in ("train", "val", "names") if k not in data]
    if missing:
        raise InputError(f"YOLO data.yaml lacks {', '.join(missing)}", path)
    names = data["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names or sorted(int(k) for k in names) != list(range(len(names))):
        raise InputError("'names' must be a non-empty list, or a mapping 0..N-1, of class names", path)
    names = {int(k): str(v) for k, v in names.items()}
    bases = [path.parent.resolve(), Path.cwd()]
    root = _locate(str(data["path"]), bases, "path", path) if data.get("path") else path.parent.resolve()
    document: Dict[str, Any] = {"path": str(root)}
    for split in SPLITS:
        if data.get(split) is None:
            continue
        entries = data[split] if isinstance(data[split], list) else [data[split]]
        located = [_locate(str(e), [root, *bases], f"{split} entry", path) for e in entries]
        if split != "test" and not any(_has_images(p) for p in located):
            raise InputError(f"its {split} split has no images ({', '.join(map(str, located))})", path)
        located = [str(p) for p in located]
        document[split] = located if isinstance(data[split], list) else located[0]
    document["nc"] = len(names)
    document["names"] = names
    return DetectionData(path.resolve(), document, names)
