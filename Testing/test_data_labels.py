"""Label maps onto classes (binary, DentalSegmentator, FDI ranges), unexpected values, and instance boxes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ldfsam.data.boxes import boxes_to_yolo, instance_boxes, scale_boxes
from ldfsam.data.config import PreprocessConfig
from ldfsam.data.labels import map_labels, parse_label_map
from ldfsam.data.phantom import make_phantom
from ldfsam.data.volume import read_volume
from ldfsam.errors import ConfigError, InputError


def test_binary_by_default():
    lab = np.array([[0, 1, 11], [48, 0, 3]], np.uint8)
    classes, report = map_labels(lab, PreprocessConfig())
    assert classes.tolist() == [[0, 1, 1], [1, 0, 1]]
    assert report.unexpected == {} and report.counts == {1: 1, 3: 1, 11: 1, 48: 1}


def test_dentalsegmentator_map_on_the_real_label_file(data_dir):
    path = data_dir / "dentalsegmentator-labels" / "PostDentalSurgery_Segmentation.nii.gz"
    raw = sitk.GetArrayFromImage(read_volume(path, label=True))
    cfg = PreprocessConfig(label_map=parse_label_map("dentalsegmentator"))
    classes, report = map_labels(raw, cfg, path)
    assert report.unexpected == {}
    assert np.array_equal(classes == 1, (raw == 3) | (raw == 4))  # upper + lower teeth -> tooth
    # The map written in the configuration's own words ({"3": 1, "4": 1}) reports bone/canal labels as unexpected.
    _, report = map_labels(raw, PreprocessConfig(label_map={"3": 1, "4": 1}), path)
    assert set(report.unexpected) == {1, 2, 5}
    with pytest.raises(InputError, match=r"unexpected label values 1 .*2 .*5") as e:
        map_labels(raw, PreprocessConfig(label_map={"3": 1, "4": 1}), path, strict=True)
    assert "PostDentalSurgery_Segmentation.nii.gz" in str(e.value)


def test_fdi_ranges_to_upper_and_lower_classes():
    _, labels = make_phantom((24, 64, 64), seed=0)
    raw = sitk.GetArrayViewFromImage(labels)
    cfg = PreprocessConfig(label_map=parse_label_map("11-28:1,31-48:2"), class_names=["upper", "lower"])
    classes, report = map_labels(raw, cfg)
    assert report.unexpected == {}
    assert np.array_equal(classes == 1, (raw >= 11) & (raw <= 28))
    assert np.array_equal(classes == 2, (raw >= 31) & (raw <= 48))
    fdi_binary, _ = map_labels(raw, PreprocessConfig(label_map=parse_label_map("fdi")))
    assert np.array_equal(fdi_binary == 1, raw > 0)


def test_label_map_spellings_and_errors(tmp_path):
    assert parse_label_map("3:1, 4:1") == {"3": 1, "4": 1}
    assert parse_label_map('{"3": 1}') == {"3": 1}
    f = tmp_path / "map.json"
    f.write_text('{"11-48": 1}')
    assert parse_label_map(str(f)) == {"11-48": 1}
    with pytest.raises(ConfigError):
        parse_label_map("3=1")
    with pytest.raises(ConfigError):
        parse_label_map("a-b:1")
    with pytest.raises(ConfigError, match="class"):
        map_labels(np.array([1, 2], np.uint8), PreprocessConfig(label_map={"1": 2}))
    with pytest.raises(ConfigError, match="label_map is needed"):
        map_labels(np.array([1], np.uint8), PreprocessConfig(class_names=["a", "b"]))
    with pytest.raises(InputError, match="integer"):
        map_labels(np.array([0.5]), PreprocessConfig())


# -- boxes -------------------------------------------------------------------------------------------------------


def test_tight_boxes_one_per_instance():
    m = np.zeros((10, 12), np.uint8)
    m[1:4, 2:5] = 1  # rows 1..3, cols 2..4
    m[6, 8:11] = 1  # a 1-pixel-high bar: rows 6, cols 8..10
    m[8, 0] = 1  # a single pixel
    boxes = instance_boxes(m, 1)
    assert boxes.tolist() == [[0, 2, 1, 4, 3], [0, 8, 6, 10, 6], [0, 0, 8, 0, 8]]


def test_diagonal_pixels_are_one_instance_and_classes_separate():
    m = np.zeros((6, 6), np.uint8)
    m[1, 1] = m[2, 2] = m[3, 3] = 1  # 8-connected diagonal
    m[0, 5] = 2
    boxes = instance_boxes(m, 2)
    assert boxes.tolist() == [[0, 1, 1, 3, 3], [1, 5, 0, 5, 0]]


def test_touching_teeth_split_by_their_numbers():
    cm = np.zeros((5, 8), np.uint8)
    cm[1:4, 1:7] = 1
    inst = np.zeros_like(cm)
    inst[1:4, 1:4] = 11
    inst[1:4, 4:7] = 21
    assert instance_boxes(cm, 1).tolist() == [[0, 1, 1, 6, 3]]
    assert instance_boxes(cm, 1, instances=inst).tolist() == [[0, 1, 1, 3, 3], [0, 4, 1, 6, 3]]


def test_min_pixels_and_empty():
    m = np.zeros((4, 4), np.uint8)
    assert instance_boxes(m, 1).shape == (0, 5)
    m[0, 0] = 1
    m[2:4, 2:4] = 1
    assert instance_boxes(m, 1, min_pixels=2).tolist() == [[0, 2, 2, 3, 3]]
    with pytest.raises(ValueError):
        instance_boxes(np.zeros((2, 2, 2)), 1)


def test_yolo_rows_and_scaling():
    boxes = np.array([[0, 2, 1, 4, 3]])  # 3x3 pixels at x 2..4, y 1..3 in a 10x20 (w x h) image
    row = boxes_to_yolo(boxes, width=10, height=20)[0]
    assert row.tolist() == pytest.approx([0, 3.5 / 10, 2.5 / 20, 3 / 10, 3 / 20])
    assert scale_boxes(boxes, (20, 10), (40, 40))[0].tolist() == pytest.approx([8, 2, 20, 8])


def test_phantom_boxes_cover_each_tooth_per_slice():
    _, labels = make_phantom((32, 96, 96), seed=4, teeth_fraction=0.5, missing=[18, 28, 38, 48])
    raw = sitk.GetArrayViewFromImage(labels)
    classes, _ = map_labels(raw, PreprocessConfig())
    for z in range(32):
        boxes, owner = instance_boxes(classes[z], 1, instances=raw[z], with_ids=True)
        teeth = set(np.unique(raw[z]).tolist()) - {0}
        # One box per connected piece of each tooth (a molar cut below its furcation gives one per root).
        assert set(owner.tolist()) == teeth and len(boxes) >= len(teeth)
        for fdi in teeth:
            ys, xs = np.nonzero(raw[z] == fdi)
            mine = boxes[owner == fdi]
            assert (mine[:, 1].min(), mine[:, 2].min(), mine[:, 3].max(), mine[:, 4].max()) == \
                (xs.min(), ys.min(), xs.max(), ys.max())
