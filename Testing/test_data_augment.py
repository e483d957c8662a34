"""CBCT-realism augmentations: each does what it says on a small phantom, labels stay aligned, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ldfsam.data.augment import AugmentConfig, augment_phantom, grey_reference
from ldfsam.data.phantom import DENTINE, ENAMEL, SOFT, make_phantom
from ldfsam.errors import ConfigError

SPACING = (0.4, 0.4, 0.4)


@pytest.fixture(scope="module")
def clean():
    """A noise-free phantom (z, y, x) and its FDI labels: flat regions are exactly flat."""
    image, labels = make_phantom((40, 96, 96), spacing=0.4, seed=3, noise=0.0, fillings=0, teeth_fraction=0.5)
    return sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(labels)


def only(name: str, **values) -> AugmentConfig:
    """A config with just augmentation ``name`` on (probability 1) and the given fixed strengths."""
    cfg = AugmentConfig.none()
    aug = getattr(cfg, name)
    aug.p = 1.0
    for k, v in values.items():
        setattr(aug, k, v)
    return cfg


def run(clean, cfg: AugmentConfig, seed: int = 0):
    image, labels = clean
    return augment_phantom(image, labels, SPACING, np.random.default_rng(seed), cfg)


def flat_soft_tissue(image: np.ndarray) -> np.ndarray:
    """Soft tissue at least 3 voxels from any other tissue: flat in the clean phantom."""
    return ndimage.binary_erosion(image == SOFT, iterations=3)


def test_none_is_the_identity(clean):
    out = run(clean, AugmentConfig.none())
    assert np.array_equal(out.image, clean[0]) and np.array_equal(out.labels, clean[1])
    assert out.applied == {}


@pytest.mark.parametrize("correlation", [0.0, 1.0])
def test_noise_raises_the_std_of_flat_regions_by_sigma(clean, correlation):
    _, contrast = grey_reference(clean[0])
    flat = flat_soft_tissue(clean[0])
    assert flat.sum() > 10000
    out = run(clean, only("noise", sigma=(0.04, 0.04), correlation=(correlation, correlation), poisson=(0.0, 0.0)))
    measured = out.image[flat].std() / contrast
    assert measured == pytest.approx(0.04, rel=0.1)
    assert np.array_equal(out.labels, clean[1])


def test_poisson_like_noise_is_stronger_in_bright_tissue(clean):
    out = run(clean, only("noise", sigma=(0.04, 0.04), correlation=(0.0, 0.0), poisson=(0.9, 0.9)))
    diff = out.image - clean[0]
    air = clean[0] < -900
    teeth = ndimage.binary_erosion(clean[1] > 0) & (clean[0] > DENTINE - 50)
    assert diff[teeth].std() > 2 * diff[air].std()


def test_blur_lowers_edge_gradients_and_keeps_labels(clean):
    image, labels = clean
    edges = ndimage.binary_dilation(labels > 0) & ~ndimage.binary_erosion(labels > 0)

    def gradient(a):
        return np.hypot(*np.gradient(a, axis=(1, 2)))[edges].mean()

    out = run(clean, only("blur", sigma_xy=(1.0, 1.0), sigma_z=(1.0, 1.0)))
    assert gradient(out.image) < 0.75 * gradient(image)
    assert out.image.mean() == pytest.approx(image.mean(), rel=0.02)
    assert np.array_equal(out.labels, labels)


def test_metal_is_brighter_than_enamel_inside_teeth_with_streaks_outside(clean):
    image, labels = clean
    out = run(clean, only("metal", count=(2, 2), grey=(2.0, 2.0), streak=(0.4, 0.4), implant_p=0.0))
    assert np.array_equal(out.labels, labels)
    grey = out.applied["metal"]["grey"]
    hot = out.image == grey
    assert grey > ENAMEL + 1000 and hot.sum() >= 4 and not (image > ENAMEL).any()
    assert np.all(labels[hot] > 0), "metal outside a tooth"
    assert len({int(v) for v in labels[hot]}) == 2 == len(out.applied["metal"]["objects"])
    _, contrast = grey_reference(image)
    changed = np.abs(out.image - image) > 0.05 * contrast
    metal_slices = np.nonzero(hot.any(axis=(1, 2)))[0]
    far = ~ndimage.binary_dilation(hot, iterations=4)
    # Streaks: changes in the metal's slices away from the metal; none in the other slices.
    assert (changed & far)[metal_slices].sum() > 200
    others = np.setdiff1d(np.arange(image.shape[0]), metal_slices)
    assert not changed[others].any()


def test_beam_hardening_cups_the_head_centre(clean):
    image, labels = clean
    _, contrast = grey_reference(image)
    out = run(clean, only("beam_hardening", cupping=(0.1, 0.1), bands=(0.0, 0.0)))
    drop = (image - out.image)[0]
    head = image[0] > -500
    depth = ndimage.distance_transform_edt(head)
    centre, rim = drop[depth > 0.9 * depth.max()].mean(), drop[head & (depth <= 2)].mean()
    assert centre == pytest.approx(0.1 * contrast, rel=0.1)
    assert rim < 0.5 * centre
    assert np.all(drop[~ndimage.binary_dilation(head, iterations=2)] == 0)


def test_contrast_keeps_the_tissue_order(clean):
    image, labels = clean
    tissues = [image < -900, (image > 0) & (image < 100), (labels > 0) & (np.abs(image - DENTINE) < 1),
               (labels > 0) & (np.abs(image - ENAMEL) < 1)]
    for seed in range(4):
        out = run(clean, only("contrast", gamma=(0.7, 1.5), jitter=0.35), seed=seed)
        means = [out.image[t].mean() for t in tissues]
        assert means == sorted(means) and not np.allclose(out.image, image)


def test_texture_varies_the_tissues_only(clean):
    image, labels = clean
    air, contrast = grey_reference(image)
    out = run(clean, only("texture", amplitude=(0.03, 0.03), scale=(4.0, 4.0)))
    diff = out.image - image
    body = image > air + 0.15 * contrast
    assert np.all(diff[~body] == 0)
    assert diff[body].std() / contrast == pytest.approx(0.03, rel=0.25)
    # Smooth: neighbouring voxels change alike.
    assert np.abs(np.diff(diff, axis=2))[body[:, :, 1:] & body[:, :, :-1]].mean() < 0.3 * diff[body].std()


def test_clutter_draws_arcs_in_the_air_behind_the_head(clean):
    image, labels = clean
    air, contrast = grey_reference(image)
    out = run(clean, only("clutter", count=(3, 3), grey=(0.6, 0.6)))
    changed = np.abs(out.image - image) > 0.1 * contrast
    assert out.applied["clutter"]["pixels"] > 50 and changed.any()
    assert np.array_equal(out.labels, labels)
    assert not (changed & (image > air + 0.15 * contrast)).any()  # never on the head
    ys = np.nonzero(changed)[1]
    head_ys = np.nonzero(image > air + 0.15 * contrast)[1]
    assert np.median(ys) > np.median(head_ys)  # behind it (posterior is high y)


def test_fov_mask_sets_the_outside_of_a_cylinder_to_a_constant(clean):
    image, labels = clean
    out = run(clean, only("fov", radius=(0.6, 0.6), below_air=(0.1, 0.1)))
    yy, xx = np.mgrid[0:96, 0:96]
    outside = (yy - 47.5) ** 2 + (xx - 47.5) ** 2 > (0.6 * 48) ** 2
    value = out.applied["fov"]["value"]
    assert np.all(out.image[:, outside] == value) and value < image.min()
    assert np.array_equal(out.image[:, ~outside], image[:, ~outside])
    assert not out.labels[:, outside].any() and labels[:, outside].any()  # teeth outside the FOV are gone
    assert np.array_equal(out.labels[:, ~outside], labels[:, ~outside])


def test_intensity_scale_and_offset_are_linear(clean):
    image, _ = clean
    out = run(clean, only("intensity", scale=(1.5, 1.5), offset=(300.0, 300.0)))
    np.testing.assert_allclose(out.image, 1.5 * image + 300.0, rtol=1e-6, atol=1e-2)


def tooth_mean(out) -> float:
    return float(out.image[out.labels > 0].mean())


@pytest.mark.parametrize("scale", [0.5, 1.1])
def test_zoom_keeps_labels_on_the_teeth(clean, scale):
    image, labels = clean
    before = float(image[labels > 0].mean())
    out = run(clean, only("zoom", scale=(scale, scale), shift=0.1))
    assert out.image.shape == image.shape
    assert DENTINE - 250 < tooth_mean(out) and abs(tooth_mean(out) - before) < 150
    ratio = np.count_nonzero(out.labels) / np.count_nonzero(labels)
    assert ratio == pytest.approx(scale ** 2, rel=0.15)
    if scale < 1:  # the field of view around the smaller head is air
        assert np.all(out.image[:, :3, :] == out.image.min())


def test_rotation_turns_image_and_labels_together(clean):
    image, labels = clean
    out = run(clean, only("rotate", yaw=(90.0, 90.0), pitch=(0.0, 0.0), roll=(0.0, 0.0)))
    turned = [k for k in (1, 3) if np.array_equal(out.labels, np.rot90(labels, k, axes=(1, 2)))]
    assert len(turned) == 1
    np.testing.assert_allclose(out.image, np.rot90(image, turned[0], axes=(1, 2)), atol=1e-2)
    for angles in ((0.0, 10.0, 0.0), (12.0, -8.0, 5.0)):
        yaw, pitch, roll = ((a, a) for a in angles)
        out = run(clean, only("rotate", yaw=yaw, pitch=pitch, roll=roll))
        assert DENTINE - 250 < tooth_mean(out)
        assert np.count_nonzero(out.labels) == pytest.approx(np.count_nonzero(labels), rel=0.1)
        assert not np.array_equal(out.labels, labels)
    # A tilt of the occlusal plane spreads the tooth rows over more slices.
    tilted = run(clean, only("rotate", yaw=(0.0, 0.0), pitch=(15.0, 15.0), roll=(0.0, 0.0)))
    assert tilted.labels.any(axis=(1, 2)).sum() > labels.any(axis=(1, 2)).sum()


def test_crop_and_truncation_keep_labels_on_the_teeth(clean):
    image, labels = clean
    out = run(clean, only("crop", keep=(0.7, 0.7)))
    assert out.image.shape == tuple(round(0.7 * n) for n in image.shape) == out.labels.shape
    box = tuple(slice(a, b) for a, b in out.applied["crop"]["box"])
    assert np.array_equal(out.image, image[box]) and np.array_equal(out.labels, labels[box])
    touched = 0
    for seed in range(6):
        out = run(clean, only("truncate", depth=(0.2, 0.3)), seed=seed)
        assert DENTINE - 250 < tooth_mean(out)
        t = out.labels.any(axis=0)
        touched += bool(t[0].any() or t[-1].any() or t[:, 0].any() or t[:, -1].any())
    assert touched == 6, "truncation leaves teeth touching the border"


def test_deterministic_for_a_seed(clean):
    a, b, c = (run(clean, AugmentConfig(), seed=s) for s in (11, 11, 12))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.applied == b.applied
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_default_pipeline_keeps_labels_valid(clean):
    image, labels = clean
    for seed in range(5):
        out = run(clean, AugmentConfig(), seed=seed)
        assert out.labels.shape == out.image.shape and out.labels.dtype == labels.dtype
        assert set(np.unique(out.labels)) <= set(np.unique(labels))
        assert np.isfinite(out.image).all()


def test_beam_hardening_darkens_between_dense_structures(clean):
    image, labels = clean
    air, contrast = grey_reference(image)
    out = run(clean, only("beam_hardening", cupping=(0.0, 0.0), bands=(0.15, 0.15)))
    drop = image - out.image
    dense = image > air + 0.7 * contrast
    z = int(np.argmax(dense.sum(axis=(1, 2))))  # the slice with the most bone and teeth
    row = int(np.argmax(dense[z].sum(axis=1)))
    xs = np.nonzero(dense[z, row])[0]
    between = ~dense[z, row, xs[0]:xs[-1] + 1]
    assert between.any() and drop[z, row, xs[0]:xs[-1] + 1][between].max() > 0.05 * contrast
    assert np.all(drop[z, row, :xs[0]] == 0) and np.all(drop[z, row, xs[-1] + 1:] == 0)
    assert np.all(drop[dense] == 0)


def test_slices_without_teeth_are_fine(clean):
    image, labels = clean
    empty = np.zeros_like(labels)
    cfg = AugmentConfig()
    cfg.metal.p = cfg.truncate.p = 1.0
    out = augment_phantom(image, empty, SPACING, np.random.default_rng(0), cfg)
    assert not out.labels.any() and out.applied["metal"]["objects"] == [] and "truncate" not in out.applied


@pytest.mark.parametrize("field,value,message", [
    ("noise.p", 1.5, "AugmentConfig.noise.p must be a probability"),
    ("blur.sigma_xy", (2.0, 1.0), "AugmentConfig.blur.sigma_xy must be a range"),
    ("zoom.scale", (0.0, 1.0), "AugmentConfig.zoom.scale must lie in"),
    ("crop.keep", (0.5, 1.2), "AugmentConfig.crop.keep must lie in"),
])
def test_bad_config_names_the_field(clean, field, value, message):
    cfg = AugmentConfig()
    group, key = field.split(".")
    setattr(getattr(cfg, group), key, value)
    with pytest.raises(ConfigError, match=message):
        run(clean, cfg)


def test_bad_arguments_are_named(clean):
    image, labels = clean
    with pytest.raises(ValueError, match="one shape"):
        augment_phantom(image, labels[:-1], SPACING, np.random.default_rng(0))
    with pytest.raises(ValueError, match="spacing"):
        augment_phantom(image, labels, (0.4, 0.4), np.random.default_rng(0))
