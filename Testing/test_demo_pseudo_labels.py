"""scripts/demo_pseudo_labels.py: real-CT slices for the demo model's Phase 2, labelled by a teacher model's
automatic output or as background (negatives), and the slice ranges that keep the judged part of a scan out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import load_script


@pytest.fixture(scope="module")
def script():
    yield load_script("scripts/demo_pseudo_labels.py", register=True)
    sys.modules.pop("demo_pseudo_labels", None)


def _pre():
    from ldfsam.data.config import PreprocessConfig

    return PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256)


def test_volume_specs_and_slice_ranges(script, tmp_path):
    from _infer_helpers import write_image

    assert script.parse_volume_spec("a/b.nii.gz") == (Path("a/b.nii.gz"), None)
    assert script.parse_volume_spec("a/b.nii.gz:0-59") == (Path("a/b.nii.gz"), (0, 59))
    with pytest.raises(SystemExit, match="must not be after"):
        script.parse_volume_spec("a.nii.gz:5-3")
    array = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14)
    path = write_image(tmp_path / "v.nii.gz", array, spacing=(0.5, 0.5, 2.0))
    cut = script.read_volume(f"{path}:2-4")
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(cut), array[2:5])
    assert cut.GetSpacing() == (0.5, 0.5, 2.0)
    with pytest.raises(SystemExit, match="has 10 slices"):
        script.read_volume(f"{path}:5-10")
    with pytest.raises(SystemExit, match="no such file"):
        script.read_volume(str(tmp_path / "missing.nii.gz"))


def test_negatives_are_background_and_teacher_labels_are_its_output(script, tmp_path):
    """A negative volume gives empty masks on every slice; a teacher's slices carry exactly what its automatic
    output marked (the same label map, prepared as the model's input)."""
    import SimpleITK as sitk
    from _infer_helpers import save_tiny_model

    from ldfsam.data.phantom import make_phantom
    from ldfsam.data.synthetic import prepare_slices
    from ldfsam.infer.model_loading import load_model
    from ldfsam.infer.pipeline import segment_image
    from ldfsam.infer.segment_options import SegmentOptions

    image, _ = make_phantom((12, 64, 64), spacing=0.5, seed=5, teeth_fraction=0.6)
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    images, masks, records = script.pseudo_label_slices([f"{path}:2-9"], None, 128, _pre(), lambda m: None)
    assert images.shape == (8, 128, 128) and images.dtype == np.uint8 and images.max() > 0
    assert masks.shape == (8, 128, 128) and not masks.any()
    assert records == [{"volume": f"{path}:2-9", "slices": 8, "negative": True, "marked_voxels": 0,
                        "marked_slices": []}]

    teacher = load_model(save_tiny_model(tmp_path / "teacher.safetensors"))
    # The random teacher made to detect (every class score high) and to mark at a low threshold, so that the
    # comparison cannot pass by emptiness.
    with torch.no_grad():
        for seq in teacher.model.prompt_generator.head.cv3:
            seq[-1].bias.fill_(2.0)
    options = SegmentOptions(encoder="full", threshold=0.01, min_island_mm3=0.0)
    images, masks, records = script.pseudo_label_slices([str(path)], teacher, 128, _pre(), lambda m: None, options)
    labels = (segment_image(image, teacher, options=options, device="cpu").labels > 0).astype(np.uint8)
    assert labels.any()
    want = prepare_slices(sitk.GetArrayFromImage(image).astype(np.float32), labels, (0.5, 0.5, 0.5), 128, _pre(),
                          min_pixels=1)
    assert np.array_equal(masks, want.masks) and np.array_equal(images, want.images)
    assert records[0]["marked_voxels"] == int(labels.sum()) and not records[0]["negative"]
    assert records[0]["marked_slices"] == [z for z in range(12) if labels[z].any()]
