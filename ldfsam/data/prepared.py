"""A prepared dataset folder: what ``ldfsam prepare`` writes and both training phases read.

Layout of the output folder::

    prepared.json   manifest: source, layout, preprocessing, options, cases -> cache entries, summary
    preprocess.json the PreprocessConfig (also inside prepared.json)
    splits.json     train/val/test case IDs and the nested budgets
    cache/          one preprocessed entry per case (see ldfsam.data.cache)
    yolo/b<P>-<key>/  the Phase 1 YOLO dataset for budget P% (data.yaml with absolute paths)

Phase 1: ``PreparedData(out).yolo_data_yaml(budget)``; Phase 2: ``PreparedData(out).slice_dataset("train",
budget)`` and ``slice_dataset("val")``. Both use the same training cases and masks at a given budget.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..atomic import make_folder, write_text_atomic
from ..config import from_dict, save_json, to_dict
from ..errors import ConfigError, InputError
from .cache import CaseEntry, _load_entry, build_case, clean_temporaries
from .config import PreprocessConfig
from .layouts import find_cases
from .slices import SliceDataset, select_slices
from .splits import Splits, make_splits, read_splits, write_splits
from .yolo import export_yolo, yolo_key

MANIFEST = "prepared.json"
MANIFEST_FORMAT = "ldfsam-prepared"


@dataclass
class PrepareOptions:
    kind: str = "auto"  # "auto", "3d" or "2d"
    test_fraction: float = 0.2
    test_count: Optional[int] = None
    val_fraction: float = 0.1
    seed: int = 2025
    budgets: List[float] = field(default_factory=lambda: [1.0])
    # Empty slices (no teeth) kept per slice with teeth, for Phase 2 and the YOLO export alike.
    empty_ratio: float = 0.1
    strict_labels: bool = False
    skip_bad: bool = False
    yolo: bool = True


def _budget_name(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}"


def prepare_dataset(source: Union[str, Path], out_dir: Union[str, Path], cfg: PreprocessConfig,
                    opts: Optional[PrepareOptions] = None, progress=None) -> Dict[str, Any]:
    """Discover cases, split them, fill the cache and export the YOLO dataset(s); returns the summary."""
    opts = opts or PrepareOptions()
    source, out_dir = Path(source), Path(out_dir)
    found = find_cases(source, opts.kind)
    if found.kind == "2d" and cfg.target_spacing is not None:
        cfg = dataclasses.replace(cfg, target_spacing=None)
    if not found.cases:
        raise InputError(f"no labelled cases found ({found.layout} layout; {len(found.skipped)} file(s) skipped)",
                         source)
    for b in opts.budgets:
        if not 0.0 < b <= 1.0:
            raise ConfigError(f"budget {b} is not in (0, 1]")
    cache = out_dir / "cache"
    make_folder(out_dir)
    for folder in (cache, out_dir / "yolo"):
        if folder.exists():
            clean_temporaries(folder)  # left by a killed run
    skipped = [{"file": str(p), "reason": r} for p, r in found.skipped]
    n = len(found.cases)
    total = n * (1 + len(set(opts.budgets))) if opts.yolo else n
    if progress:
        progress.start("prepare", total=total, message=f"preparing {n} {found.kind.upper()} case(s) from {source}")
        for s in skipped:
            progress.log("prepare", f"skipped {s['file']}: {s['reason']}", level="warning")
    entries: Dict[str, CaseEntry] = {}
    warnings: List[str] = []
    for i, case in enumerate(found.cases):
        try:
            entry = build_case(case, cfg, cache, found.kind, opts.strict_labels)
        except InputError as e:
            if not opts.skip_bad:
                raise
            skipped.append({"file": str(e.path or case.image), "reason": str(e)})
            if progress:
                progress.log("prepare", f"skipped case {case.case_id}: {e}", level="warning")
            continue
        entries[case.case_id] = entry
        if entry.meta.get("unexpected_labels"):
            vals = ", ".join(f"{k} ({v} voxels)" for k, v in entry.meta["unexpected_labels"].items())
            msg = f"{case.label}: unexpected label values {vals} are not in the label map; treated as background"
            warnings.append(msg)
            if progress:
                progress.log("prepare", msg, level="warning")
        if progress:
            progress.update("prepare", i + 1, total=total, case=case.case_id)
    if not entries:
        raise InputError("every case was skipped; nothing to prepare", source)
    splits = make_splits(list(entries), test_fraction=opts.test_fraction, test_count=opts.test_count,
                         val_fraction=opts.val_fraction, seed=opts.seed)
    write_splits(splits, out_dir / "splits.json")
    save_json(cfg, out_dir / "preprocess.json")

    yolo_dirs: Dict[str, str] = {}
    if opts.yolo:
        budgets = sorted(set(opts.budgets), reverse=True)
        total = n * (1 + len(budgets))
        previous: Optional[Path] = None
        for k, b in enumerate(budgets):
            by_split = {"train": [entries[c] for c in splits.budget(b)], "val": [entries[c] for c in splits.val],
                        "test": [entries[c] for c in splits.test]}
            count = sum(len(v) for v in by_split.values())
            done = [0]

            def tick(_entry: CaseEntry, k=k, count=count, done=done) -> None:
                done[0] += 1
                if progress:
                    progress.update("prepare", n * (1 + k) + int(n * done[0] / count), total=total)

            name = f"b{_budget_name(b)}-{yolo_key(by_split, cfg, opts.empty_ratio)}"
            export_yolo(by_split, out_dir / "yolo" / name, cfg, opts.empty_ratio, on_case=tick, reuse=previous)
            previous = out_dir / "yolo" / name
            yolo_dirs[_budget_name(b)] = f"yolo/{name}"
        _remove_stale_yolo(out_dir / "yolo", set(yolo_dirs.values()))

    summary = _summary(found.kind, entries, splits, opts)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "source": str(source.resolve()), "kind": found.kind,
                "layout": found.layout, "preprocess": to_dict(cfg), "options": to_dict(opts),
                "cases": {cid: f"cache/{e.path.name}" for cid, e in entries.items()}, "yolo": yolo_dirs,
                "skipped": skipped, "warnings": warnings, "summary": summary}
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    _remove_unused_entries(cache, {e.path.name for e in entries.values()})
    if progress:
        progress.done("prepare", message=_summary_line(summary), **summary)
    return manifest


def _remove_stale_yolo(root: Path, keep: set) -> None:
    # Only folders named like our exports are ever removed: nothing else in the output folder is touched.
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and f"yolo/{p.name}" not in keep and re.fullmatch(r"b[0-9.]+-[0-9a-f]{16}", p.name):
                shutil.rmtree(p, ignore_errors=True)


def _remove_unused_entries(cache: Path, keep: set) -> None:
    # Entries of cases no longer in the source folder (or built with other parameters) are dropped.
    for p in cache.iterdir():
        if p.is_dir() and p.name not in keep and re.fullmatch(r"[^.].*-[0-9a-f]{16}", p.name) \
                and (p / "meta.json").is_file():
            shutil.rmtree(p, ignore_errors=True)


def _summary(kind: str, entries: Dict[str, CaseEntry], splits: Splits, opts: PrepareOptions) -> Dict[str, Any]:
    slices = sum(e.num_slices for e in entries.values())
    fg = sum(len(e.teeth_slices) for e in entries.values())
    boxes = sum(int(e.meta["num_boxes"]) for e in entries.values())
    out = {"data": kind, "cases": len(entries), "train": len(splits.train), "val": len(splits.val),
           "test": len(splits.test), "slices": slices, "slices_with_foreground": fg, "boxes": boxes}
    out["training_slices"] = {_budget_name(b): sum(len(select_slices(entries[c], opts.empty_ratio))
                                                   for c in splits.budget(b)) for b in opts.budgets}
    return out


def _summary_line(s: Dict[str, Any]) -> str:
    unit = "volumes" if s["data"] == "3d" else "images"
    return (f"{s['cases']} {unit} (train {s['train']}, val {s['val']}, test {s['test']}), {s['slices']} slices, "
            f"{s['slices_with_foreground']} with foreground, {s['boxes']} boxes")


class PreparedData:
    """Read access to a folder written by :func:`prepare_dataset`."""

    def __init__(self, out_dir: Union[str, Path]):
        self.root = Path(out_dir)
        path = self.root / MANIFEST
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("is not a prepared dataset (no prepared.json; run 'ldfsam prepare' first)",
                             self.root) from None
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read the manifest ({e})", path) from None
        if self.manifest.get("format") != MANIFEST_FORMAT:
            raise InputError("is not an ldfsam prepared-dataset manifest", path)
        self.preprocess: PreprocessConfig = from_dict(PreprocessConfig, self.manifest["preprocess"])
        self.splits: Splits = read_splits(self.root / "splits.json")
        self.kind: str = self.manifest["kind"]
        self.empty_ratio: float = float(self.manifest["options"].get("empty_ratio", 0.1))

    @property
    def summary(self) -> Dict[str, Any]:
        return self.manifest["summary"]

    def entry(self, case_id: str) -> CaseEntry:
        rel = self.manifest["cases"].get(case_id)
        entry = _load_entry(self.root / rel) if rel else None
        if entry is None:
            raise InputError(f"cache entry of case {case_id!r} is missing or damaged; run 'ldfsam prepare' again",
                             self.root / (rel or "cache"))
        return entry

    def case_ids(self, split: str, budget: float = 1.0) -> List[str]:
        return self.splits.budget(budget) if split == "train" else self.splits.of(split)

    def entries(self, split: str, budget: float = 1.0) -> List[CaseEntry]:
        return [self.entry(c) for c in self.case_ids(split, budget)]

    def slice_dataset(self, split: str = "train", budget: float = 1.0, empty_ratio: Optional[float] = None,
                      all_slices: bool = False) -> SliceDataset:
        """The Phase 2 dataset of a split (training cases limited to ``budget``)."""
        ratio = self.empty_ratio if empty_ratio is None else empty_ratio
        return SliceDataset(self.entries(split, budget), self.preprocess, ratio, all_slices=all_slices)

    def yolo_data_yaml(self, budget: float = 1.0, size: Optional[int] = None) -> Path:
        """The Phase 1 data.yaml for ``budget`` (exported now when ``prepare`` did not make it).

        ``size``: the detector's input size when it differs from the prepared ``yolo_size``. The images are then
        rendered again from the full-resolution cache at that size (a folder of their own, found again by its key):
        resizing the prepared images would feed a larger detector upsampled pixels with no more detail.
        """
        name = _budget_name(budget)
        if size is not None and size != self.preprocess.yolo_size:
            preprocess = dataclasses.replace(self.preprocess, yolo_size=int(size))
            by_split = {"train": self.entries("train", budget), "val": self.entries("val"),
                        "test": self.entries("test")}
            target = self.root / "yolo" / f"b{name}-{yolo_key(by_split, preprocess, self.empty_ratio)}"
            return export_yolo(by_split, target, preprocess, self.empty_ratio)
        rel = self.manifest.get("yolo", {}).get(name)
        if rel and (self.root / rel / "data.yaml").is_file():
            return self.root / rel / "data.yaml"
        by_split = {"train": self.entries("train", budget), "val": self.entries("val"),
                    "test": self.entries("test")}
        target = self.root / "yolo" / f"b{name}-{yolo_key(by_split, self.preprocess, self.empty_ratio)}"
        path = export_yolo(by_split, target, self.preprocess, self.empty_ratio)
        self.manifest.setdefault("yolo", {})[name] = f"yolo/{target.name}"
        write_text_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        return path
