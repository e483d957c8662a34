"""Label maps onto the model's classes: binary teeth by default, multi-label maps through ``label_map``.

``PreprocessConfig.label_map`` maps label values to class indices (1..C; 0 = background). Keys are single values
(``"3"``) or inclusive ranges (``"11-28"``), so a per-tooth FDI map becomes upper/lower teeth with
``{"11-28": 1, "31-48": 2}``. Values present in a label map but matched by no key are unexpected: they become
background and are reported (or, with ``strict``, raise an error naming the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError, InputError
from .config import PreprocessConfig

# Ready-made maps for known label conventions.
KNOWN_LABEL_MAPS: Dict[str, Dict[str, int]] = {
    # DentalSegmentator: 1 maxilla/skull, 2 mandible, 3 upper teeth, 4 lower teeth, 5 mandibular canal.
    "dentalsegmentator": {"1": 0, "2": 0, "3": 1, "4": 1, "5": 0},
    # FDI tooth numbers (11-48, incl. 5x-8x deciduous teeth) to one "tooth" class.
    "fdi": {"11-18": 1, "21-28": 1, "31-38": 1, "41-48": 1, "51-55": 1, "61-65": 1, "71-75": 1, "81-85": 1},
}


def parse_key(key: str) -> Tuple[int, int]:
    """``"3"`` -> (3, 3); ``"11-28"`` -> (11, 28)."""
    text = str(key).strip()
    try:
        if "-" in text[1:]:
            a, b = text.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(text)
    except ValueError:
        raise ConfigError(f"label_map key {key!r} is not a label value or a range like '11-28'") from None
    if lo < 0 or hi < lo:
        raise ConfigError(f"label_map key {key!r} is not a valid non-negative range")
    return lo, hi


def parse_label_map(spec: str) -> Dict[str, int]:
    """A label map from the command line: a known name, JSON (``{"3": 1}``), ``3:1,4:1`` or a JSON file path."""
    spec = spec.strip()
    if spec.lower() in KNOWN_LABEL_MAPS:
        return dict(KNOWN_LABEL_MAPS[spec.lower()])
    if spec.startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"label map is not valid JSON ({e})") from None
    elif spec.endswith(".json") or Path(spec).is_file():
        try:
            data = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read label map file ({e})", spec) from None
    else:
        data = {}
        for part in spec.split(","):
            if ":" not in part:
                raise ConfigError(f"label map entry {part!r} is not VALUE:CLASS (e.g. '3:1,4:1' or '11-48:1')")
            k, v = part.split(":", 1)
            data[k.strip()] = v.strip()
    if not isinstance(data, dict):
        raise ConfigError("label map must be a mapping of label value (or range) to class index")
    out = {}
    for k, v in data.items():
        parse_key(k)
        try:
            out[str(k).strip()] = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"label map class for {k!r} must be an integer, got {v!r}") from None
    return out


def lookup_table(cfg: PreprocessConfig, max_value: int) -> Tuple[np.ndarray, np.ndarray]:
    """(lut, matched): class index for each label value 0..max_value, and whether a key matched it."""
    num_classes = len(cfg.class_names)
    lut = np.zeros(max_value + 1, np.uint8)
    matched = np.zeros(max_value + 1, bool)
    matched[0] = True
    if cfg.label_map is None:
        if num_classes != 1:
            raise ConfigError(f"label_map is needed to map label values onto {num_classes} classes "
                              f"({', '.join(cfg.class_names)})")
        lut[1:] = 1
        matched[:] = True
        return lut, matched
    for key, cls in cfg.label_map.items():
        lo, hi = parse_key(key)
        if not 0 <= int(cls) <= num_classes:
            raise ConfigError(f"label_map maps {key!r} to class {cls}, but there are {num_classes} class(es) "
                              f"({', '.join(cfg.class_names)}); use 0 for background")
        if lo > max_value:
            continue
        hi = min(hi, max_value)
        lut[lo:hi + 1] = int(cls)
        matched[lo:hi + 1] = True
    return lut, matched


@dataclass
class LabelReport:
    """What a label map held: voxels per label value, and values that no ``label_map`` key matched."""

    counts: Dict[int, int] = field(default_factory=dict)
    unexpected: Dict[int, int] = field(default_factory=dict)

    def message(self) -> str:
        vals = ", ".join(f"{v} ({n} voxels)" for v, n in sorted(self.unexpected.items()))
        return f"unexpected label values {vals} are not in the label map; treated as background"


def map_labels(labels: np.ndarray, cfg: PreprocessConfig, path: Optional[Union[str, Path]] = None,
               strict: bool = False) -> Tuple[np.ndarray, LabelReport]:
    """Label values (any shape, non-negative integers) -> class indices uint8 (0 background, 1..C)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError("label map must hold integer values", path)
    max_value = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise InputError("label map has negative values", path)
    counts = np.bincount(labels.ravel(), minlength=1) if labels.size else np.zeros(1, np.int64)
    lut, matched = lookup_table(cfg, max_value)
    present = np.nonzero(counts)[0]
    report = LabelReport({int(v): int(counts[v]) for v in present if v},
                         {int(v): int(counts[v]) for v in present if not matched[v]})
    if report.unexpected and strict:
        raise InputError(report.message().replace("; treated as background", ""), path)
    return lut[labels], report
