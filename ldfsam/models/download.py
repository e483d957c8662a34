"""Verified, resumable downloads.

Bytes go to ``<target>.part`` beside the target; an interrupted download resumes from there with an HTTP
Range request (on the next attempt or the next run). Only a file whose size and SHA256 match is renamed onto
the target, so the target name never holds a partial or corrupt file; a mismatch deletes the partial file.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, LDFSAMError
from ..progress import Progress

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, partial: Path, size: Optional[int], progress: Progress, timeout: float) -> None:
    """One attempt: append the rest of ``url`` to ``partial`` (restarting when the server ignores Range)."""
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        have = 0
    if size is not None and have == size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": "ldfsam"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file is no prefix the server knows: start over
            partial.unlink()
            raise ConnectionError("range not satisfiable; restarting") from None
        raise LDFSAMError(f"download failed: HTTP {e.code} {e.reason}", url) from None
    with response:
        status = getattr(response, "status", 200)
        mode = "ab" if (have and status == 206) else "wb"
        if mode == "wb":
            have = 0
        total = size
        if total is None:
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
        with open(partial, mode) as f:
            last = 0.0
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                have += len(block)
                now = time.monotonic()
                if now - last > 0.2:
                    progress.update("download", have, total)
                    last = now
            f.flush()
            os.fsync(f.fileno())
        progress.update("download", have, total)
    if size is not None and have < size:
        raise ConnectionError(f"connection closed after {have} of {size} bytes")


def download_file(url: str, target: Path, sha256: str, size: Optional[int] = None,
                  progress: Optional[Progress] = None, retries: int = 3, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``target``, resuming a previous ``.part`` file, and verify SHA256 before the rename.

    Cut connections are retried ``retries`` times, each resuming where the last one stopped. Raises
    LDFSAMError for HTTP errors (e.g. 404) and CheckpointError (after deleting the partial file) when the
    bytes do not match the expected size or checksum.
    """
    target = Path(target)
    progress = progress or Progress("none")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    progress.start("download", total=size, message=f"downloading {url}", file=str(target))
    attempt = 0
    while True:
        try:
            _fetch(url, partial, size, progress, timeout)
            break
        except (ConnectionError, TimeoutError, urllib.error.URLError, OSError) as e:
            if isinstance(e, LDFSAMError):
                raise
            attempt += 1
            if attempt > retries:
                raise LDFSAMError(f"download failed after {attempt} attempts ({e}); run the command again to "
                                  f"resume from {partial.stat().st_size if partial.exists() else 0} bytes",
                                  url) from None
            progress.log("download", f"connection lost ({e}); resuming (attempt {attempt + 1})", level="warning")
            time.sleep(min(2.0, 0.2 * attempt))
    got_size = partial.stat().st_size
    digest = sha256_of(partial)
    if (size is not None and got_size != size) or digest != sha256.lower():
        partial.unlink()
        raise CheckpointError(f"downloaded file does not match the registry (size {got_size}, expected {size}; "
                              f"sha256 {digest}, expected {sha256.lower()}); deleted it", url)
    os.replace(partial, target)
    progress.done("download", message=f"saved {target}", bytes=got_size)
    return target
