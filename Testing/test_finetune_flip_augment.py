"""Phase 2 flip augmentation (FinetuneConfig.flip_augment): a flip is a training item of its own (images, mask and
valid map flipped together), encoded and cached once; each epoch shows every item once, in a variant drawn from
(seed, epoch); the choice is saved with the model; multi-class models are refused."""

from __future__ import annotations

import pytest
import torch
from test_finetune_embedding_cache import _dataset, frozen_encoder_config
from test_finetune_train import make_toy_dataset

from ldfsam.errors import ConfigError
from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.flip_augment import FlipVariants, VariantBatchSampler, check_flips
from ldfsam.finetune.run import finetune
from ldfsam.progress import Progress


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDFSAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_variant_flips_the_images_and_the_mask_together(tmp_path):
    base = _dataset(tmp_path / "toy", n=3)
    flipped = FlipVariants(base, "hv")
    assert len(flipped) == 4 * len(base)
    for v, dims in enumerate([(), (-1,), (-2,), (-2, -1)]):
        for i in range(len(base)):
            item, plain = flipped[v * len(base) + i], base[i]
            assert item["case_id"] == plain["case_id"]
            for key in ("sam_image", "yolo_image", "mask"):
                expected = torch.flip(plain[key], dims) if dims else plain[key]
                assert torch.equal(item[key], expected), (v, i, key)
            if dims:  # the discs are off-centre: a flip is another image
                assert not torch.equal(item["mask"], plain["mask"])


def test_each_epoch_shows_every_item_once_in_drawn_variants():
    size, variants = 10, 4
    sampler = VariantBatchSampler(size, variants, batch_size=3, seed=5)
    seen = []
    for epoch in range(6):
        sampler.set_position(epoch)
        indices = [i for batch in sampler for i in batch]
        assert sorted(i % size for i in indices) == list(range(size))
        assert all(0 <= i < size * variants for i in indices)
        seen.append(indices)
    assert len({i // size for e in seen for i in e}) == variants  # every variant drawn
    again = VariantBatchSampler(size, variants, batch_size=3, seed=5)
    again.set_position(3, 2)  # resumed at epoch 3, batch 2: the same items in the same variants
    assert [i for batch in again for i in batch] == seen[3][6:]
    # Two ranks together see what one process sees.
    ranks = [VariantBatchSampler(size, variants, 3, rank=r, world_size=2, seed=5) for r in (0, 1)]
    for r in ranks:
        r.set_position(1)
    together = {i for r in ranks for b in r for i in b}
    assert together == set(seen[1])


def test_training_with_flips_encodes_each_flip_once_and_records_the_choice(tmp_path, home):
    from ldfsam.checkpoint import load_checkpoint

    data = make_toy_dataset(tmp_path / "toy", n=8)
    common = dict(data=str(data), epochs=2, batch_size=4, lr=1e-3, val_fraction=0.25, num_workers=0,
                  precision="fp32")
    result = finetune(FinetuneConfig(**common, flip_augment="h"), frozen_encoder_config(), tmp_path / "h",
                      progress=Progress("none"))
    assert result.global_step == 2 * 2  # 6 training items: the same steps per epoch as without flips
    # 6 training images and their 6 horizontal flips, the 2 validation images unflipped.
    assert len(list((home / "cache" / "embeddings").glob("*/*.safetensors"))) == 6 * 2 + 2
    assert len(list((home / "cache" / "yolo-features").glob("*/*.safetensors"))) == 6 * 2 + 2
    loaded = load_checkpoint(tmp_path / "h" / "model.safetensors")
    assert loaded.meta["training"]["config"]["flip_augment"] == "h"
    resumed = finetune(None, None, tmp_path / "h", resume=True, progress=Progress("none"))
    assert resumed.global_step == result.global_step  # a complete run stays complete with its flips


def test_flips_are_refused_where_they_would_teach_wrong_labels():
    check_flips("none", ["tooth 11", "tooth 21"], psc=True)
    check_flips("hv", ["polyp"], psc=False)
    with pytest.raises(ConfigError, match="one-class"):
        check_flips("h", ["tooth 11", "tooth 21"], psc=False)
    with pytest.raises(ConfigError, match="psc"):
        check_flips("h", ["tooth"], psc=True)
    with pytest.raises(ConfigError, match="flip_augment"):
        check_flips("x", ["polyp"], psc=False)
