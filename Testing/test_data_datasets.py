"""Dataset layouts (3D and 2D, incl. real Kvasir-SEG), the case cache, slice dataset, YOLO export, budgets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

import ldfsam.data.cache as cache_mod
from ldfsam.data.cache import build_case, case_key
from ldfsam.data.config import PreprocessConfig
from ldfsam.data.layouts import Case, detect_kind, find_image_cases, find_volume_cases
from ldfsam.data.phantom import make_phantom, write_phantom_dataset
from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
from ldfsam.data.slices import SliceDataset
from ldfsam.data.volume import write_dicom_series, write_label_volume, write_volume
from ldfsam.errors import InputError

SMALL = PreprocessConfig(target_spacing=None, sam_size=32, yolo_size=64)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- layouts -----------------------------------------------------------------------------------------------------


def test_nnunet_layout(tmp_path):
    for cid in ("b", "a"):
        _touch(tmp_path / "imagesTr" / f"{cid}_0000.nii.gz")
        _touch(tmp_path / "labelsTr" / f"{cid}.nii.gz")
    _touch(tmp_path / "imagesTr" / "a_0001.nii.gz")  # a second channel: not used
    _touch(tmp_path / "imagesTr" / "c_0000.nii.gz")  # no label
    _touch(tmp_path / "imagesTs" / "t_0000.nii.gz")
    found = find_volume_cases(tmp_path)
    assert found.layout == "nnunet"
    assert [(c.case_id, c.label is not None) for c in found.cases] == [("a", True), ("b", True), ("t", False)]
    reasons = {Path(p).name: r for p, r in found.skipped}
    assert "channel" in reasons["a_0001.nii.gz"] and "no label" in reasons["c_0000.nii.gz"]


def test_images_labels_and_flat_layouts(tmp_path):
    d = tmp_path / "il"
    _touch(d / "images" / "p1.nrrd")
    _touch(d / "labels" / "p1_label.nrrd")
    _touch(d / "images" / "p2.mha")
    _touch(d / "labels" / "p2.mha")
    found = find_volume_cases(d)
    assert found.layout == "images+labels"
    assert [(c.case_id, c.label.name) for c in found.cases] == [("p1", "p1_label.nrrd"), ("p2", "p2.mha")]

    f = tmp_path / "flat"
    _touch(f / "X.nii.gz")
    _touch(f / "X_label.nii.gz")
    _touch(f / "Y.nrrd")
    _touch(f / "Y.seg.nrrd")
    _touch(f / "Z.mha")
    _touch(f / "Z-label.mha")
    _touch(f / "lonely_label.nii.gz")
    _touch(f / "notes.txt")
    found = find_volume_cases(f)
    assert found.layout == "flat"
    assert [(c.case_id, c.image.name, c.label.name) for c in found.cases] == [
        ("X", "X.nii.gz", "X_label.nii.gz"), ("Y", "Y.nrrd", "Y.seg.nrrd"), ("Z", "Z.mha", "Z-label.mha")]
    assert [Path(p).name for p, _ in found.skipped] == ["lonely_label.nii.gz"]


def test_dicom_folder_case_and_duplicates(tmp_path):
    image, labels = make_phantom((8, 24, 24), seed=0)
    write_dicom_series(image, tmp_path / "scan1")
    write_label_volume(labels, image, tmp_path / "scan1.seg.nrrd")
    found = find_volume_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label.name) for c in found.cases] == [("scan1", "scan1", "scan1.seg.nrrd")]
    assert detect_kind(tmp_path) == "3d"
    dup = tmp_path / "dup"
    _touch(dup / "images" / "a.nii.gz")
    _touch(dup / "images" / "a.nrrd")
    _touch(dup / "labels" / "a.nii.gz")
    with pytest.raises(InputError, match="share the case name 'a'"):
        find_volume_cases(dup)


def test_2d_isic_and_mmotu_naming(tmp_path):
    isic = tmp_path / "isic"
    _touch(isic / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg")
    _touch(isic / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg")
    _touch(isic / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png")
    found = find_image_cases(isic)
    assert found.layout == "isic"
    assert [(c.case_id, c.label.name) for c in found.cases] == [("ISIC_0000000", "ISIC_0000000_segmentation.png")]
    assert [Path(p).name for p, _ in found.skipped] == ["ISIC_0000001.jpg"]
    mmotu = tmp_path / "OTU_2d"
    _touch(mmotu / "images" / "1.JPG")
    _touch(mmotu / "annotations" / "1.PNG")  # colour-coded tumour class
    _touch(mmotu / "annotations" / "1_binary.PNG")  # the binary mask: preferred
    found = find_image_cases(mmotu)
    assert [(c.case_id, c.label.name) for c in found.cases] == [("1", "1_binary.PNG")]
    assert detect_kind(mmotu) == "2d"


@pytest.fixture()
def kvasir_subset(data_dir, tmp_path):
    """Five real Kvasir-SEG pairs, linked (not copied) into a scratch folder."""
    src = data_dir / "kvasir-seg"
    names = sorted(os.listdir(src / "images"))[:5]
    for sub in ("images", "masks"):
        (tmp_path / "kvasir" / sub).mkdir(parents=True)
        for n in names:
            os.symlink(src / sub / n, tmp_path / "kvasir" / sub / n)
    return tmp_path / "kvasir", names


def test_kvasir_read_as_a_2d_dataset(kvasir_subset, tmp_path):
    folder, names = kvasir_subset
    assert detect_kind(folder) == "2d"
    found = find_image_cases(folder)
    assert [c.case_id for c in found.cases] == [n[:-4] for n in names]
    entry = build_case(found.cases[0], SMALL, tmp_path / "cache", "2d")
    image, classes = entry.image(), entry.classes()
    with Image.open(found.cases[0].image) as im:
        w, h = im.size
    assert image.shape == (1, h, w, 3) and image.dtype == np.uint8
    with Image.open(found.cases[0].label) as m:
        expected = np.asarray(m.convert("L")) > 127  # JPEG masks thresholded at 127
    assert np.array_equal(classes[0] == 1, expected)
    assert entry.meta["num_boxes"] >= 1 and entry.teeth_slices == [0]
    ds = SliceDataset([entry], SMALL)
    item = ds[0]
    assert item["sam_image"].shape == (3, 32, 32) and item["yolo_image"].shape == (3, 64, 64)
    assert not torch.equal(item["sam_image"][0], item["sam_image"][1])  # colour kept
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_kvasir_prepared_for_both_phases(kvasir_subset, tmp_path):
    folder, names = kvasir_subset
    manifest = prepare_dataset(folder, tmp_path / "out", SMALL, PrepareOptions(test_count=1))
    assert manifest["kind"] == "2d" and manifest["layout"] == "images+masks"
    assert manifest["preprocess"]["target_spacing"] is None  # no resampling for 2D images
    s = manifest["summary"]
    assert (s["cases"], s["train"], s["val"], s["test"], s["slices"]) == (5, 3, 1, 1, 5)
    prepared = PreparedData(tmp_path / "out")
    data_yaml = prepared.yolo_data_yaml()
    pngs = sorted((data_yaml.parent / "images" / "train").glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    rows = np.loadtxt(data_yaml.parent / "labels" / "train" / (pngs[0].stem + ".txt"), ndmin=2)
    assert rows.shape[1] == 5 and (rows[:, 1:] > 0).all() and (rows[:, 1:] <= 1).all()


def test_2d_mask_size_mismatch_is_an_error(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="mask size 30x10 differs"):
        build_case(Case("i", tmp_path / "i.png", tmp_path / "m.png"), SMALL, tmp_path / "c", "2d")
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "c").iterdir())


# -- cache -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def phantom_folder(tmp_path):
    write_phantom_dataset(tmp_path / "ds", cases=5, shape=(16, 48, 48), teeth_fraction=0.5)
    return tmp_path / "ds"


def _entries(root: Path):
    return sorted(p.name for p in root.iterdir())


def test_cache_reused_and_invalidated(phantom_folder, tmp_path):
    case = find_volume_cases(phantom_folder).cases[0]
    root = tmp_path / "cache"
    entry = build_case(case, SMALL, root, "3d")
    assert entry.image().dtype == np.uint8 and entry.image().shape == (16, 48, 48)
    assert entry.classes().shape == (16, 48, 48)
    stamp = (entry.path / "image.npy").stat().st_mtime_ns
    # Same input, same parameters: the entry is reused untouched.
    again = build_case(case, SMALL, root, "3d")
    assert again.path == entry.path and (again.path / "image.npy").stat().st_mtime_ns == stamp
    # Another window: a new entry replaces the old one.
    other = build_case(case, PreprocessConfig(target_spacing=None, window_percentiles=(1.0, 99.0)), root, "3d")
    assert other.path != entry.path and _entries(root) == [other.path.name]
    # The model input sizes are applied on access: they do not invalidate the cache.
    assert case_key(case, PreprocessConfig(target_spacing=None, window_percentiles=(1.0, 99.0), sam_size=64),
                    "3d") == other.path.name.split("-")[-1]
    # A changed input file (new modification time) invalidates the entry.
    later = time.time() + 5
    os.utime(case.label, (later, later))
    rebuilt = build_case(case, PreprocessConfig(target_spacing=None, window_percentiles=(1.0, 99.0)), root, "3d")
    assert rebuilt.path != other.path and _entries(root) == [rebuilt.path.name]


def test_cache_build_is_atomic_on_error_and_interrupt(phantom_folder, tmp_path, monkeypatch):
    case = find_volume_cases(phantom_folder).cases[0]
    root = tmp_path / "cache"
    calls = {"n": 0}
    real_save = np.save

    def failing_save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(cache_mod.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build_case(case, SMALL, root, "3d")
    assert _entries(root) == []  # no half-built entry, no temporary folder
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    bad = Case("bad", case.image, phantom_folder / "missing_label.nii.gz")
    with pytest.raises(InputError, match="missing_label.nii.gz"):
        build_case(bad, SMALL, root, "3d")
    assert _entries(root) == []


def test_grid_mismatch_names_the_label_file(tmp_path):
    image, labels = make_phantom((8, 24, 24), seed=0)
    write_volume(image, tmp_path / "a.nii.gz")
    shifted = sitk.Image(labels)
    shifted.SetSpacing((0.5, 0.5, 0.5))
    write_volume(shifted, tmp_path / "a_label.nii.gz")
    case = find_volume_cases(tmp_path).cases[0]
    with pytest.raises(InputError, match=r"a_label.nii.gz: label map grid .* does not match"):
        build_case(case, SMALL, tmp_path / "cache", "3d")


# -- prepared datasets: slices, YOLO, budgets ---------------------------------------------------------------------


def test_prepare_slices_yolo_and_nested_budgets(phantom_folder, tmp_path):
    out = tmp_path / "out"
    opts = PrepareOptions(test_count=1, budgets=[0.5, 1.0], empty_ratio=0.25)
    manifest = prepare_dataset(phantom_folder, out, SMALL, opts)
    s = manifest["summary"]
    assert (s["cases"], s["train"], s["val"], s["test"]) == (5, 3, 1, 1)
    assert s["slices"] == 80 and s["slices_with_foreground"] == 40
    prepared = PreparedData(out)
    assert prepared.kind == "3d" and prepared.preprocess == SMALL
    # Phase 2 items follow the contract.
    ds = prepared.slice_dataset("train")
    item = ds[0]
    assert set(item) == {"sam_image", "yolo_image", "mask", "valid", "case_id", "slice_index"}
    assert item["sam_image"].shape == (3, 32, 32) and item["yolo_image"].shape == (3, 64, 64)
    assert item["sam_image"].dtype == torch.float32 and 0 <= item["sam_image"].min() <= item["sam_image"].max() <= 1
    assert item["mask"].shape == (1, 32, 32)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["sam_image"].shape == (4, 3, 32, 32)
    # 8 tooth slices per case + 2 empty ones (25%), three training cases.
    assert len(ds) == 3 * 10
    # Budgets: the same nested cases in both phases.
    half = prepared.slice_dataset("train", 0.5)
    assert set(half.case_ids) < set(ds.case_ids) and half.case_ids == prepared.splits.budget(0.5)
    for budget in (0.5, 1.0):
        yaml_path = prepared.yolo_data_yaml(budget)
        text = yaml_path.read_text()
        assert f'path: "{yaml_path.parent}"' in text and "nc: 1" in text and '0: "tooth"' in text
        train_imgs = sorted((yaml_path.parent / "images" / "train").iterdir())
        cases = {p.name.rsplit("_", 1)[0] for p in train_imgs}
        assert cases == set(prepared.splits.budget(budget))
        assert len(train_imgs) == len(prepared.slice_dataset("train", budget))
    # YOLO boxes are the boxes of the Phase 2 masks: check one labelled slice against its mask.
    entry = prepared.entry(prepared.splits.train[0])
    z = entry.teeth_slices[len(entry.teeth_slices) // 2]
    label_file = prepared.yolo_data_yaml(1.0).parent / "labels" / "train" / f"{entry.case_id}_{z:04d}.txt"
    rows = np.loadtxt(label_file, ndmin=2)
    mask = entry.classes()[z] == 1
    ys, xs = np.nonzero(mask)
    x0 = (rows[:, 1] - rows[:, 3] / 2) * 48
    x1 = (rows[:, 1] + rows[:, 3] / 2) * 48
    assert x0.min() == pytest.approx(xs.min(), abs=1e-3) and x1.max() == pytest.approx(xs.max() + 1, abs=1e-3)
    with Image.open(label_file.parent.parent.parent / "images" / "train" / f"{entry.case_id}_{z:04d}.png") as im:
        assert im.size == (64, 64)
    # Second run: everything is reused (nothing rebuilt).
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("image.npy")}
    prepare_dataset(phantom_folder, out, SMALL, opts)
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("image.npy")} == stamps


def test_prepare_with_bad_case_stops_or_skips(phantom_folder, tmp_path):
    (phantom_folder / "phantom_002.nii.gz").write_bytes(b"broken")
    with pytest.raises(InputError, match="phantom_002.nii.gz"):
        prepare_dataset(phantom_folder, tmp_path / "out", SMALL, PrepareOptions(yolo=False))
    manifest = prepare_dataset(phantom_folder, tmp_path / "out", SMALL, PrepareOptions(yolo=False, skip_bad=True))
    assert manifest["summary"]["cases"] == 4
    assert [Path(s["file"]).name for s in manifest["skipped"]] == ["phantom_002.nii.gz"]
    assert not [p for p in (tmp_path / "out" / "cache").iterdir() if p.name.startswith(".")]


def test_prepared_folder_errors(tmp_path):
    with pytest.raises(InputError, match="run 'ldfsam prepare' first"):
        PreparedData(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no volumes"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", SMALL)
    only_images = tmp_path / "only"
    _touch(only_images / "notes.txt")
    write_volume(make_phantom((8, 24, 24))[0], only_images / "a.nii.gz")
    with pytest.raises(InputError, match="no labelled cases"):
        prepare_dataset(only_images, tmp_path / "out", SMALL)
