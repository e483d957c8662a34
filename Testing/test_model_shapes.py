"""Output shapes of LDFSAM in every prompt mode, for one image and for a batch; the fast-inference split."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import inputs, small_model

from ldfsam.model.ldfsam import NO_OBJECT_LOGIT

MODES = ["box", "dense", "sparse", "dense+sparse"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shapes(mode, batch):
    model = small_model(mode, classes=("upper", "lower")).eval()
    sam, yolo = inputs(batch)
    with torch.no_grad():
        out = model(sam, yolo)
    assert out.shape == (batch, 2, 256, 256)
    assert torch.isfinite(out).all()


def test_split_equals_forward_and_contract_shapes():
    model = small_model("dense+sparse").eval()
    sam, yolo = inputs(2)
    with torch.no_grad():
        feats = model.prompt_features(yolo)
        assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8)]  # strides 8, 16, 32
        emb = model.encode_image(sam)
        assert emb.shape == (2, 256, 16, 16)
        split = model.decode(emb, feats)
        whole = model(sam, yolo)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)


def test_batch_rows_are_independent():
    """One prompt set per image: an image's logits do not depend on the other images of the batch."""
    model = small_model("dense+sparse").eval()
    sam, yolo = inputs(3)
    with torch.no_grad():
        batch = model(sam, yolo)
        alone = model(sam[1:2], yolo[1:2])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-4, atol=1e-4)


def test_box_mode_unites_boxes_and_blanks_images_without_boxes():
    model = small_model("box").eval()
    sam, yolo = inputs(3)
    b1 = torch.tensor([[10.0, 20.0, 120.0, 140.0, 0.9, 0.0]])
    b2 = torch.tensor([[100.0, 90.0, 200.0, 250.0, 0.8, 0.0]])
    with torch.no_grad():
        emb = model.encode_image(sam)
        feats = model.prompt_features(yolo)
        both = model.decode(emb, feats, [torch.cat([b1, b2]), torch.zeros(0, 6), b1])
        only1 = model.decode(emb[:1], tuple(f[:1] for f in feats), [b1])
        only2 = model.decode(emb[:1], tuple(f[:1] for f in feats), [b2])
    assert both.shape == (3, 1, 256, 256)
    # The union of two boxes is the maximum of their logits, taken before the (linear, positive-weight) bilinear
    # upscaling, so it bounds each box's own logits from above everywhere and differs from both.
    assert not torch.equal(only1, only2)
    assert torch.all(both[0:1] >= torch.maximum(only1, only2) - 1e-4)
    assert not torch.allclose(both[0:1], only1) and not torch.allclose(both[0:1], only2)
    # No box: background everywhere.
    assert torch.all(both[1] == NO_OBJECT_LOGIT)
    # Image 2 had only box 1: same as decoding box 1 alone.
    torch.testing.assert_close(both[2:3], model.decode(emb[2:3], tuple(f[2:3] for f in feats), [b1]))


def test_box_mode_detects_when_no_boxes_given():
    model = small_model("box").eval()
    sam, yolo = inputs(2)
    with torch.no_grad():
        boxes = model.detect(yolo)
        assert len(boxes) == 2 and all(b.ndim == 2 and b.shape[1] == 6 for b in boxes)
        out = model(sam, yolo)
        again = model.decode(model.encode_image(sam), model.prompt_features(yolo), boxes)
    torch.testing.assert_close(out, again)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.sam, "embed_dim", 512), "preset vit_b has 768"),
    (lambda c: setattr(c.sam, "image_size", 250), "not a positive multiple of patch_size"),
    (lambda c: setattr(c, "class_names", []), "at least one class"),
    (lambda c: setattr(c.prompt_generator, "image_size", 300), "multiple of 32"),
    (lambda c: (setattr(c.sam, "preset", "small"), setattr(c.sam, "global_attn_indexes", (2, 12))),
     "must lie in 0..11"),
])
def test_unbuildable_configurations_are_config_errors(change, message):
    from ldfsam.errors import ConfigError
    from ldfsam.model.build import check_config
    from ldfsam.model.presets import model_config

    cfg = model_config("vit_b")
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match="unknown SAM preset"):
        model_config("vit_x")
