"""Train/validation/test splits at case (volume or patient) level, per the paper's protocol (section 4.1).

Sort the case IDs, shuffle them once with seed 2025, take the test set from the front, then hold out 10% of the
rest for validation; the remainder is the training set, in shuffled order. An annotation budget (10/20/50/100%)
takes the first ``ceil(f * n)`` training cases of that order, so smaller budgets are nested in larger ones and
both phases (boxes for Phase 1, masks for Phase 2) use the same cases. Slices are extracted only after the split.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..atomic import write_text_atomic
from ..errors import ConfigError

SPLITS_FORMAT = "ldfsam-splits"
PAPER_SEED = 2025


@dataclass
class Splits:
    train: List[str]
    val: List[str]
    test: List[str]
    seed: int = PAPER_SEED
    val_fraction: float = 0.1
    protocol: str = "sorted ids, one shuffle with seed, test first, then val_fraction of the rest"
    extra: Dict[str, Any] = field(default_factory=dict)

    def budget(self, fraction: float) -> List[str]:
        """The training cases of an annotation budget (0 < fraction <= 1), nested across budgets."""
        return budget_subset(self.train, fraction)

    def of(self, split: str) -> List[str]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        return list(getattr(self, split))

    def to_json(self) -> Dict[str, Any]:
        return {"format": SPLITS_FORMAT, "version": 1, "seed": self.seed, "val_fraction": self.val_fraction,
                "protocol": self.protocol, "train": self.train, "val": self.val, "test": self.test,
                "budgets": {f"{int(f * 100)}%": self.budget(f) for f in (0.1, 0.2, 0.5, 1.0)}, **self.extra}


def budget_subset(train: Sequence[str], fraction: float) -> List[str]:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"annotation budget must be in (0, 1] (e.g. 0.1 for 10%), got {fraction}")
    n = len(train)
    k = min(n, max(1, math.ceil(round(fraction * n, 9)))) if n else 0
    return list(train[:k])


def make_splits(case_ids: Sequence[str], test_fraction: Optional[float] = 0.2, test_count: Optional[int] = None,
                val_fraction: float = 0.1, seed: int = PAPER_SEED, test_ids: Optional[Sequence[str]] = None) -> Splits:
    """Split case IDs by the paper's protocol; ``test_count`` (or fixed ``test_ids``) overrides ``test_fraction``."""
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ConfigError("case IDs are not unique")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {val_fraction}")
    order = list(ids)
    random.Random(seed).shuffle(order)
    if test_ids is not None:
        unknown = sorted(set(test_ids) - set(ids))
        if unknown:
            raise ConfigError(f"test IDs not among the cases: {', '.join(unknown[:5])}")
        test = [i for i in order if i in set(test_ids)]
    else:
        if test_count is None:
            if test_fraction is None or not 0.0 <= test_fraction < 1.0:
                raise ConfigError(f"test fraction must be in [0, 1), got {test_fraction}")
            test_count = int(math.floor(test_fraction * len(ids) + 0.5))
        if not 0 <= test_count < max(1, len(ids)):
            raise ConfigError(f"test count {test_count} leaves no training cases out of {len(ids)}")
        test = order[:test_count]
    rest = [i for i in order if i not in set(test)]
    # Half up (not banker's rounding); at least one validation case once there are two to choose from.
    n_val = int(math.floor(val_fraction * len(rest) + 0.5))
    if val_fraction > 0 and n_val == 0 and len(rest) >= 2:
        n_val = 1
    if n_val >= len(rest) and rest:
        n_val = len(rest) - 1
    return Splits(train=rest[n_val:], val=rest[:n_val], test=test, seed=seed, val_fraction=val_fraction)


def write_splits(splits: Splits, path: Union[str, Path]) -> None:
    write_text_atomic(path, json.dumps(splits.to_json(), indent=1) + "\n")


def write_split_ids(ids: Dict[str, Sequence[str]], path: Union[str, Path], **extra: Any) -> None:
    """Write the case ids a run actually used (``train``/``val``/``test`` lists) as a splits file that
    :func:`read_splits` reads back; ``extra`` fields are kept beside them."""
    doc = {"format": SPLITS_FORMAT, "version": 1, **extra,
           **{k: [str(i) for i in ids.get(k, [])] for k in ("train", "val", "test")}}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


# Where a run folder keeps its splits, in order of preference: its own copy, its prepared data's, its Phase 2's.
RUN_SPLITS = ("splits.json", "prepared/splits.json", "phase2/splits.json")


def splits_file(path: Union[str, Path]) -> Path:
    """The splits file ``path`` names: the file itself, or the splits of a run or prepared folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    for rel in RUN_SPLITS:
        if (path / rel).is_file():
            return path / rel
    raise ConfigError(f"is a folder without a splits file (looked for {', '.join(RUN_SPLITS)})", path)


def read_splits(path: Union[str, Path]) -> Splits:
    """Read a splits file written by :func:`write_splits` or :func:`write_split_ids` (or the splits of the run
    or prepared folder ``path``), checking that no case is in two splits."""
    path = splits_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such splits file", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"not a readable splits file ({e})", path) from None
    if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ConfigError(f"not an ldfsam splits file (format {found!r})", path)
    try:
        parts = {k: [str(v) for v in data[k]] for k in ("train", "val", "test")}
    except (KeyError, TypeError):
        raise ConfigError("splits file lacks train/val/test lists", path) from None
    seen: Dict[str, str] = {}
    for name, ids in parts.items():
        for i in ids:
            if i in seen:
                raise ConfigError(f"case {i!r} is in both {seen[i]} and {name}", path)
            seen[i] = name
    return Splits(**parts, seed=int(data.get("seed", PAPER_SEED)), val_fraction=float(data.get("val_fraction", 0.1)))
