"""Prompts for prompted segmentation: the JSON file's schema, its validation, and the prompts in voxel space.

A prompts file (``ldfsam segment --prompts``) is a JSON object::

    {"structures": [
        {"name": "Tooth 21",                                   # required, unique
         "box": {"min": [x, y, z], "max": [x, y, z]},          # LPS mm; optional if an include point is given
         "points": [{"position": [x, y, z], "label": "include"},   # LPS mm; "include" or "exclude"
                    {"position": [x, y, z], "label": "exclude"}],
         "line": [[x, y, z], [x, y, z], ...],                   # optional: a line of clicks (LPS mm)
         "slices": [z_first, z_last],                           # optional: LPS mm along the slice axis
         "label": 3}                                            # optional label value in a label-map output
    ]}

A box whose two corners lie on the same slice is a 2D box on that slice; otherwise it is a 3D box, and the
structure never leaves it. A point belongs to the slice nearest to it. ``slices`` bounds the propagation along the
slice axis. A ``line`` (SPD's centreline prompt: a markups curve or point list dragged through a tooth's slices)
is an include click on every slice it crosses, where it crosses it (straight between its points); a line that
stays on one slice is a click at each of its points. Coordinates are physical (LPS, as SimpleITK and DICOM;
Slicer's RAS has x and y negated).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.preprocess import Grid
from ..errors import InputError

PathLike = Union[str, Path]
LABELS = {"include": 1, "exclude": 0}
_FIELDS = {"name", "box", "points", "line", "slices", "label"}
# Half a voxel of tolerance: a prompt on the volume's outer face is still inside it.
_EDGE = 0.5


@dataclass
class Point:
    position: Tuple[float, float, float]  # LPS mm
    include: bool


@dataclass
class StructurePrompt:
    """One structure's prompts in physical (LPS mm) coordinates."""

    name: str
    box_min: Optional[Tuple[float, float, float]] = None
    box_max: Optional[Tuple[float, float, float]] = None
    points: List[Point] = field(default_factory=list)
    slices: Optional[Tuple[float, float]] = None
    line: List[Tuple[float, float, float]] = field(default_factory=list)  # LPS mm, a line of clicks
    label: Optional[int] = None


@dataclass
class VoxelPrompt:
    """One structure's prompts in the volume's index space (array order z, y, x).

    box: (z0, z1, y0, y1, x0, x1) inclusive voxel indices, or None; ``box_3d`` False for a box on one slice.
    points: (z, y, x, include) with integer slice z and continuous y, x. z_range: slices it may occupy."""

    name: str
    box: Optional[Tuple[int, int, int, int, int, int]]
    box_3d: bool
    points: List[Tuple[int, float, float, bool]]
    z_range: Tuple[int, int]

    def points_on(self, z: int) -> List[Tuple[float, float, bool]]:
        return [(y, x, inc) for k, y, x, inc in self.points if k == z]


def _where(index: int, name: Optional[str]) -> str:
    return f"structures[{index}]" + (f" ({name!r})" if name else "")


def _vector(value: Any, n: int, where: str) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise InputError(f"{where}: expected a list of {n} finite numbers (mm), got {json.dumps(value)}")
    return tuple(float(v) for v in value)


