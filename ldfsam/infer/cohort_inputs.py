"""The volumes of a cohort run and their output names.

An input is a volume file, a DICOM series folder, a folder of volumes (its volume files, and its sub-folders that
hold a DICOM series), or ``@list.txt``: a text file naming one of those per line (``#`` comments, blank lines;
relative paths are relative to the list's folder). Everything is checked before any work: a missing path, a
folder without volumes, a path reached twice are errors naming the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..data.volume import is_dicom_folder, strip_volume_suffix, volume_suffix
from ..errors import InputError, OutputError

PathLike = Union[str, Path]
FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz"}
# What a folder of volumes contributes: volume files, but not segmentations (.seg.nrrd) or our own temporaries.
_SKIPPED_SUFFIXES = (".seg.nrrd",)


def _folder_volumes(folder: Path) -> List[Path]:
    """The volumes inside ``folder``: the folder itself when it holds a DICOM series and no volume files, else
    its volume files and its sub-folders holding a DICOM series, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and volume_suffix(p) and not p.name.lower().endswith(_SKIPPED_SUFFIXES))
    if not files and is_dicom_folder(folder):
        return [folder]
    series = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_dicom_folder(p))
    found = sorted(files + series, key=lambda p: p.name)
    if not found:
        raise InputError("holds no volumes, so nothing to segment (no .nii, .nii.gz, .nrrd, .mha or .mhd "
                         "file and no DICOM series)", folder)
    return found


def _list_entries(list_file: Path) -> List[Path]:
    if not list_file.is_file():
        raise InputError("no such list file", list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot be read as a list of paths ({e})", list_file) from None
    entries = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text).expanduser()
        path = path if path.is_absolute() else list_file.parent / path
        if not path.exists():
            raise InputError(f"line {n}: {path}: no such file or folder", list_file)
        entries.append(path)
    if not entries:
        raise InputError("names no volumes (an empty list)", list_file)
    return entries


def expand_inputs(inputs: Sequence[PathLike], exclude: Iterable[PathLike] = ()) -> List[Path]:
    """The volumes that ``inputs`` name, in the order given (folders sorted by name). ``exclude``: paths that are
    not inputs even where a folder holds them (a previous run's outputs written into an input folder)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input given")
    skip = {Path(p).resolve() for p in exclude}
    found: List[Tuple[Path, str]] = []  # (volume, where it came from)
    for given in inputs:
        text = str(given)
        if text.startswith("@"):
            list_file = Path(text[1:]).expanduser()
            sources = [(p, f"{list_file}") for p in _list_entries(list_file)]
        else:
            sources = [(Path(text).expanduser(), text)]
        for path, origin in sources:
            if not path.exists():
                raise InputError("no such file or folder", path)
            volumes = _folder_volumes(path) if path.is_dir() else [path]
            found += [(v, origin) for v in volumes if v.resolve() not in skip]
    seen: Dict[Path, str] = {}
    for volume, origin in found:
        key = volume.resolve()
        if key in seen:
            how = f"from {seen[key]} and from {origin}" if seen[key] != origin else f"twice by {origin}"
            raise InputError(f"is given more than once ({how}); name each volume once", volume)
        seen[key] = origin
    if not found:
        raise InputError(f"{', '.join(map(str, inputs))}: hold no volumes that are not outputs of this run")
    return [v for v, _ in found]


def check_output_folder(folder: PathLike) -> Path:
    """The output folder, as a Path; OutputError naming it when it is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("is a file; give a folder for the outputs of several volumes", folder)
    return folder


def check_apart(inputs: Sequence[PathLike], folder: Path) -> None:
    """OutputError when the output folder is an input folder or lies inside one. Required of torchrun ranks: each
    lists the inputs when it starts, so a rank that starts late would find other ranks' new outputs among them,
    and the ranks' lists (and shares) would differ."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out = Path(folder).resolve()
    for given in inputs:
        text = str(given)
        paths = _list_entries(Path(text[1:]).expanduser()) if text.startswith("@") else [Path(text).expanduser()]
        for path in paths:
            if path.is_dir() and (out == path.resolve() or path.resolve() in out.parents):
                raise OutputError(f"lies inside the input folder {path}: under torchrun, give an output folder "
                                  "apart from the inputs (a rank starting late would take other ranks' outputs "
                                  "for inputs)", folder)


def output_names(volumes: Sequence[Path], folder: Path, fmt: str,
                 known: Optional[Mapping[Path, Path]] = None) -> Tuple[Dict[Path, Path], List[str]]:
    """Output path of each volume in ``folder``: its name without the volume suffix + the format's suffix.
    ``known`` (resolved input -> output, from the manifest) keeps the names of an earlier run. Names that two
    volumes share, or that would be an input itself, get ``_2``, ``_3``...: returns the names and one note per
    renamed volume."""
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; use {' or '.join(FORMATS)}")
    suffix = FORMATS[fmt]
    known = dict(known or {})
    inputs = {v.resolve() for v in volumes}
    taken = {str(p.resolve()).lower() for p in known.values()} | {str(p).lower() for p in inputs}
    names: Dict[Path, Path] = {}
    notes: List[str] = []
    for volume in volumes:
        key = volume.resolve()
        if key in known:
            names[volume] = Path(known[key])
            continue
        stem = strip_volume_suffix(volume) or volume.name
        candidate, k = folder / f"{stem}{suffix}", 1
        while str(candidate.resolve()).lower() in taken:
            k += 1
            candidate = folder / f"{stem}_{k}{suffix}"
        if k > 1:
            notes.append(f"{volume}: written as {candidate.name} ({stem}{suffix} is taken by another volume)")
        taken.add(str(candidate.resolve()).lower())
        names[volume] = candidate
    return names, notes
