"""Atomic file output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and an interrupted write leaves the previous file (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import OutputError, exists_already

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(target: PathLike, overwrite: bool = True, argument: str = "overwrite") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    The temporary name keeps the target's full suffix (``.nii.gz``, ``.seg.nrrd``) so that writers that pick
    a format from the extension still work. On any exception the temporary file is removed. A folder that cannot
    be made or written is an OutputError naming ``target``; ``argument`` is how the caller asks to overwrite.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise exists_already(target, argument)
    suffix = "".join(target.suffixes) or ".tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=f".part{suffix}",
                                        dir=target.parent)
    except OSError as e:
        raise cannot_write(target, e) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and target.exists():
            raise exists_already(target, argument, appeared=True)
        try:
            if tmp.is_file():
                # mkstemp creates 0600; give the file the permissions a plain open() would have.
                os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except OSError as e:
            raise cannot_write(target, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cannot_write(target: PathLike, error: OSError) -> OutputError:
    """The error for an output that the system refuses to write (no such folder, permission, disk full...)."""
    return OutputError(f"cannot be written there ({error.strerror or error})", target)


def make_folder(folder: PathLike) -> Path:
    """``folder`` and its parents, made where missing; an OutputError naming it when the system refuses."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(folder, e) from None
    return folder


def check_writable(target: PathLike) -> None:
    """Raise OutputError naming ``target`` unless a file can be created where it goes: tried in its folder, or
    in the nearest folder above it that exists (nothing is created but a file, removed at once)."""
    target = Path(target).absolute()
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot be written there: {folder} is a file, not a folder", target)
    try:
        fd, name = tempfile.mkstemp(prefix=".ldfsam-write-test.", dir=folder)
    except OSError as e:
        raise cannot_write(target, e) from None
    os.close(fd)
    os.unlink(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically, flushing it to disk before the rename."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(target: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))
