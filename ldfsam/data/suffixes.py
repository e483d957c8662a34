"""The file suffixes of the volume formats ldfsam reads, and telling them from a path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]

# Longest suffix first so that ".seg.nrrd" wins over ".nrrd" and ".nii.gz" over ".gz".
VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def volume_suffix(path: PathLike) -> Optional[str]:
    """The supported suffix ``path`` ends with (lower case), or None."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(path: PathLike) -> str:
    """The file name without its volume suffix (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name
