"""Atomic file output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and an interrupted write leaves the previous file (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import LDFSAMError

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(target: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    The temporary name keeps the target's full suffix (``.nii.gz``, ``.seg.nrrd``) so that writers that pick
    a format from the extension still work. On any exception the temporary file is removed.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise LDFSAMError("exists already; pass --force to overwrite it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=f".part{suffix}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and target.exists():
            raise LDFSAMError("appeared while writing; pass --force to overwrite it", target)
        if tmp.is_file():
            # mkstemp creates 0600; give the file the permissions a plain open() would have.
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
