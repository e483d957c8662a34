"""The half-resolution student encoder (ldfsam/model/tiny_vit_student.py) on small random networks."""

import pytest
import torch
import torch.nn.functional as F
from _model_helpers import random_tiny_vit

from ldfsam.errors import CheckpointError
from ldfsam.model.tiny_vit import TinyViT
from ldfsam.model.tiny_vit_inference import prepare_for_inference
from ldfsam.model.tiny_vit_student import PIECE_IMAGES, HalfResTinyViT, UpNeck, half_resolution_encoder, save_neck

SMALL = dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 7, 7),
             out_chans=32)


def student(seed: int = 0) -> HalfResTinyViT:
    torch.manual_seed(seed)
    net = HalfResTinyViT(image_size=64, neck_hidden=12, neck_depth=2, **SMALL).eval()
    with torch.no_grad():  # BatchNorm statistics other than the identity, so that folding them is tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_untrained_neck_is_the_half_resolution_teacher_upsampled():
    net = student()
    teacher_at_half = TinyViT(image_size=32, **SMALL).eval()
    teacher_at_half.load_state_dict(net.backbone.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        expected = F.interpolate(teacher_at_half(F.avg_pool2d(x, 2)), size=(16, 16), mode="bilinear",
                                 align_corners=False)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_fine_features_are_stage_one_blocks_on_the_embedding_grid():
    net = student()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        coarse, fine = net.features(x)
        b = net.backbone
        y = b.layers[0](b.patch_embed(F.avg_pool2d(x, 2)))
        stage1 = y.permute(0, 2, 3, 1)
        for block in b.layers[1].blocks:
            stage1 = block(stage1)
    assert coarse.shape == (1, 32, 8, 8) and fine.shape == (1, 16, 16, 16)
    torch.testing.assert_close(fine, stage1.permute(0, 3, 1, 2))


def test_trained_neck_batches_and_inference_preparation_keep_the_outputs():
    net = student()
    with torch.no_grad():
        for p in net.up_neck.out.parameters():
            p.normal_(0, 0.1)  # a neck that changes the embedding
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        one_by_one = torch.cat([net(x[i:i + 1]) for i in range(3)])
        plain = net.up_neck(*net.features(x))
        upsampled = F.interpolate(net.features(x)[0], size=(16, 16), mode="bilinear", align_corners=False)
        prepare_for_inference(net.backbone)
        prepared = net(x)
    assert (plain - upsampled).abs().max() > 1e-3
    torch.testing.assert_close(plain, one_by_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prepared, plain, rtol=1e-4, atol=1e-4)


def test_neck_trains_and_backbone_gets_no_gradient_when_frozen():
    net = student()
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    x, target = torch.rand(2, 3, 64, 64), torch.randn(2, 32, 16, 16)
    loss = F.mse_loss(net(x), target)
    loss.backward()
    assert net.up_neck.out.weight.grad is not None and net.up_neck.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.backbone.parameters())


def test_student_from_a_prepared_teacher_equals_the_one_from_its_weights(tmp_path):
    torch.manual_seed(1)
    neck = UpNeck(hidden=16, depth=1, stem=True)
    with torch.no_grad():
        neck.out.weight.normal_(0, 0.05)
    path = tmp_path / "neck.safetensors"
    save_neck(path, neck, {"epochs": 0})
    teacher = random_tiny_vit()
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        from_weights = half_resolution_encoder(teacher, path)(x)
        prepare_for_inference(teacher)  # as the slice predictor leaves a model it has run
        from_prepared = half_resolution_encoder(teacher, path)(x)
    assert from_weights.shape == (1, 256, 64, 64)
    torch.testing.assert_close(from_prepared, from_weights, rtol=1e-4, atol=1e-4)


def test_a_file_that_is_not_a_neck_is_refused(tmp_path):
    from ldfsam.file_format import save_state

    path = tmp_path / "other.safetensors"
    save_state(path, {"w": torch.zeros(2)}, {"format": "ldfsam-model", "version": 1})
    with pytest.raises(CheckpointError, match="not an LDFSAM encoder neck file"):
        half_resolution_encoder(random_tiny_vit(), path)


def test_inference_runs_the_first_stage_per_image_and_the_rest_in_pieces_of_bounded_batch():
    # One image at a time through the attention stages cost two threads about twice the CPU time of one batch; a
    # whole batch of 8 held 8 images' activations at once (peak memory): pieces of PIECE_IMAGES.
    net = student()
    prepare_for_inference(net.backbone)
    batches = {"patch_embed": [], "attention": [], "neck": []}
    net.backbone.patch_embed.register_forward_hook(lambda m, a, o: batches["patch_embed"].append(a[0].shape[0]))
    net.backbone.layers[1].blocks[0].register_forward_hook(lambda m, a, o: batches["attention"].append(a[0].shape[0]))
    net.up_neck.register_forward_hook(lambda m, a, o: batches["neck"].append(a[0].shape[0]))
    n = PIECE_IMAGES + 2
    assert 2 <= PIECE_IMAGES < 8  # batched, and below the predictor's default batch of 8
    x = torch.rand(n, 3, 64, 64)
    with torch.inference_mode():
        out = net(x)
        one_by_one = torch.cat([net(x[i:i + 1]) for i in range(n)])
    assert batches == {"patch_embed": [1] * (2 * n), "attention": [PIECE_IMAGES, 2] + [1] * n,
                       "neck": [PIECE_IMAGES, 2] + [1] * n}
    torch.testing.assert_close(out, one_by_one, rtol=1e-5, atol=1e-5)
