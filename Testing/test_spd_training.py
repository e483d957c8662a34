"""SPD in Phase 2: the saliency head trains beside the decoder and is saved in the model file; the pairwise slice
consistency (PSC) term is in the loss on volume datasets (uni-directional), off for 2D image datasets."""

from __future__ import annotations

import pytest
import torch

from ldfsam.finetune.config import FinetuneConfig
from ldfsam.finetune.spd import psc_loss, saliency_loss, spd_terms
from ldfsam.progress import Progress


def _tiny_config(saliency: bool):
    from ldfsam.model.presets import model_config

    cfg = model_config("small", prompt_mode="dense+sparse")
    cfg.sam.image_size, cfg.prompt_generator.image_size = 64, 64
    cfg.saliency.enabled = saliency
    return cfg


def test_psc_is_uni_directional_and_local():
    torch.manual_seed(0)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:40, 20:40] = 1
    logits = torch.randn(2, 1, 64, 64, requires_grad=True)
    nxt = torch.randn(2, 1, 64, 64, requires_grad=True)
    loss = psc_loss(logits, nxt, mask, mask, torch.tensor([True, True]))
    loss.backward()
    # Slice z guides slice z+1 only: no gradient reaches z's logits.
    assert logits.grad is None or not logits.grad.any()
    assert nxt.grad.abs().sum() > 0
    # Far from both reference masks the slices may differ freely.
    assert not nxt.grad[:, :, :5, :5].any() and nxt.grad[:, :, 25, 25].abs().sum() > 0
    # Agreeing slices cost (almost) nothing; pairs without a next slice take no part.
    same = torch.full((2, 1, 64, 64), -10.0)
    same[:, :, 20:40, 20:40] = 10.0
    assert psc_loss(same, same.clone(), mask, mask, torch.tensor([True, True])) < 1e-3
    assert psc_loss(same, -same, mask, mask, torch.tensor([True, False])) > 0.9
    assert psc_loss(same, -same, mask, mask, torch.tensor([False, False])) == 0


def test_psc_and_saliency_terms_change_the_step_loss():
    from ldfsam.finetune.spd import SpdNet
    from ldfsam.model.build import build_model

    torch.manual_seed(0)
    model = build_model(_tiny_config(saliency=True))
    net = SpdNet(model, cached=False)
    image, yolo = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 10:30, 12:34] = 1
    out = net(image, yolo)
    assert isinstance(out, tuple) and out[1].shape == (2, 1, 64, 64)
    cfg = FinetuneConfig()

    def forward(i, y, m):
        return net(i, y)

    _, only_saliency = spd_terms(forward, out, {}, mask, cfg)
    torch.testing.assert_close(only_saliency, cfg.saliency_weight * saliency_loss(out[1], mask))
    batch = {"next_image": torch.rand(2, 3, 64, 64), "next_yolo": yolo, "next_mask": mask,
             "has_next": torch.tensor([True, True])}
    _, both = spd_terms(forward, out, batch, mask, cfg)
    assert both > only_saliency
    grads = []
    for extra in (only_saliency, both):
        model.zero_grad()
        extra.backward(retain_graph=True)
        grad = model.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad
        grads.append(torch.zeros(1) if grad is None else grad.clone())
    # The saliency term alone does not reach the decoder; PSC does.
    assert not grads[0].any() and grads[1].abs().sum() > 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import write_phantom_dataset
    from ldfsam.data.prepared import PrepareOptions, prepare_dataset

    root = tmp_path_factory.mktemp("spd")
    src = root / "cbct"
    src.mkdir()
    write_phantom_dataset(src, cases=3, shape=(10, 40, 40), spacing=0.5)
    out = root / "prepared"
    prepare_dataset(src, out, PreprocessConfig(target_spacing=None),
                    PrepareOptions(test_count=0, val_fraction=0.34, yolo=False))
    return out


@pytest.mark.slow
def test_saliency_head_trains_in_phase2_and_is_saved(prepared, tmp_path):
    from ldfsam.checkpoint import load_checkpoint, load_state
    from ldfsam.finetune.run import finetune

    cfg = FinetuneConfig(data=str(prepared), epochs=1, batch_size=4, max_steps=2, num_workers=0)
    finetune(cfg, _tiny_config(saliency=True), tmp_path / "run", progress=Progress("none"))
    path = tmp_path / "run" / "model.safetensors"
    tensors, document = load_state(path)
    assert any(k.startswith("saliency_head.") for k in tensors)
    assert document["model"]["saliency"]["enabled"] is True
    # PSC: on by default for a prepared volume dataset, and recorded.
    assert document["training"]["psc"] is True and document["training"]["config"]["psc"] == "auto"
    loaded = load_checkpoint(path)
    assert loaded.model.saliency_head is not None
    # The head moved from its initialisation (output bias -2): it was trained, not just saved.
    assert loaded.model.saliency_head.out.bias.item() != pytest.approx(-2.0, abs=1e-6)


def test_model_files_without_a_saliency_head_still_load(tmp_path):
    from ldfsam.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.model.build import build_model

    cfg = _tiny_config(saliency=False)
    model = build_model(cfg)
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, cfg, PreprocessConfig(target_spacing=None, sam_size=64, yolo_size=64))
    tensors, document = load_state(path)
    del document["model"]["saliency"]  # as written before the head existed
    save_state(path, tensors, document)
    loaded = load_checkpoint(path)
    assert loaded.model.saliency_head is None and loaded.model_cfg.saliency.enabled is False


def test_psc_off_for_2d_image_datasets(tmp_path):
    from _finetune_helpers import toy_disc_dataset

    from ldfsam.checkpoint import read_checkpoint_meta
    from ldfsam.finetune.run import finetune

    data = toy_disc_dataset(tmp_path / "toy", 6, seed=0)
    cfg = FinetuneConfig(data=str(data), epochs=1, batch_size=3, max_steps=1, num_workers=0, val_fraction=0.34)
    finetune(cfg, _tiny_config(saliency=False), tmp_path / "run", progress=Progress("none"))
    assert read_checkpoint_meta(tmp_path / "run" / "model.safetensors")["training"]["psc"] is False


def test_psc_on_the_prior_makes_adjacent_maps_agree():
    """scripts/train_saliency_head.py --psc: PSC on the head's own maps of adjacent slices (row (d) of
    bench_noisy_prompts), pulling the map of z+1 towards z's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_saliency_head import held_out_pairs, psc_term

    from ldfsam.model.saliency import SaliencyHead

    torch.manual_seed(0)
    head = SaliencyHead(256, 8)
    emb = torch.randn(4, 256, 8, 8)  # two pairs: (0, 1) and (2, 3)
    tgt = torch.zeros(4, 1, 256, 256)
    tgt[:, :, 96:160, 96:160] = 1
    pairs = [(emb[i], tgt[i, 0] > 0) for i in range(4)]
    before = held_out_pairs(head, pairs, 0.5)["pairs_adjacent_map_dice"]
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    first = torch.tensor([0, 2])
    for _ in range(10):
        loss = psc_term(head, emb, tgt, first)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_pairs(head, pairs, 0.5)["pairs_adjacent_map_dice"]
    assert after > before + 0.05, (before, after)
