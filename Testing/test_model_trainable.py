"""Phase 2's trainable set: gradients reach exactly it, frozen weights stay bit-identical, α = 0 is a no-op."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import inputs, small_model

from ldfsam.model.trainable import configure_phase2


def _loss(model, mode, batch=2):
    sam, yolo = inputs(batch)
    if mode == "box":
        emb = model.encode_image(sam)
        boxes = [torch.tensor([[20.0, 30.0, 150.0, 160.0, 0.9, 0.0]]), torch.tensor([[5.0, 5.0, 60.0, 90.0, 0.7, 0.0]])]
        logits = model.decode(emb, model.prompt_features(yolo), boxes)
    else:
        logits = model(sam, yolo)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, (sam[:, :1] > 0.5).float())


@pytest.mark.parametrize("mode", ["box", "dense", "sparse", "dense+sparse"])
def test_gradients_reach_exactly_the_trainable_set(mode):
    model = small_model(mode).train()
    names = configure_phase2(model)
    if model.feature_prompts is not None and model.feature_prompts.alpha is not None:
        with torch.no_grad():  # α = 0 would make the dense head's gradient exactly zero at the first step
            model.feature_prompts.alpha.fill_(0.5)
    _loss(model, mode).backward()
    params = dict(model.named_parameters())
    with_grad = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(names)
    assert all(params[n].grad is None for n in params if n not in names)
    # The set is what the paper trains: adapters, prompt heads, SAM prompt encoder, decoder; never YOLO/ViT.
    assert any(".adapter." in n for n in names)
    assert any(n.startswith("mask_decoder.") for n in names)
    assert not any(n.startswith("prompt_generator.") for n in names)
    assert not any(n.startswith("image_encoder.") and ".adapter." not in n for n in names)
    if mode != "box":
        assert any(n.startswith("feature_prompts.") for n in names)


def test_frozen_parameters_bit_identical_after_optimizer_step():
    model = small_model("dense+sparse").train()
    names = set(configure_phase2(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    _loss(model, "dense+sparse").backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = set(before) - names
    assert not (changed & frozen), sorted(changed & frozen)[:5]  # includes YOLO BatchNorm running statistics
    assert "feature_prompts.alpha" in changed and "mask_decoder.mask_tokens.weight" in changed


def test_alpha_zero_makes_the_dense_prompt_a_no_op():
    both = small_model("dense+sparse").eval()
    sparse = small_model("sparse").eval()
    # Same weights in every shared part; the dense head exists only in ``both``.
    state = {k: v for k, v in both.state_dict().items() if k in sparse.state_dict()}
    sparse.load_state_dict(state, strict=True)
    assert both.feature_prompts.alpha.detach().item() == 0.0
    sam, yolo = inputs(2)
    with torch.no_grad():
        a, b = both(sam, yolo), sparse(sam, yolo)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        both.feature_prompts.alpha.fill_(1.0)
        assert not torch.allclose(both(sam, yolo), b)


def test_prompt_generator_stays_in_eval_mode():
    model = small_model("dense").train()
    assert model.training and not model.prompt_generator.training
    assert not any(m.training for m in model.prompt_generator.modules())
