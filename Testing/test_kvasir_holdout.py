"""bench_kvasir --hold-out: training images stratified by polyp area that no budget trains on, the run's selection
set at the full budget (where no training image is left over), and kvasir_variants --selection-from held-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script
from PIL import Image

from ldfsam.data.config import PreprocessConfig
from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
from ldfsam.distill.data import read_detection_data


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Twenty 2D images, each with one disc whose area grows with its number, prepared (two validation images)."""
    root = tmp_path_factory.mktemp("holdout")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "src" / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    for i in range(20):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        mask = (yy - 32) ** 2 + (xx - 32) ** 2 <= (3 + i) ** 2
        Image.fromarray(image).save(root / "src" / "images" / f"c{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "src" / "masks" / f"c{i:02d}.png")
    cfg = PreprocessConfig(target_spacing=None, sam_size=32, yolo_size=32, class_names=["polyp"])
    prepare_dataset(root / "src", root / "prepared", cfg, PrepareOptions(kind="2d", test_count=0, val_fraction=0.1))
    return root


def test_held_out_images_are_stratified_and_never_trained_on(source):
    bench = load_script("benchmarks/bench_kvasir.py")
    variants = load_script("benchmarks/kvasir_variants.py")
    before = PreparedData(source / "prepared")
    dest = bench.hold_out(source / "src", source / "prepared", 4, source / "out" / "prepared-holdout4")
    pd = PreparedData(dest)
    held = pd.case_ids("val")
    # Stratified by area: the 18 training images sorted by their discs' area, evenly spread (first and last kept).
    by_area = sorted(before.case_ids("train"))  # c00 < c01 < ...: the area grows with the number
    assert held == sorted(by_area[i] for i in (0, 6, 11, 17))
    # No budget trains on them; the training order (budgets' nesting) is kept; the validation images are scored.
    assert pd.case_ids("train") == [i for i in before.case_ids("train") if i not in held]
    assert not set(held) & set(pd.case_ids("train", 1.0)) and not set(held) & set(pd.case_ids("train", 0.5))
    assert pd.case_ids("test") == before.case_ids("val")
    # Phase 1's detection data is exported again: trains on the 14, validates on the held-out 4.
    yolo = read_detection_data(dest).source
    stems = {p.name.rsplit("_", 1)[0] for p in (yolo.parent / "images" / "train").glob("*.png")}
    assert stems == set(pd.case_ids("train"))
    assert {p.name.rsplit("_", 1)[0] for p in (yolo.parent / "images" / "val").glob("*.png")} == set(held)
    assert PreparedData(source / "prepared").manifest.get("yolo") == before.manifest.get("yolo")  # source untouched
    # The variant rule chooses on them and reports the validation images.
    assert variants.held_out_splits(dest) == (held, sorted(before.case_ids("val")))
    with pytest.raises(SystemExit, match="no held-out"):
        variants.held_out_splits(source / "prepared")
    # Found again; another count in the same folder is refused.
    assert bench.hold_out(source / "src", source / "prepared", 4, dest) == dest
    with pytest.raises(SystemExit, match="other splits"):
        bench.hold_out(source / "src", source / "prepared", 5, dest)
