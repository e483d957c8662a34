"""Preprocessing: resampling with geometry, back onto the input grid, slices, intensity window, model inputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ldfsam.data.config import PreprocessConfig
from ldfsam.data.phantom import make_phantom
from ldfsam.data.preprocess import (
    Grid,
    dequantize,
    intensity_window,
    logits_to_slice,
    normalize,
    one_hot,
    prepare_labels,
    prepare_volume,
    quantize,
    resample_like,
    resample_to_spacing,
    resize_class_map,
    slice_axis,
    to_model_input,
)
from ldfsam.data.volume import read_volume, same_grid


def test_headsq_resampled_and_sliced_with_the_right_geometry(data_dir):
    image = read_volume(data_dir / "ct-headsq" / "headsq.nii.gz")  # 3.2 x 3.2 x 1.5 mm, 64x64x93
    prepared = prepare_volume(image, PreprocessConfig(target_spacing=1.0))
    assert prepared.grid.spacing == (1.0, 1.0, 1.0)
    assert prepared.grid.size == (205, 205, 140)  # 64*3.2=204.8, 93*1.5=139.5
    assert prepared.grid.origin == image.GetOrigin() and prepared.grid.direction == image.GetDirection()
    assert prepared.array.dtype == np.float32 and prepared.array.shape == (140, 205, 205)
    assert prepared.array.min() >= 0.0 and prepared.array.max() <= 1.0
    assert slice_axis(image) == "S"
    # Slice k lies at physical z = origin + k * spacing: compare one slice with SimpleITK sampling at that height.
    k = 60
    ref = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), prepared.grid.reference(),
                                               sitk.Transform(), sitk.sitkLinear))[k]
    lo, hi = prepared.window
    assert np.allclose(prepared.array[k], np.clip((ref - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_stanford_jaw_resampled_to_isotropic(data_dir):
    image = read_volume(data_dir / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")  # 1 x 1 x 2 mm
    prepared = prepare_volume(image, PreprocessConfig(target_spacing=1.0))
    assert prepared.grid.size == (256, 256, 106)
    assert prepared.num_slices == 106
    # The tooth rows (slices 5-30 of the crop) hold the brightest voxels: enamel and metal, on crop slices 12-24
    # (24-49 at 1 mm) at the file's largest value.
    brightest = prepared.array.reshape(106, -1).max(axis=1)
    assert brightest[24:50].min() == pytest.approx(1.0)
    # The spacing of the paper (default 0.25 mm) is honoured on a small crop.
    crop = image[100:140, 100:140, 20:30]
    fine = prepare_volume(crop, PreprocessConfig())
    assert fine.grid.spacing == (0.25, 0.25, 0.25) and fine.grid.size == (160, 160, 80)


def test_labels_go_back_onto_the_input_grid_exactly():
    image, labels = make_phantom((16, 40, 40), spacing=0.5, seed=2)
    prepared = prepare_volume(image, PreprocessConfig(target_spacing=0.25))
    work = prepare_labels(labels, prepared)
    assert work.shape == (32, 80, 80)
    back = resample_like(prepared.grid.image(work), image, label=True)
    assert same_grid(back, image)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))


def test_oblique_geometry_kept_through_resampling():
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # a permuted (sagittally stored) volume
    image, _ = make_phantom((16, 32, 32), spacing=0.5, direction=direction, origin=(5, 6, 7))
    out = resample_to_spacing(image, 0.25)
    assert out.GetDirection() == direction and out.GetOrigin() == (5.0, 6.0, 7.0)
    assert slice_axis(image) == "L"  # the third index axis runs left-right: a sagittal stack


def test_no_resampling_when_already_at_target():
    image, _ = make_phantom((16, 32, 32), spacing=0.25)
    assert resample_to_spacing(image, 0.25) is image
    assert resample_to_spacing(image, None) is image


def test_percentile_and_fixed_windows():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, (60, 60, 60)).astype(np.float32)
    lo, hi = intensity_window(a, PreprocessConfig(window_percentiles=(1, 99)))
    assert lo == pytest.approx(np.percentile(a, 1), abs=0.5)
    assert hi == pytest.approx(np.percentile(a, 99), abs=0.5)
    big = rng.normal(0, 1, (200, 120, 120)).astype(np.float32)  # subsampled estimate on a big volume
    lo, hi = intensity_window(big, PreprocessConfig())
    assert lo == pytest.approx(np.percentile(big, 0.5), abs=0.05)
    assert hi == pytest.approx(np.percentile(big, 99.5), abs=0.05)
    assert intensity_window(a, PreprocessConfig(fixed_window=(0.0, 200.0))) == (0.0, 200.0)
    with pytest.raises(ValueError):
        intensity_window(a, PreprocessConfig(fixed_window=(5.0, 5.0)))
    n = normalize(np.array([-10.0, 0.0, 50.0, 100.0, 300.0]), (0.0, 100.0))
    assert n.dtype == np.float32 and np.allclose(n, [0, 0, 0.5, 1, 1])


def test_quantize_round_trip():
    x = np.random.default_rng(1).random((7, 11, 13), dtype=np.float32)
    q = quantize(x)
    assert q.dtype == np.uint8
    assert np.abs(dequantize(q) - x).max() <= 0.5 / 255 + 1e-6


def test_model_inputs_shapes_and_ranges():
    grey = np.random.default_rng(0).random((2, 100, 80), dtype=np.float32)
    sam = to_model_input(grey, 256)
    yolo = to_model_input(grey, 640)
    assert sam.shape == (2, 3, 256, 256) and yolo.shape == (2, 3, 640, 640)
    assert sam.dtype == torch.float32 and sam.min() >= 0 and sam.max() <= 1
    assert torch.equal(sam[:, 0], sam[:, 1]) and torch.equal(sam[:, 0], sam[:, 2])
    colour = (np.random.default_rng(0).random((1, 50, 60, 3)) * 255).astype(np.uint8)
    c = to_model_input(colour, 32)
    assert c.shape == (1, 3, 32, 32) and not torch.equal(c[:, 0], c[:, 1])
    same = to_model_input(grey[:, :64, :64], 64)
    assert torch.allclose(same[:, 0], torch.from_numpy(grey[:, :64, :64]))


def test_class_maps_and_one_hot():
    cm = np.zeros((1, 8, 8), np.uint8)
    cm[0, 2:4, 2:6] = 1
    cm[0, 6, 6] = 2
    up = resize_class_map(cm, 16)
    assert up.shape == (1, 16, 16) and set(up.unique().tolist()) == {0, 1, 2}
    assert int((up == 1).sum()) == 4 * 8 and int((up == 2).sum()) == 4  # 2x upscale: each pixel becomes 4
    oh = one_hot(up[0], 2)
    assert oh.shape == (2, 16, 16) and oh.dtype == torch.float32
    assert torch.equal(oh[0], (up[0] == 1).float()) and torch.equal(oh[1], (up[0] == 2).float())
    logits = torch.zeros(1, 2, 16, 16)
    assert logits_to_slice(logits, 40, 30).shape == (1, 2, 40, 30)


def test_grid_image_checks_shape():
    g = Grid((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert g.shape == (6, 5, 4)
    with pytest.raises(ValueError):
        g.image(np.zeros((4, 5, 6), np.uint8))


def test_a_cropped_grid_puts_a_block_on_the_same_voxels():
    image = sitk.Image([12, 10, 8], sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.7, 1.3))
    image.SetOrigin((10.0, -4.0, 2.5))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))  # oblique: the origin shift must follow it
    array = np.zeros((8, 10, 12), np.uint8)
    array[2:5, 3:7, 4:11] = 1
    start = (2, 3, 4)
    block = array[2:5, 3:7, 4:11]
    crop = Grid.of(image).crop(start, block.shape)
    assert crop.shape == block.shape
    back = sitk.Resample(crop.image(block), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert crop.origin == pytest.approx(image.TransformIndexToPhysicalPoint((4, 3, 2)))
