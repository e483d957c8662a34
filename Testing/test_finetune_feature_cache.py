"""Phase 2 on cached YOLO features (a frozen prompt generator, cached embeddings): each image's P3/P4/P5 are computed
once, the cache is keyed by the generator's weights and the image content, the cached tensors are the generator's
own, and training on them matches training with the forward pass in every step."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_finetune_embedding_cache import _dataset, _model, frozen_encoder_config
from test_finetune_train import make_toy_dataset

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.embedding_cache import image_key
from ldfsam.finetune.feature_cache import FeatureCache, cache_features, features_cacheable, generator_fingerprint
from ldfsam.finetune.run import finetune
from ldfsam.model.prompt_generator import PromptGenerator
from ldfsam.progress import Progress


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_each_image_is_computed_once_and_read_back_equal(tmp_path, home):
    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy")
    cache = FeatureCache(generator_fingerprint(model))
    counts = []
    cache_features(model, dataset, cache, batch_size=4, on_progress=lambda i, n, c: counts.append(c))
    assert counts[-1] == len(dataset) and len(list(cache.dir.glob("*.safetensors"))) == len(dataset)
    counts.clear()
    cached = cache_features(model, dataset, cache, batch_size=4, on_progress=lambda i, n, c: counts.append(c))
    assert counts[-1] == 0  # nothing computed again
    with torch.no_grad():
        direct = model.prompt_generator.features(torch.stack([dataset[i]["yolo_image"] for i in range(len(dataset))]))
    item = cached[0]
    assert "yolo_image" not in item and len(item["yolo_features"]) == 3
    for level, expected in enumerate(direct):
        got = torch.stack([cached[i]["yolo_features"][level] for i in range(len(dataset))])
        assert got.dtype == torch.float32 and got.shape == expected.shape
        # float32 storage: the generator's own tensors, to the rounding of a batched convolution.
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), float((got - expected).abs().max())


def test_over_cached_embeddings_an_item_is_made_without_reading_its_image(tmp_path, home, monkeypatch):
    """Items over both caches equal the uncached items field by field (embedding, mask, ids; features in place of the
    YOLO image), and the image dataset is not read again once the caches are filled."""
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encode_dataset, encoder_fingerprint
    from ldfsam.finetune.image_dataset import ImageMaskDataset

    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy", n=4)
    embedded = encode_dataset(model, dataset, EmbeddingCache(encoder_fingerprint(model)))
    cached = cache_features(model, embedded, FeatureCache(generator_fingerprint(model)))
    reads = []
    original = ImageMaskDataset.__getitem__
    monkeypatch.setattr(ImageMaskDataset, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    for i in range(len(dataset)):
        item, plain = cached[i], embedded[i]
        assert set(item) == (set(plain) - {"yolo_image"}) | {"yolo_features"}
        assert torch.equal(item["embedding"], plain["embedding"]) and torch.equal(item["mask"], plain["mask"])
        assert item["mask"].dtype == plain["mask"].dtype and item["case_id"] == plain["case_id"]
        assert item["slice_index"] == plain["slice_index"]
    assert reads == list(range(len(dataset)))  # only by the uncached items above
    reads.clear()
    torch.utils.data.default_collate([cached[i] for i in range(len(dataset))])
    assert reads == []


def test_the_embedding_pass_notes_what_the_feature_cache_needs_so_images_are_read_once(tmp_path, home, monkeypatch):
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encode_dataset, encoder_fingerprint
    from ldfsam.finetune.feature_cache import ItemNotes
    from ldfsam.finetune.image_dataset import ImageMaskDataset

    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy", n=4)
    reads = []
    original = ImageMaskDataset.__getitem__
    monkeypatch.setattr(ImageMaskDataset, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    rounds = []
    for _ in range(2):
        reads.clear()
        notes = ItemNotes()
        embedded = encode_dataset(model, dataset, EmbeddingCache(encoder_fingerprint(model)), on_item=notes)
        cached = cache_features(model, embedded, FeatureCache(generator_fingerprint(model)), notes=notes)
        rounds.append((list(reads), [cached[i] for i in range(len(dataset))]))
    # First round: one pass, then the images whose features were missing; second round (all cached): one pass.
    assert sorted(rounds[0][0]) == sorted(list(range(4)) * 2) and rounds[1][0] == [0, 1, 2, 3]
    for a, b in zip(rounds[0][1], rounds[1][1]):
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["embedding"], b["embedding"])
        assert all(torch.equal(x, y) for x, y in zip(a["yolo_features"], b["yolo_features"]))


def test_new_generator_weights_or_content_miss_the_cache_and_a_damaged_file_is_recomputed(tmp_path, home):
    model = _model(frozen_encoder_config()).eval()
    dataset = _dataset(tmp_path / "toy", n=2)
    before = generator_fingerprint(model)
    cache = FeatureCache(before)
    cache_features(model, dataset, cache)
    victim = cache.path(image_key(dataset[0]["yolo_image"]))
    victim.write_bytes(victim.read_bytes()[:100])
    counts = []
    cache_features(model, dataset, cache, on_progress=lambda i, n, c: counts.append(c))
    assert counts[-1] == 1
    with torch.no_grad():
        next(model.prompt_generator.parameters()).mul_(1.01)
    assert generator_fingerprint(model) != before


def test_only_a_frozen_generator_is_cached_and_none_needs_no_features(tmp_path, home):
    assert features_cacheable(_model(frozen_encoder_config("dense+sparse")))
    assert features_cacheable(_model(frozen_encoder_config("box")))
    model = _model(frozen_encoder_config("sparse"))
    next(model.prompt_generator.parameters()).requires_grad_(True)
    assert not features_cacheable(model)
    none = _model(frozen_encoder_config("none")).eval()  # no YOLO pass at all: nothing computed, nothing stored
    assert features_cacheable(none)
    cache = FeatureCache(generator_fingerprint(none))
    items = cache_features(none, _dataset(tmp_path / "toy", n=2), cache)
    assert items[0]["yolo_features"] == [] and "yolo_image" not in items[0] and not cache.dir.exists()


def _losses(run):
    return [float(r["train_loss"]) for r in csv.DictReader(open(run / "log.csv"))]


@pytest.mark.parametrize("mode,box_prompts", [
    ("dense+sparse", "detected"),
    # Two trainings each: the other modes run with the slow suite.
    pytest.param("box", "ground_truth", marks=pytest.mark.slow),
    pytest.param("none", "detected", marks=pytest.mark.slow)])
def test_training_on_cached_features_matches_training_without_them(tmp_path, home, monkeypatch, mode, box_prompts):
    """The same run with and without the feature cache: the same losses and validation Dice, and with the cache the
    prompt generator runs only to fill it (one pass per batch of new images), never in a training step."""
    data = make_toy_dataset(tmp_path / "toy", n=8)
    common = dict(data=str(data), epochs=2, batch_size=2, lr=1e-3, val_fraction=0.25, num_workers=0,
                  precision="fp32", box_conf="model", box_prompts=box_prompts)
    calls = []
    original = PromptGenerator.features

    def counted(self, image):
        calls.append(image.shape[0])
        return original(self, image)

    monkeypatch.setattr(PromptGenerator, "features", counted)
    cached = finetune(FinetuneConfig(**common), frozen_encoder_config(mode), tmp_path / "cached",
                      progress=Progress("none"))
    cached_calls, calls[:] = list(calls), []
    plain = finetune(FinetuneConfig(**common, feature_cache="off"), frozen_encoder_config(mode), tmp_path / "plain",
                     progress=Progress("none"))
    steps = 2 * 3  # 6 training images, batch 2, 2 epochs
    assert cached.global_step == plain.global_step == steps
    # Without the cache: every training step and validation batch; with it: the 8 images once (batches of 2); in
    # none mode never. Both runs also pass one image when the generator is built (to learn its channel counts).
    if mode == "none":
        assert sum(calls) == sum(cached_calls) == 1
    else:
        assert sum(calls) >= 1 + steps * 2 and sum(cached_calls) == 1 + 8, (calls, cached_calls)
    a, b = _losses(tmp_path / "cached"), _losses(tmp_path / "plain")
    assert np.allclose(a, b, rtol=1e-4), (a, b)
    assert cached.best_val_dice == pytest.approx(plain.best_val_dice, abs=1e-3)
    assert len(list((home / "cache" / "yolo-features").glob("*/*.safetensors"))) == (0 if mode == "none" else 8)
