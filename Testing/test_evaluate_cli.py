"""``ldfsam evaluate`` on real files: label volumes via SimpleITK, mask images, and a model on a dataset."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.cli import main

REPO = Path(__file__).resolve().parents[1]


def _write_label(path: Path, array: np.ndarray, spacing=(0.5, 0.5, 2.0)) -> None:
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing)  # (x, y, z): array axis 0 (z) has 2 mm voxels
    sitk.WriteImage(img, str(path), True)


@pytest.fixture()
def volumes(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((16, 20, 20), np.uint8)
    ref[4:10, 5:15, 5:15] = 11   # a "tooth" 11 ...
    ref[4:10, 16:19, 5:15] = 21  # ... and a tooth 21
    perfect = ref.copy()
    shifted = np.zeros_like(ref)
    shifted[5:11] = ref[4:10]  # one 2 mm slice further
    _write_label(ref_dir / "a.nii.gz", ref)
    _write_label(ref_dir / "b.nii.gz", ref)
    _write_label(ref_dir / "c.nii.gz", ref)
    _write_label(pred_dir / "a.nii.gz", perfect)
    _write_label(pred_dir / "b.nii.gz", shifted)
    _write_label(pred_dir / "c.nii.gz", np.zeros_like(ref))
    return pred_dir, ref_dir


def test_folder_evaluation_writes_csv_and_summary(volumes, tmp_path, capsys):
    pred_dir, ref_dir = volumes
    out = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out), "--per-label",
                 "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    assert "label_11" in printed and "95% CI" in printed
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [(r["case_id"], r["class"]) for r in rows] == [("a", "label_11"), ("a", "label_21"), ("b", "label_11"),
                                                          ("b", "label_21"), ("c", "label_11"), ("c", "label_21")]
    by = {(r["case_id"], r["class"]): r for r in rows}
    assert float(by["a", "label_11"]["dice"]) == 1.0 and float(by["a", "label_11"]["hd"]) == 0.0
    # Shifted by one slice of 2 mm (spacing read from the file): 5 of 6 slices overlap; HD 2 mm.
    assert float(by["b", "label_11"]["dice"]) == pytest.approx(5 / 6)
    assert float(by["b", "label_11"]["hd"]) == pytest.approx(2.0)
    assert by["c", "label_11"]["hd"] == "inf" and float(by["c", "label_11"]["dice"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["classes"] == ["label_11", "label_21"]
    hd = summary["metrics"]["label_11"]["hd"]
    assert (hd["n"], hd["excluded"]) == (2, 1) and hd["mean"] == pytest.approx(1.0)
    dice_all = summary["metrics"]["all"]["dice"]
    assert dice_all["n"] == 6 and dice_all["ci_low"] <= dice_all["mean"] <= dice_all["ci_high"]
    assert summary["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 2025}
    # Named classes: both teeth together as one class.
    out2 = tmp_path / "eval2"
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out2),
                 "--class", "teeth=11,21", "--progress", "none"]) == 0
    rows2 = list(csv.DictReader(open(out2 / "per_case.csv")))
    assert [r["class"] for r in rows2] == ["teeth"] * 3


def test_folder_errors_name_the_file(volumes, tmp_path):
    pred_dir, ref_dir = volumes
    (pred_dir / "c.nii.gz").unlink()
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "evaluate", "--pred", str(pred_dir), "--ref",
                           str(ref_dir), "--out", str(tmp_path / "e"), "--progress", "none"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert str(pred_dir) in proc.stderr and "no prediction for 1 reference case(s): c" in proc.stderr
    assert not (tmp_path / "e" / "summary.json").exists()
    # A prediction on another grid.
    _write_label(pred_dir / "c.nii.gz", np.zeros((16, 20, 21), np.uint8))
    with pytest.raises(Exception, match="c.nii.gz: shape"):
        from ldfsam.evaluate.folders import evaluate_folders

        evaluate_folders(pred_dir, ref_dir)


def test_mask_images_kvasir_style(tmp_path):
    from PIL import Image

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((30, 40), np.uint8)
    ref[5:15, 10:30] = 255
    Image.fromarray(ref).save(ref_dir / "x.jpg", quality=90)  # JPEG mask: grey values around 0 and 255
    pred = np.zeros_like(ref)
    pred[5:15, 10:20] = 1  # a 0/1 PNG
    Image.fromarray(pred).save(pred_dir / "x.png")
    from ldfsam.evaluate.folders import evaluate_folders

    (row,) = evaluate_folders(pred_dir, ref_dir)
    assert row["dice"] == pytest.approx(2 * 100 / 300, abs=0.01)
    assert row["ref_voxels"] == pytest.approx(200, abs=4)
    assert math.isfinite(row["hd"])


def test_model_on_2d_dataset_matches_its_saved_predictions(tmp_path, capsys):
    """Evaluating a model equals evaluating the masks it predicted (saved with --save-predictions)."""
    import torch
    from PIL import Image

    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[10:25, 12:30] = 255
        Image.fromarray(img).save(data / "images" / f"s{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"s{i}.png")
    torch.manual_seed(0)
    cfg = model_config("small")
    cfg.sam.image_size, cfg.prompt_generator.image_size = 64, 64
    model = build_model(cfg)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, cfg, PreprocessConfig(target_spacing=None, sam_size=64, yolo_size=64))
    out, preds = tmp_path / "eval", tmp_path / "preds"
    assert main(["evaluate", "--model", str(path), "--data", str(data), "--out", str(out), "--save-predictions",
                 str(preds), "--progress", "none"]) == 0
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["case_id"] for r in rows] == ["s0", "s1", "s2"] and {r["class"] for r in rows} == {"tooth"}
    assert all(0 < float(r["dice"]) < 1 for r in rows)  # the random model predicts some, not all, foreground
    out2 = tmp_path / "eval2"
    assert main(["evaluate", "--pred", str(preds), "--ref", str(data / "masks"), "--out", str(out2),
                 "--progress", "none"]) == 0
    rows2 = list(csv.DictReader(open(out2 / "per_case.csv")))
    for a, b in zip(rows, rows2):
        assert (a["dice"], a["iou"], a["hd"], a["accuracy"]) == (b["dice"], b["iou"], b["hd"], b["accuracy"])
    # Predictions saved over the references they are compared with: refused, the references kept.
    before = {p.name: p.read_bytes() for p in (data / "masks").iterdir()}
    assert main(["evaluate", "--model", str(path), "--data", str(data), "--out", str(tmp_path / "eval3"),
                 "--save-predictions", str(data / "masks"), "--progress", "none"]) == 2
    assert "is a file of the dataset being evaluated; give --save-predictions a folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (data / "masks").iterdir()} == before


@pytest.mark.slow  # whole volumes through the pipeline; CI runs it (-m slow)
def test_model_on_cbct_volumes_through_the_inference_pipeline(tmp_path):
    """The bundled demo model (real trained weights) on labelled phantom volumes: metrics in mm on the input grid,
    equal to evaluating the saved predictions against the FDI label maps (every tooth label is the class
    "tooth"); the predictions are real segmentations, not two empty masks that agree."""
    from ldfsam.data.phantom import make_phantom
    from ldfsam.models import resolve_model

    data = tmp_path / "cbct"
    labels = tmp_path / "labels"
    data.mkdir()
    labels.mkdir()
    for i in range(2):
        # The demo model's own scale (0.4 mm, 160 voxels across), a few slices through the tooth rows.
        image, lab = make_phantom(shape=(10, 160, 160), spacing=(0.4, 0.4, 0.6), seed=i, teeth_fraction=1.0)
        sitk.WriteImage(image, str(data / f"p{i}.nii.gz"))
        sitk.WriteImage(lab, str(data / f"p{i}_label.nii.gz"))
        sitk.WriteImage(lab, str(labels / f"p{i}.nii.gz"))
    path = resolve_model(None)
    out, preds = tmp_path / "eval", tmp_path / "preds"
    assert main(["evaluate", "--model", str(path), "--data", str(data), "--out", str(out), "--save-predictions",
                 str(preds), "--progress", "none"]) == 0
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["case_id"] for r in rows] == ["p0", "p1"]
    saved = sitk.ReadImage(str(preds / "p0.nii.gz"))
    assert saved.GetSpacing() == pytest.approx((0.4, 0.4, 0.6)) and saved.GetSize() == (160, 160, 10)
    for r in rows:
        assert int(r["pred_voxels"]) > 1000 and float(r["dice"]) > 0.7, r
    out2 = tmp_path / "eval2"
    assert main(["evaluate", "--pred", str(preds), "--ref", str(labels), "--out", str(out2), "--progress",
                 "none"]) == 0
    rows2 = list(csv.DictReader(open(out2 / "per_case.csv")))
    for a, b in zip(rows, rows2):
        assert (a["dice"], a["hd"], a["assd"], a["so"]) == (b["dice"], b["hd"], b["assd"], b["so"])
    assert int(rows[0]["ref_voxels"]) == int((sitk.GetArrayFromImage(sitk.ReadImage(str(labels / "p0.nii.gz")))
                                              > 0).sum())
