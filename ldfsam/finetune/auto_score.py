"""The ``auto`` mode's box-score threshold, chosen for two trained models on their run's checkpoint-selection images.

An ``auto`` model (``ldfsam/model/auto_prompt.py``) segments an image from its detected boxes where the detector keeps
exactly one box scoring at least ``auto_box_score``, else from the feature prompts. Like box mode's confidence
(``box_conf.py``) the threshold is a setting of the detector, so it is chosen on images that neither trained the
models nor score the result: the validation images the dense+sparse run selected its checkpoint on (its training
record names the dataset, split and how many). On each of them both models segment once (the masks at the SAM
input size, as Phase 2's validation scores them) and :func:`~ldfsam.model.auto_prompt.choose_box_score` picks the
threshold (box mode's grid, ties to the middle). ``ldfsam models combine --box-score auto`` calls this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..errors import CheckpointError, InputError


def selection_data(loaded: Any, model_path: Path, data: Optional[Union[str, Path]] = None):
    """The checkpoint-selection images of the run that trained ``loaded`` (its training record's dataset, split and
    ``max_val_items``), with ``data`` standing in for the recorded dataset folder where given."""
    from ..config import ConfigError, from_dict
    from .config import FinetuneConfig
    from .data import load_data

    record = loaded.meta.get("training", {}) if isinstance(loaded.meta, dict) else {}
    if record.get("phase") != "finetune" or "config" not in record:
        raise CheckpointError("holds no fine-tuning record naming its validation images; give --box-score a number",
                              model_path)
    try:
        cfg = from_dict(FinetuneConfig, record["config"], "training.config")
    except ConfigError as e:
        raise CheckpointError(f"has a fine-tuning record that does not read: {e}", model_path) from e
    if data is not None:
        cfg.data = str(data)
    pre = loaded.preprocess
    run = load_data(cfg, pre.sam_size, pre.yolo_size, list(loaded.model_cfg.class_names))
    if run.val is None or len(run.val) == 0:
        raise InputError("has no validation images to choose the box score on; give --box-score a number",
                         Path(cfg.data))
    return run.val


@torch.no_grad()
def selection_signals(feature: Any, box: Any, items) -> Tuple[List[List[float]], List[float], List[float]]:
    """Per image of ``items`` (``sam_image``, ``yolo_image``, ``mask``): the feature model's detection scores (down
    to the lowest threshold tried, at most 8), the box model's Dice and the feature model's Dice."""
    from .box_conf import CONF_GRID
    from .embedding_cache import EmbeddingCache, encoder_fingerprint, encoder_is_frozen
    from .loss import hard_dice

    models = (feature.model.eval(), box.model.eval())
    cache = EmbeddingCache(encoder_fingerprint(models[0])) if encoder_is_frozen(models[0]) else None
    scores, box_dice, feature_dice = [], [], []
    for i in range(len(items)):
        item = items[i]
        sam, yolo, mask = item["sam_image"][None].float(), item["yolo_image"][None].float(), item["mask"][None]
        def compute(sam=sam):
            return models[0].encode_image(sam).float()[0]

        embedding = (compute() if cache is None else cache.embedding_of(sam[0], compute))[None]
        det = models[0].prompt_generator.detect(yolo, conf=min(CONF_GRID), max_det=8)[0]
        scores.append([float(s) for s in det[:, 4]])
        for model, out in ((models[1], box_dice), (models[0], feature_dice)):
            logits = model.decode(embedding, model.prompt_features(yolo), None)
            out.append(float(hard_dice(logits, mask)[0]))
    return scores, box_dice, feature_dice


def choose_for_models(feature_model: Union[str, Path], box_model: Union[str, Path],
                      data: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """The threshold for joining ``feature_model`` (dense+sparse) and ``box_model``: {"box_score", "means"
    (threshold -> mean Dice of the rule), "images", "feature_dice", "box_dice"} on the feature run's
    checkpoint-selection images."""
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..model.auto_prompt import choose_box_score

    feature_model, box_model = Path(feature_model), Path(box_model)
    feature, box = load_checkpoint(feature_model), load_checkpoint(box_model)
    items = selection_data(feature, feature_model, data)
    scores, box_dice, feature_dice = selection_signals(feature, box, items)
    score, means = choose_box_score(scores, box_dice, feature_dice)
    return {"box_score": score, "means": means, "images": len(items),
            "feature_dice": float(np.mean(feature_dice)), "box_dice": float(np.mean(box_dice))}
