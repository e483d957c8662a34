"""2D images and masks (one reader for training, preparation and evaluation): real Kvasir-SEG files, whole and
cut short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldfsam.data.images import read_label_image, read_mask_image, read_rgb, write_label_png
from ldfsam.errors import InputError

CASE = "cju0qkwl35piu0993l0dewei2.jpg"


@pytest.fixture(scope="module")
def kvasir(data_dir) -> Path:
    return data_dir / "kvasir-seg"


def test_kvasir_image_and_jpeg_mask(kvasir, tmp_path):
    image = read_rgb(kvasir / "images" / CASE)
    mask = read_mask_image(kvasir / "masks" / CASE)
    assert image.dtype == np.uint8 and image.shape == (*mask.shape, 3)
    assert 0 < mask.mean() < 1  # both polyp and background, JPEG noise thresholded away
    # The same mask as 0/1 PNG reads the same; as labels it is class 1.
    write_label_png(tmp_path / "m.png", mask.astype(np.uint8))
    np.testing.assert_array_equal(read_mask_image(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(read_label_image(tmp_path / "m.png"), mask.astype(np.int32))
    np.testing.assert_array_equal(read_label_image(kvasir / "masks" / CASE), mask.astype(np.int32))


@pytest.mark.parametrize("folder, reader, what", [("images", read_rgb, "an image"),
                                                  ("masks", read_mask_image, "a mask image")])
def test_image_cut_short_is_refused(kvasir, tmp_path, folder, reader, what):
    data = (kvasir / folder / CASE).read_bytes()
    cut = tmp_path / CASE
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as e:
        reader(cut)
    assert str(cut) in str(e.value) and f"cannot be read as {what}" in str(e.value)


def test_png_cut_short_is_refused(tmp_path):
    path = tmp_path / "labels.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 4, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot be read as a mask image"):
        read_label_image(path)
