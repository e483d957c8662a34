"""Non-tooth anatomy in the phantom (labelled background) and the augmented training slices built from it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from ldfsam.data.augment import AugmentConfig
from ldfsam.data.config import PreprocessConfig
from ldfsam.data.phantom import CORTICAL, make_phantom
from ldfsam.data.phantom_anatomy import Anatomy
from ldfsam.data.preprocess import intensity_window, normalize, resize_class_map, to_model_input
from ldfsam.data.synthetic import PhantomSampling, augmented_phantom, prepare_slices, random_phantom, training_slices

SHAPE = (40, 96, 96)


def arrays(**kw):
    image, labels = make_phantom(SHAPE, spacing=0.4, seed=4, noise=0.0, **kw)
    return sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(labels)


@pytest.fixture(scope="module")
def plain_and_full():
    return arrays(), arrays(anatomy=Anatomy())


def test_distractor_bones_are_labelled_background(plain_and_full):
    (plain, plain_lab), (full, full_lab) = plain_and_full
    # Same teeth for the seed, whatever the anatomy; the new bones changed the image, not the labels.
    assert np.array_equal(plain_lab, full_lab)
    bone = full > CORTICAL - 100
    new_bone = bone & ~(plain > CORTICAL - 100)
    # (Only tooth edges blended with the brighter bone around them are both new bone and tooth.)
    assert new_bone.sum() > 5000 and np.count_nonzero(full_lab[new_bone]) < 0.05 * new_bone.sum()
    # The spine: bone on the midline behind the teeth from the bottom slice to the palate, but for the discs.
    ys = np.nonzero(full_lab)[1]
    behind = new_bone[:, ys.max() + 3:, 44:52]
    assert behind.any(axis=(1, 2))[:20].mean() >= 0.7
    assert not (plain[:, ys.max() + 3:, 44:52] > CORTICAL - 100).any()


def test_each_structure_can_be_switched_off(plain_and_full):
    (_, _), (full, _) = plain_and_full
    off = Anatomy(spine=False, airway=False, ramus=False, hyoid=False, skull_base=False)
    none_on, _ = arrays(anatomy=off)
    spine_only, _ = arrays(anatomy=Anatomy(airway=False, ramus=False, hyoid=False, skull_base=False))
    bright = CORTICAL - 100
    assert (spine_only > bright).sum() > (none_on > bright).sum()
    assert (full > bright).sum() > (spine_only > bright).sum()
    # The airway is air inside the head.
    assert (full[:, 30:90, 40:56] < -500).sum() > (none_on[:, 30:90, 40:56] < -500).sum()


def test_thick_bright_cortex_option():
    thin, lab = arrays(anatomy=Anatomy(False, False, False, False, False, cortex=1.2, cortical_grey=1250))
    thick, _ = arrays(anatomy=Anatomy(False, False, False, False, False, cortex=3.5, cortical_grey=1650))
    outside = lab == 0
    assert (thick[outside] > 1600).sum() > 2 * (thin[outside] > 1200).sum()


def test_bad_anatomy_is_named():
    with pytest.raises(ValueError, match="anatomy.cortex"):
        make_phantom((16, 32, 32), anatomy=Anatomy(cortex=0.0))


def test_training_slices_shapes_masks_and_boxes():
    data = training_slices(2, 64, seed=5)
    n = len(data)
    assert data.images.shape == (n, 64, 64) and data.images.dtype == np.uint8
    assert data.masks.shape == (n, 64, 64) and data.masks.dtype == bool
    assert len(data.boxes) == len(data.fdi) == n and set(data.phantom) == {0, 1}
    with_teeth = data.masks.reshape(n, -1).any(1)
    assert 0 < with_teeth.sum() < n  # slices above and below the tooth rows too
    fdi_maps = np.concatenate([resize_class_map(augmented_phantom(5 + k)[0].labels, 64).numpy() for k in range(2)])
    assert np.array_equal(fdi_maps > 0, data.masks)
    for i in range(n):
        covered = np.zeros((64, 64), bool)
        for (_, x0, y0, x1, y1), fdi in zip(data.boxes[i], data.fdi[i]):
            assert 11 <= fdi <= 48
            covered[y0:y1 + 1, x0:x1 + 1] = True
            tooth = fdi_maps[i] == fdi
            # Tight: the box's border rows and columns hold the tooth.
            assert tooth[y0, x0:x1 + 1].any() and tooth[y1, x0:x1 + 1].any()
            assert tooth[y0:y1 + 1, x0].any() and tooth[y0:y1 + 1, x1].any()
        # Every piece of a tooth has its box, but for pieces under min_pixels (4).
        for fdi in np.unique(fdi_maps[i][data.masks[i] & ~covered]):
            pieces, _ = ndimage.label((fdi_maps[i] == fdi) & ~covered, structure=np.ones((3, 3)))
            assert np.bincount(pieces.ravel())[1:].max() < 4
    rows = data.yolo()
    assert all(r.shape[1] == 5 and (r[:, 1:] >= 0).all() and (r[:, 1:] <= 1).all() for r in rows)


def test_training_slices_are_deterministic_and_per_phantom():
    a = training_slices(2, 48, seed=9)
    b = training_slices(2, 48, seed=9)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    # Phantom k depends on (seed, k) only: a shorter run is a prefix.
    c = training_slices(1, 48, seed=9)
    assert np.array_equal(c.images, a.images[:len(c)])
    d = training_slices(1, 48, seed=10)
    assert d.images.shape != c.images.shape or not np.array_equal(d.images, c.images)


def test_slices_are_preprocessed_as_the_model_input():
    image, labels, spacing = random_phantom(3, PhantomSampling(anatomy_p=1.0))
    pre = PreprocessConfig(target_spacing=None)
    data = prepare_slices(image, labels, spacing, 64, pre)
    expected = to_model_input(torch.from_numpy(normalize(image, intensity_window(image, pre))), 64)[:, 0]
    assert np.abs(data.images.astype(np.int16) - np.rint(expected.numpy() * 255).astype(np.int16)).max() <= 1
    clean = training_slices(1, 64, seed=3, sampling=PhantomSampling(anatomy_p=1.0), augment=AugmentConfig.none())
    assert np.array_equal(clean.masks.any(axis=(1, 2)), data.masks.any(axis=(1, 2)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_phantoms"):
        training_slices(0, 64)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_phantom_vs_real_script_writes_the_picture(tmp_path, data_dir):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "cmp.png"
    real = data_dir / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz"
    run = subprocess.run([sys.executable, str(repo / "scripts" / "phantom_vs_real.py"), "--real", f"{real}:20,24",
                          "--phantoms", "1", "--stats", "1", "--size", "128", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CThead_jaw_z60-112.nii.gz" in run.stdout and "phantoms, median" in run.stdout
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 100
    assert out.stat().st_size < 300_000
    bad = subprocess.run([sys.executable, str(repo / "scripts" / "phantom_vs_real.py"), "--real", f"{real}:20,999",
                          "--out", str(tmp_path / "bad.png")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "999" in bad.stderr and not (tmp_path / "bad.png").exists()
