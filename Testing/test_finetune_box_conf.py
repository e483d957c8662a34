"""Box mode's detection confidence and box count chosen on held-out images (ldfsam/finetune/box_conf.py)."""

from __future__ import annotations

import pytest
import torch

from ldfsam.finetune.box_conf import box_cover_dice, choose_box_prompts
from ldfsam.model.build import build_model
from ldfsam.model.presets import model_config


class _FixedDetector(torch.nn.Module):
    """Returns preset detections (N×6 per image, looked up by the image's first pixel) above ``conf``."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections

    def detect(self, image, conf=0.25, max_det=300):
        det = self.detections[int(round(float(image[0, 0, 0, 0]) * 100))]
        return [det[det[:, 4] >= conf][:max_det]]


def _item(index: int, box, size: int = 64):
    yolo = torch.zeros(3, size, size)
    yolo[0, 0, 0] = index / 100.0
    mask = torch.zeros(1, size, size)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[0, y0:y1, x0:x1] = 1
    return {"yolo_image": yolo, "mask": mask}


def test_a_detector_scoring_low_gets_a_low_threshold():
    # Right boxes scored 0.025-0.045 and a wrong one at 0.007: the fixed 0.25 would prompt nothing.
    data = [_item(i, (10, 10, 30, 30)) for i in range(3)]
    right = torch.tensor([[10.0, 10, 30, 30, 0.0, 0]])
    wrong = torch.tensor([[40.0, 40, 60, 60, 0.007, 0]])
    dets = {i: torch.cat([right.clone().index_fill_(1, torch.tensor([4]), 0.025 + 0.01 * i), wrong]) for i in range(3)}
    conf, k, scores = choose_box_prompts(_FixedDetector(dets), data, counts=(2, 32))
    assert (conf, k) == (0.01, 2)  # 0.01 and 0.02 both keep only the right boxes: the lower of the two middles
    assert scores[conf, k] == pytest.approx(1.0)
    assert scores[0.25, 2] == 0.0  # nothing detected at the old default
    assert scores[0.001, 2] < 1.0  # the wrong box hurts when kept
    # With one box per image the right (best-scoring) box alone is kept at any low threshold: fewest boxes win,
    # at the middle of the tied 0.001 ... 0.02.
    conf, k, scores = choose_box_prompts(_FixedDetector(dets), data, counts=(1, 2, 32))
    assert k == 1 and scores[conf, 1] == pytest.approx(1.0) and conf == 0.005


def test_ties_go_to_the_middle_threshold_and_empty_images_count():
    # Image 0 holds no object: a box there costs it its Dice of 1.
    data = [_item(0, None), _item(1, (5, 5, 20, 20))]
    dets = {0: torch.tensor([[0.0, 0, 8, 8, 0.1, 0]]), 1: torch.tensor([[5.0, 5, 20, 20, 0.9, 0]])}
    conf, k, scores = choose_box_prompts(_FixedDetector(dets), data, counts=(1,))
    assert scores[0.001, 1] == pytest.approx(0.5)
    assert scores[0.15, 1] == pytest.approx(1.0)
    assert (conf, k) == (0.25, 1)  # 0.15 ... 0.5 all give 1.0: the (lower) middle of the six wins


def test_a_weaker_new_image_keeps_its_box():
    """The selection images' right boxes all score 0.6-0.9: every threshold up to 0.5 ties. The highest (the old
    rule) would drop the only box of a new image whose polyp scores 0.2; the middle of the tie keeps it."""
    data = [_item(i, (10, 10, 30, 30)) for i in range(4)]
    dets = {i: torch.tensor([[10.0, 10, 30, 30, 0.6 + 0.1 * i, 0]]) for i in range(4)}
    conf, k, scores = choose_box_prompts(_FixedDetector(dets), data, counts=(1, 2))
    assert k == 1 and all(scores[t, 1] == pytest.approx(1.0) for t in (0.001, 0.5))
    assert conf == 0.075 and conf < 0.2  # index 7 of the 15 tied thresholds


def test_box_cover_dice_by_hand():
    det = [torch.tensor([[0.0, 0, 10, 10, 0.5, 0], [0.0, 0, 10, 20, 0.1, 0]]).numpy()]
    ref = [torch.tensor([[0.0, 0, 10, 10]]).numpy()]
    assert box_cover_dice(det, ref, 32, 0.3, 32) == pytest.approx(1.0)
    assert box_cover_dice(det, ref, 32, 0.05, 32) == pytest.approx(2 * 100 / (200 + 100))
    assert box_cover_dice(det, ref, 32, 0.05, 1) == pytest.approx(1.0)  # only the best box kept


def test_runs_on_a_real_prompt_generator():
    cfg = model_config("small", prompt_mode="box", class_names=["polyp"])
    generator = build_model(cfg).prompt_generator
    size = cfg.prompt_generator.image_size
    data = [{"yolo_image": torch.rand(3, size, size), "mask": torch.zeros(1, 32, 32)} for _ in range(2)]
    data[1]["mask"][0, 4:12, 4:12] = 1
    generator.train()
    conf, k, scores = choose_box_prompts(generator, data, max_boxes=4, grid=(0.001, 0.25), counts=(1, 8))
    assert conf in (0.001, 0.25) and set(scores) == {(0.001, 1), (0.001, 4), (0.25, 1), (0.25, 4)}
    assert generator.training  # the mode is restored
    with pytest.raises(ValueError, match="no images"):
        choose_box_prompts(generator, [])
