"""Markups -> the prompts file of ``ldfsam segment --prompts`` (pure logic: no ``slicer`` import).

Slicer gives positions in RAS; the prompts file is in LPS (as the volume files): x and y change sign. A markups
ROI is a box with a centre, a size (mm, along its own axes) and an orientation (its axes in RAS, the columns of
the 3×3 part of ``GetObjectToWorldMatrix``); the prompt is the axis-aligned box holding its eight corners.

Markups give world positions, but the volume is saved in its own frame (a volume under a transform is saved
without it): ``to_local`` maps a world RAS position into the volume's frame (Slicer's world-to-parent transform of
the volume), for the ROI's corners and for every point. Only control points whose position is defined are
prompts (:func:`placed_points`): ``vtkMRMLMarkupsNode`` says the coordinates of an undefined point must not be
used, and a preview point is the one still following the mouse.
A widget calls::

    doc = prompts_document([structure("Tooth 21", roi_center, roi_size, roi_axes,
                                      include=[p1], exclude=[p2])])
    Path(json_path).write_text(json.dumps(doc))

then runs ``ldfsam segment VOLUME -o OUT.seg.nrrd --prompts JSON_PATH [--base-segmentation PREVIOUS]``.

A line of clicks (SPD's centreline prompt: a markups curve, line or point list placed through a tooth's slices) is
sent as the entry's ``line``: its placed control points, in order; the core makes an include click on every slice
the straight pieces between them cross (a curve's smoothing between its control points is not followed).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

Vector = Sequence[float]
ToLocal = Optional[Callable[[Vector], Vector]]


def ras_to_lps(p: Vector) -> List[float]:
    return [-float(p[0]), -float(p[1]), float(p[2])]


def placed_points(node: object, defined: int, to_local: ToLocal = None) -> List[List[float]]:
    """RAS positions (in the volume's frame with ``to_local``) of a markups node's control points whose position
    status is ``defined`` (``slicer.vtkMRMLMarkupsNode.PositionDefined``); none for no node."""
    if node is None:
        return []
    points = []
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) != defined:
            continue  # undefined (skipped while placing) or a preview under the mouse
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        points.append([float(v) for v in (to_local(p) if to_local is not None else p)])
    return points


def placed_labels(node: object, defined: int) -> List[str]:
    """The labels of the control points :func:`placed_points` returns (same order), e.g. "F-2"; [] for no node."""
    if node is None:
        return []
    return [str(node.GetNthControlPointLabel(i)) for i in range(node.GetNumberOfControlPoints())
            if node.GetNthControlPointPositionStatus(i) == defined]


def roi_box(center: Vector, size: Vector, axes: Optional[Sequence[Vector]] = None,
            to_local: ToLocal = None) -> Dict[str, List[float]]:
    """The LPS box {"min", "max"} holding a markups ROI (RAS centre, size in mm, axes = 3 unit column vectors in
    RAS, default the RAS axes), in the volume's frame when ``to_local`` maps world RAS into it. ValueError for a
    size that is not three non-negative numbers."""
    if len(size) != 3 or any(float(s) < 0 for s in size):
        raise ValueError(f"ROI size must be three non-negative numbers (mm), got {list(size)}")
    if len(center) != 3:
        raise ValueError(f"ROI centre must be three numbers (mm), got {list(center)}")
    cols = axes if axes is not None else ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    corners = []
    for sx in (-0.5, 0.5):
        for sy in (-0.5, 0.5):
            for sz in (-0.5, 0.5):
                ras = [float(center[i]) + sx * size[0] * cols[0][i] + sy * size[1] * cols[1][i]
                       + sz * size[2] * cols[2][i] for i in range(3)]
                corners.append(ras_to_lps(to_local(ras) if to_local is not None else ras))
    return {"min": [min(c[i] for c in corners) for i in range(3)],
            "max": [max(c[i] for c in corners) for i in range(3)]}


def structure(name: str, roi_center: Optional[Vector] = None, roi_size: Optional[Vector] = None,
              roi_axes: Optional[Sequence[Vector]] = None, include: Sequence[Vector] = (),
              exclude: Sequence[Vector] = (), to_local: ToLocal = None, line: Sequence[Vector] = ()
              ) -> Dict[str, object]:
    """One entry of the prompts file from an optional ROI (world RAS, mapped by ``to_local``), include/exclude
    control points and a line of clicks (RAS, already in the volume's frame: see :func:`placed_points`)."""
    if not name or not name.strip():
        raise ValueError("a structure needs a name")
    entry: Dict[str, object] = {"name": name.strip()}
    if roi_center is not None and roi_size is not None:
        entry["box"] = roi_box(roi_center, roi_size, roi_axes, to_local)
    points = [{"position": ras_to_lps(p), "label": "include"} for p in include]
    points += [{"position": ras_to_lps(p), "label": "exclude"} for p in exclude]
    if points:
        entry["points"] = points
    if line:
        entry["line"] = [ras_to_lps(p) for p in line]
    if "box" not in entry and not include and not line:
        raise ValueError(f"structure {name!r}: place a ROI, a line of clicks or at least one include point")
    return entry


def prompts_document(structures: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """The whole prompts file (JSON-serialisable)."""
    names = [s["name"] for s in structures]
    if len(set(names)) != len(names):
        raise ValueError("two structures have the same name")
    return {"structures": list(structures)}


def click_names(order: Sequence[Sequence[object]], include_labels: Sequence[str] = (),
                exclude_labels: Sequence[str] = ()) -> List[str]:
    """What the panel calls each click of the worker's entry: ``order`` gives, per click in the worker's order,
    (label, index in that markups list's placed points) (``prompt_client.Prompt.order``); the control point's
    label when known, e.g. "include point F-2", else its number in the list."""
    labels = {"include": list(include_labels), "exclude": list(exclude_labels)}
    names = []
    for label, i in order:
        known = labels.get(str(label), [])
        names.append(f"{label} point {known[int(i)] if int(i) < len(known) else int(i) + 1}")
    return names


def not_used_text(reply: Dict[str, object], clicks: Optional[Sequence[str]] = None) -> str:
    """The prompt worker's report of the prompts SPD's prior did not take as given (``not_used``), as one line for
    the panel; "" when every prompt was used (or the worker runs without a prior).

    ``clicks``: the names of the entry's clicks in the worker's order (:func:`click_names`); the worker numbers the
    clicks of a line after them, so an index past them is a click of the line (named with its RAS position, in
    the volume's frame). Without ``clicks`` every click is named by its label and number."""
    parts = []
    for item in reply.get("not_used") or []:
        point = item.get("point")
        if point is None:
            what = "box"
        elif clicks is not None and int(point) < len(clicks):
            what = clicks[int(point)]
        elif clicks is not None:
            where = item.get("position")
            at = (" at RAS (" + ", ".join(f"{v:.1f}" for v in ras_to_lps(where)) + ")") if where else ""
            what = f"line click {int(point) - len(clicks) + 1}{at}"
        else:
            what = f"{item.get('label', 'include')} click {int(point) + 1}"
        parts.append(f"{what} {item.get('action', '')}: {item.get('reason', '')}")
    return ("Not used as given: " + "; ".join(parts) + ".") if parts else ""