def parse_structure(entry: Any, index: int) -> StructurePrompt:
    """One entry of ``structures``; InputError naming the entry and the field."""
    if not isinstance(entry, dict):
        raise InputError(f"structures[{index}]: expected an object with name, box and/or points, got "
                         f"{type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"structures[{index}].name: a non-empty string is required")
    at = _where(index, name)
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise InputError(f"{at}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    s = StructurePrompt(name=name.strip())
    box = entry.get("box")
    if box is not None:
        if not isinstance(box, dict) or set(box) != {"min", "max"}:
            raise InputError(f"{at}.box: expected {{\"min\": [x, y, z], \"max\": [x, y, z]}} in LPS mm")
        s.box_min = _vector(box["min"], 3, f"{at}.box.min")
        s.box_max = _vector(box["max"], 3, f"{at}.box.max")
        for axis, lo, hi in zip("xyz", s.box_min, s.box_max):
            if lo > hi:
                raise InputError(f"{at}.box: min {axis} = {lo:g} mm is greater than max {axis} = {hi:g} mm")
    points = entry.get("points", [])
    if not isinstance(points, list):
        raise InputError(f"{at}.points: expected a list of {{\"position\": [x, y, z], \"label\": \"include\"}}")
    for j, p in enumerate(points):
        pat = f"{at}.points[{j}]"
        if not isinstance(p, dict) or set(p) - {"position", "label"} or "position" not in p:
            raise InputError(f"{pat}: expected {{\"position\": [x, y, z], \"label\": \"include\" or \"exclude\"}}")
        label = p.get("label", "include")
        if label not in LABELS:
            raise InputError(f"{pat}.label: {json.dumps(label)} is not \"include\" or \"exclude\"")
        s.points.append(Point(_vector(p["position"], 3, f"{pat}.position"), label == "include"))
    line = entry.get("line", [])
    if not isinstance(line, list):
        raise InputError(f"{at}.line: expected a list of positions [x, y, z] (LPS mm)")
    s.line = [_vector(v, 3, f"{at}.line[{j}]") for j, v in enumerate(line)]
    if entry.get("slices") is not None:
        lo, hi = _vector(entry["slices"], 2, f"{at}.slices")
        if lo > hi:
            raise InputError(f"{at}.slices: the first ({lo:g} mm) is after the last ({hi:g} mm)")
        s.slices = (lo, hi)
    if entry.get("label") is not None:
        label = entry["label"]
        if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= 65535:
            raise InputError(f"{at}.label: expected a whole number from 1 to 65535, got {json.dumps(label)}")
        s.label = label
    if s.box_min is None and not any(p.include for p in s.points) and not s.line:
        raise InputError(f"{at}: needs a box, a line or at least one include point")
    return s


def parse_prompts(document: Any, source: Optional[PathLike] = None) -> List[StructurePrompt]:
    """Structures from a parsed prompts document (a dict with ``structures``, or the list itself)."""
    structures = document.get("structures") if isinstance(document, dict) else document
    if isinstance(document, dict) and set(document) - {"structures"}:
        raise InputError(f"unknown top-level field(s) {', '.join(sorted(set(document) - {'structures'}))}; "
                         "expected {\"structures\": [...]}", source)
    if not isinstance(structures, list) or not structures:
        raise InputError("expected {\"structures\": [...]} with at least one structure", source)
    out: List[StructurePrompt] = []
    try:
        for i, entry in enumerate(structures):
            out.append(parse_structure(entry, i))
    except InputError as e:
        raise InputError(str(e), source) from None
    seen = {}
    for i, s in enumerate(out):
        if s.name in seen:
            raise InputError(f"structures[{i}].name: {s.name!r} is already the name of structures[{seen[s.name]}]",
                             source)
        seen[s.name] = i
    labels = [s.label for s in out if s.label is not None]
    if len(labels) != len(set(labels)):
        raise InputError("structures[].label: two structures have the same label value", source)
    return out


def read_prompts(path: PathLike) -> List[StructurePrompt]:
    """Read and validate a prompts JSON file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such prompts file", path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError("is not a UTF-8 text file (a prompts JSON file is expected)", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", path) from None
    return parse_prompts(document, path)


# -- physical -> voxel -------------------------------------------------------------------------------------------


def _lps_to_index(grid: Grid) -> Tuple[np.ndarray, np.ndarray]:
    """(A, b) with continuous index (i, j, k) = A @ (lps - b)."""
    direction = np.asarray(grid.direction, float).reshape(3, 3)
    a = np.linalg.inv(direction @ np.diag(grid.spacing))
    return a, np.asarray(grid.origin, float)


def to_index(grid: Grid, lps: Sequence[float]) -> np.ndarray:
    """Continuous (i, j, k) of an LPS point."""
    a, b = _lps_to_index(grid)
    return a @ (np.asarray(lps, float) - b)


def to_voxels(s: StructurePrompt, grid: Grid, index: int = 0) -> VoxelPrompt:
    """The prompts of ``s`` in ``grid``'s index space; InputError when a prompt lies outside the volume or a box
    has no extent in the slice plane."""
    at = _where(index, s.name)
    size = np.asarray(grid.size, float)  # (i, j, k) = (x, y, z)
    nz = int(grid.size[2])
    box = None
    box_3d = False
    z_lo, z_hi = 0, nz - 1
    if s.box_min is not None:
        corners = np.array([[a, b, c] for a in (s.box_min[0], s.box_max[0]) for b in (s.box_min[1], s.box_max[1])
                            for c in (s.box_min[2], s.box_max[2])])
        ijk = np.array([to_index(grid, c) for c in corners])
        lo, hi = ijk.min(0), ijk.max(0)
        if np.any(hi < -_EDGE) or np.any(lo > size - 1 + _EDGE):
            raise InputError(f"{at}.box: lies outside the volume (voxels {_fmt(lo)} to {_fmt(hi)}; the volume "
                             f"has {grid.size[0]}x{grid.size[1]}x{grid.size[2]})")
        first = np.clip(np.floor(lo + _EDGE), 0, size - 1).astype(int)
        last = np.clip(np.ceil(hi - _EDGE), 0, size - 1).astype(int)
        extent = (hi - lo)[:2]
        if np.any(extent < 1.0):
            axis = "xy"[int(np.argmin(extent))]
            raise InputError(f"{at}.box: has zero size in the slice plane (less than one voxel along index {axis})")
        box_3d = (hi[2] - lo[2]) >= 1.0
        if not box_3d:
            first[2] = last[2] = int(np.clip(round(float((lo[2] + hi[2]) / 2)), 0, nz - 1))
        box = (int(first[2]), int(last[2]), int(first[1]), int(last[1]), int(first[0]), int(last[0]))
        if box_3d:
            z_lo, z_hi = box[0], box[1]
    points = []
    for j, p in enumerate(s.points):
        ijk = to_index(grid, p.position)
        if np.any(ijk < -_EDGE) or np.any(ijk > size - 1 + _EDGE):
            what = "a slice that does not exist" if not -_EDGE <= ijk[2] <= size[2] - 1 + _EDGE else \
                "outside the slice"
            raise InputError(f"{at}.points[{j}]: at voxel {_fmt(ijk)} lies on {what} (the volume has "
                             f"{grid.size[0]}x{grid.size[1]}x{grid.size[2]} voxels)")
        k = int(np.clip(round(float(ijk[2])), 0, nz - 1))
        points.append((k, float(ijk[1]), float(ijk[0]), p.include))
    points += _line_points(s.line, grid, at)
    if s.slices is not None:
        # The slice index of each S coordinate, taken on the line through the volume's centre.
        centre = np.asarray(grid.origin) + np.asarray(grid.direction).reshape(3, 3) @ (
            (size - 1) / 2 * np.asarray(grid.spacing))
        ks = sorted(float(to_index(grid, [centre[0], centre[1], z])[2]) for z in s.slices)
        if ks[1] < -_EDGE or ks[0] > nz - 1 + _EDGE:
            raise InputError(f"{at}.slices: {s.slices[0]:g} to {s.slices[1]:g} mm lies outside the volume's slices")
        z_lo = max(z_lo, int(np.clip(math.floor(ks[0] + _EDGE), 0, nz - 1)))
        z_hi = min(z_hi, int(np.clip(math.ceil(ks[1] - _EDGE), 0, nz - 1)))
    prompted = ([box[0], box[1]] if box is not None else []) + [k for k, _, _, inc in points if inc]
    if prompted and not any(z_lo <= k <= z_hi for k in range(min(prompted), max(prompted) + 1)):
        raise InputError(f"{at}: its box and include points lie outside the slices it may occupy ({z_lo}-{z_hi})")
    return VoxelPrompt(s.name, box, box_3d, points, (z_lo, z_hi))


def _line_points(line: Sequence[Tuple[float, float, float]], grid: Grid, at: str
                 ) -> List[Tuple[int, float, float, bool]]:
    """A line of clicks as include points (z, y, x, True): where it crosses each slice, or its points where a
    segment stays on one slice."""
    nz = int(grid.size[2])
    size = np.asarray(grid.size, float)
    ijk = [to_index(grid, v) for v in line]
    for j, v in enumerate(ijk):
        if np.any(v < -_EDGE) or np.any(v > size - 1 + _EDGE):
            raise InputError(f"{at}.line[{j}]: at voxel {_fmt(v)} lies outside the volume (it has "
                             f"{grid.size[0]}x{grid.size[1]}x{grid.size[2]} voxels)")
    out: dict = {}
    if len(ijk) == 1:
        ijk = ijk * 2
    for a, b in zip(ijk[:-1], ijk[1:]):
        ka, kb = float(a[2]), float(b[2])
        if abs(kb - ka) < 0.5:
            for v in (a, b):
                k = int(np.clip(round(float(v[2])), 0, nz - 1))
                out.setdefault((k, round(float(v[1]), 3), round(float(v[0]), 3)), None)
            continue
        for k in range(int(math.ceil(min(ka, kb) - _EDGE)), int(math.floor(max(ka, kb) + _EDGE)) + 1):
            t = min(1.0, max(0.0, (k - ka) / (kb - ka)))
            v = a + t * (b - a)
            out.setdefault((int(np.clip(k, 0, nz - 1)), round(float(v[1]), 3), round(float(v[0]), 3)), None)
    # One click per slice and position (a line's vertices are shared by two segments).
    return [(k, y, x, True) for k, y, x in out]


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ")"
