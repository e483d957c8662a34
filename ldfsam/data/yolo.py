"""The Phase 1 detection dataset in YOLO format, for ultralytics' trainer.

``<dir>/images/{train,val,test}/<case>_<slice>.png`` (grey slices resized to the prompt generator's input size,
exactly as Phase 2 and inference resize them), ``labels/.../<case>_<slice>.txt`` (one ``class xc yc w h`` row per
instance box, normalised; empty for slices without teeth) and ``data.yaml`` with absolute paths. The slices and
boxes are those of the Phase 2 dataset at the same budget (same cases, same slices, same masks). The folder is
built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .boxes import boxes_to_yolo
from .cache import CaseEntry
from .config import PreprocessConfig
from .slices import select_slices

YOLO_VERSION = 1


def yolo_key(entries_by_split: Dict[str, Sequence[CaseEntry]], cfg: PreprocessConfig, empty_ratio: float) -> str:
    doc = {"version": YOLO_VERSION, "size": cfg.yolo_size, "names": list(cfg.class_names), "empty": empty_ratio,
           "splits": {k: [e.path.name for e in v] for k, v in entries_by_split.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _write_yaml(path: Path, root: Path, splits: Sequence[str], names: Sequence[str]) -> None:
    lines = ["# LDFSAM Phase 1 detection dataset (built by ldfsam prepare)", f"path: {json.dumps(str(root))}"]
    for s in ("train", "val", "test"):
        if s in splits:
            lines.append(f"{s}: {json.dumps(str(root / 'images' / s))}")
        elif s == "val":
            # ultralytics needs a validation set; with too few cases for one, validate on the training images.
            lines.append(f"val: {json.dumps(str(root / 'images' / 'train'))}  # no validation cases")
    lines.append(f"nc: {len(names)}")
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def export_yolo(entries_by_split: Dict[str, Sequence[CaseEntry]], target: Path, cfg: PreprocessConfig,
                empty_ratio: float = 0.1, on_case: Optional[Callable[[CaseEntry], None]] = None,
                reuse: Optional[Path] = None) -> Path:
    """Write the YOLO dataset into ``target`` (a folder, replaced atomically); returns the data.yaml path.

    ``reuse``: a finished export built from the same cache entries (a larger budget); its files are hard-linked
    instead of being rendered again.
    """
    # data.yaml must hold absolute paths: ultralytics resolves relative ones against its own datasets folder.
    target = Path(target).resolve()
    import torch
    from PIL import Image

    from .preprocess import to_model_input

    target = Path(target)
    if (target / "data.yaml").is_file():
        return target / "data.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        splits = [s for s in ("train", "val", "test") if entries_by_split.get(s)]
        for split in splits:
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for entry in entries_by_split[split]:
                image = entry.image()
                boxes = entry.boxes()
                h, w = image.shape[1], image.shape[2]
                for z in select_slices(entry, empty_ratio, detection=True):
                    name = f"{entry.case_id}_{z:04d}"
                    if reuse is not None and _link(reuse, tmp, split, name):
                        continue
                    x = to_model_input(torch.from_numpy(np.array(image[z]))[None], cfg.yolo_size, channels=1)[0]
                    pixels = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
                    # Grey slices as 1-channel PNG (ultralytics replicates them to 3 channels on loading).
                    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
                        tmp / "images" / split / f"{name}.png", compress_level=1)
                    rows = boxes_to_yolo(boxes[boxes[:, 0] == z][:, 1:], w, h)
                    text = "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in rows)
                    (tmp / "labels" / split / f"{name}.txt").write_text(text, encoding="utf-8")
                if on_case:
                    on_case(entry)
        _write_yaml(tmp / "data.yaml", target, splits, cfg.class_names)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)
    return target / "data.yaml"


def _link(source: Path, tmp: Path, split: str, name: str) -> bool:
    pairs = [(source / "images" / split / f"{name}.png", tmp / "images" / split / f"{name}.png"),
             (source / "labels" / split / f"{name}.txt", tmp / "labels" / split / f"{name}.txt")]
    if not all(a.is_file() for a, _ in pairs):
        return False
    for a, b in pairs:
        try:
            os.link(a, b)
        except OSError:
            shutil.copyfile(a, b)
    return True


def yolo_slice_count(entries: List[CaseEntry], empty_ratio: float) -> int:
    return sum(len(select_slices(e, empty_ratio, detection=True)) for e in entries)
