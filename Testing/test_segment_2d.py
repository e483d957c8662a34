"""Segmenting a 2D image with a one-class lite model (``ldfsam.infer.image_2d.segment_2d``, ``ldfsam segment
IMAGE.png -o MASK.png``), with the test-time flips and refinement pass evaluation measures: the mask is the one
``ldfsam evaluate`` scores for the same options; flips change it; a volume, a box model or a tooth model refuse
flips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_evaluate_flips import _kvasir_pair
from test_model_lite import lite_home, lite_model  # noqa: F401 - lite_home is a fixture

from ldfsam.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds_model(lite_home, tmp_path_factory):  # noqa: F811
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig

    path = tmp_path_factory.mktemp("model") / "ds.safetensors"
    model = lite_model("dense+sparse", classes=("polyp",), yolo=256)
    save_checkpoint(path, model, model.cfg, PreprocessConfig(sam_size=256, yolo_size=256, class_names=["polyp"]))
    return path


def _read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


# The untrained prompt heads answer logits of about -27..-15 on the test image: at this probability threshold the mask
# is a real part of the image, so the flips' averaging shows.
THRESHOLD = 1e-9


def test_the_mask_is_the_one_evaluation_scores_and_flips_change_it(ds_model, data_dir, tmp_path):
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.infer.image_2d import segment_2d

    data = _kvasir_pair(data_dir, tmp_path)
    image = next((data / "images").iterdir())
    masks = {}
    for flips in ("none", "hv"):
        out = tmp_path / f"mask-{flips}.png"
        masks[flips] = segment_2d(image, out, model=str(ds_model), flips=flips, precision="fp32", threshold=THRESHOLD)
        written = _read_png(out)
        assert written.shape == masks[flips].shape and set(np.unique(written)) <= {0, 255}
        assert np.array_equal(written == 255, masks[flips])
        assert 0.05 < masks[flips].mean() < 0.95
    evaluate_model(str(ds_model), data, flips="hv", precision="fp32", threshold=THRESHOLD, save_dir=tmp_path / "ev")
    scored = _read_png(tmp_path / "ev" / f"{image.stem}.png")
    assert np.array_equal(scored == 1, masks["hv"])
    assert (masks["none"] != masks["hv"]).mean() > 0.001  # four passes averaged: another mask
    with pytest.raises(Exception, match="exists"):
        segment_2d(image, tmp_path / "mask-none.png", model=str(ds_model))


def test_flips_are_refused_by_a_box_model_and_a_tooth_model(lite_home, data_dir, tmp_path):  # noqa: F811
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.infer.image_2d import segment_2d

    image = next((_kvasir_pair(data_dir, tmp_path) / "images").iterdir())
    box = lite_model("zero-shot", classes=("polyp",), yolo=256)
    box_path = tmp_path / "box.safetensors"
    save_checkpoint(box_path, box, box.cfg, PreprocessConfig(sam_size=256, yolo_size=256, class_names=["polyp"]))
    with pytest.raises(InputError, match="flips need a lite feature-prompt"):
        segment_2d(image, None, model=str(box_path), flips="h")
    teeth = lite_model("dense+sparse", classes=("tooth 11", "tooth 21"), yolo=256)
    teeth_path = tmp_path / "teeth.safetensors"
    save_checkpoint(teeth_path, teeth, teeth.cfg,
                    PreprocessConfig(sam_size=256, yolo_size=256, class_names=["tooth 11", "tooth 21"]))
    with pytest.raises(InputError, match="one-class lite model"):
        segment_2d(image, None, model=str(teeth_path))


@pytest.mark.slow  # two subprocesses that load torch and a lite model
def test_the_command_segments_an_image_and_refuses_flips_of_a_volume(ds_model, lite_home, data_dir,  # noqa: F811
                                                                     tmp_path):
    from ldfsam.evaluate.model_eval import evaluate_model

    data = _kvasir_pair(data_dir, tmp_path)
    image = next((data / "images").iterdir())
    env = {**os.environ, "LDFSAM_HOME": str(lite_home), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(image), "-o", str(out), "--model",
                           str(ds_model), "--flips", "h", "--precision", "fp32", "--threshold", str(THRESHOLD),
                           "--progress", "none"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "flips h" in proc.stdout
    evaluate_model(str(ds_model), data, flips="h", precision="fp32", threshold=THRESHOLD, save_dir=tmp_path / "ev")
    # The evaluation reads the image's embeddings cached by the first test (stored as float16): a few pixels at the
    # threshold may differ.
    assert ((_read_png(out) == 255) != (_read_png(tmp_path / "ev" / f"{image.stem}.png") == 1)).mean() < 1e-3
    volume = tmp_path / "v.nii.gz"
    volume.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(volume), "-o", str(tmp_path / "v.seg.nrrd"),
                           "--flips", "hv", "--progress", "none"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode != 0 and "applies to 2D images" in proc.stderr
