"""Phase 1 on a prepared folder at a detector input size other than the prepared one: the images are rendered again
from the full-resolution cache at that size, not the prepared images upsampled (which would add no detail)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldfsam.data.config import PreprocessConfig
from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
from ldfsam.data.preprocess import to_model_input
from ldfsam.distill.data import read_detection_data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Six 2D images (96×80, fine texture) with one ellipse each, prepared at YOLO size 32."""
    root = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "src" / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:80, :96]
    for i in range(6):
        image = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
        mask = ((yy - 30 - 3 * i) / 14.0) ** 2 + ((xx - 40 - 2 * i) / 20.0) ** 2 <= 1
        Image.fromarray(image).save(root / "src" / "images" / f"c{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "src" / "masks" / f"c{i}.png")
    cfg = PreprocessConfig(target_spacing=None, sam_size=32, yolo_size=32, class_names=["polyp"])
    prepare_dataset(root / "src", root / "prepared", cfg, PrepareOptions(kind="2d", test_count=0, val_fraction=0.34))
    return root / "prepared"


def _pngs(data_yaml: Path):
    return sorted((data_yaml.parent / "images" / "train").glob("*.png"))


def test_prepared_export_at_another_size_is_rendered_from_the_cache(prepared):
    own = read_detection_data(prepared)  # the prepared size
    big = read_detection_data(prepared, imgsz=64)
    assert own.source != big.source
    assert [p.name for p in _pngs(own.source)] == [p.name for p in _pngs(big.source)]
    pd = PreparedData(prepared)
    for png in _pngs(big.source):
        with Image.open(png) as im:
            got = np.asarray(im.convert("L") if im.mode == "L" else im)
        assert got.shape[:2] == (64, 64)
        # the full-resolution slice resized once to 64, exactly as Phase 2 and inference resize it
        entry = pd.entry(png.stem.rsplit("_", 1)[0])
        x = to_model_input(torch.from_numpy(np.array(entry.image()[0]))[None], 64, channels=1)[0]
        want = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        want = want[..., 0] if want.shape[2] == 1 else want
        assert np.array_equal(got, want)
        # the labels are the same normalised boxes at either size
        label = png.parent.parent.parent / "labels" / "train" / f"{png.stem}.txt"
        own_label = own.source.parent / "labels" / "train" / f"{png.stem}.txt"
        assert label.read_text() == own_label.read_text() != ""
    # found again, not rendered twice; the prepared size is the prepared export
    assert read_detection_data(prepared, imgsz=64).source == big.source
    assert read_detection_data(prepared, imgsz=32).source == own.source


def test_distill_passes_its_input_size_to_a_prepared_folder(prepared, tmp_path, monkeypatch):
    """``run_distillation(PREPARED, imgsz=64)`` trains on the 64-pixel export (the trainer itself not run)."""
    import ldfsam.distill.run as run_mod
    from ldfsam.distill.config import DistillConfig

    seen = {}

    def fake_stage(stage, scale, recipe, data_yaml, *args, **kwargs):
        seen["yaml"], seen["imgsz"] = data_yaml, recipe.imgsz
        path = stage.dir.parent / f"{stage.role}.safetensors"
        return path, {}

    monkeypatch.setattr(run_mod, "_train_stage", fake_stage)
    cfg = DistillConfig()
    cfg.ld.scheme = "none"
    cfg.student_init = None
    cfg.student.imgsz = cfg.teacher.imgsz = 64
    run_mod.run_distillation(prepared, tmp_path / "run", cfg, stage="student")
    assert seen["imgsz"] == 64
    import yaml

    train = Path(yaml.safe_load(seen["yaml"].read_text())["train"])
    with Image.open(sorted(train.glob("*.png"))[0]) as im:
        assert im.size == (64, 64)
