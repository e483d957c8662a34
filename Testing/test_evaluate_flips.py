"""Test-time flips of ``evaluate_model`` / ``ldfsam evaluate --flips``: the logits of a 2D image averaged with those
of its flips, each flipped back, each flip encoded (and cached) as an image of its own."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_model_lite import lite_home, lite_model  # noqa: F401 - lite_home is a fixture

from ldfsam.errors import InputError
from ldfsam.infer.predict_2d import flip_mean


def test_flip_mean_flips_each_pass_back():
    sam, yolo = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    seen = []

    def decode(s, y):  # a decoder that answers its inputs' first channel plus a left-to-right ramp
        seen.append((s.clone(), y.clone()))
        return s[:, :1] + torch.arange(8.0).view(1, 1, 1, 8)

    assert torch.equal(flip_mean(decode, sam, yolo, "none"), decode(sam, yolo))
    seen.clear()
    mean = flip_mean(decode, sam, yolo, "h")
    # The image channel comes back in place; the ramp and its mirror average to its middle, 3.5.
    assert torch.allclose(mean, sam[:, :1] + 3.5)
    assert torch.equal(seen[1][0], sam.flip(-1)) and torch.equal(seen[1][1], yolo.flip(-1))
    seen.clear()
    assert torch.allclose(flip_mean(decode, sam, yolo, "hv"), sam[:, :1] + 3.5)
    assert len(seen) == 4 and torch.equal(seen[3][0], sam.flip(-2).flip(-1))
    with pytest.raises(InputError, match="flips"):
        flip_mean(decode, sam, yolo, "x")


def _kvasir_pair(data_dir, tmp_path):
    data = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    image = sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[0]
    shutil.copy(image, data / "images" / image.name)
    shutil.copy(data_dir / "kvasir-seg" / "masks" / image.name, data / "masks" / image.name)
    return data


def test_evaluation_with_flips_encodes_each_flip(lite_home, data_dir, tmp_path):  # noqa: F811
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encoder_fingerprint

    data = _kvasir_pair(data_dir, tmp_path)
    pre = PreprocessConfig(sam_size=256, yolo_size=256, class_names=["polyp"])
    model = lite_model("dense+sparse", classes=("polyp",), yolo=256)
    path = tmp_path / "ds.safetensors"
    save_checkpoint(path, model, model.cfg, pre)
    cache = EmbeddingCache(encoder_fingerprint(model), precision="fp32")
    before = set(cache.dir.glob("*.safetensors")) if cache.dir.is_dir() else set()
    plain = evaluate_model(str(path), data)
    assert len(set(cache.dir.glob("*.safetensors")) - before) == 1
    flipped = evaluate_model(str(path), data, flips="hv")
    assert len(set(cache.dir.glob("*.safetensors")) - before) == 4  # the image and its three flips
    assert plain[0]["case_id"] == flipped[0]["case_id"]

    box = lite_model("zero-shot", classes=("polyp",), yolo=256)
    box_path = tmp_path / "box.safetensors"
    save_checkpoint(box_path, box, box.cfg, pre)
    with pytest.raises(InputError, match="flips need a lite feature-prompt"):
        evaluate_model(str(box_path), data, flips="h")
    with pytest.raises(InputError, match="flips must be one of"):
        evaluate_model(str(path), data, flips="d")
