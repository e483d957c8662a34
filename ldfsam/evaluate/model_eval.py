"""Evaluate a model file on the cases of a dataset folder (2D images with masks, or labelled volumes).

2D images go through the model directly: resized to the model's inputs, logits resized back to the image,
thresholded. Volumes go through the inference pipeline (``ldfsam.infer.segment_volume``, with its default
post-processing) and are compared on the input grid; reference labels are mapped to the model's classes with
the model's own label map. Distances are in mm for volumes and in pixels x ``spacing_2d`` for images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..infer.predict_2d import check_test_flips, predict_2d
from .metrics import DEFAULT_TOLERANCE_MM, pair_metrics


def select_cases(folder: Path, splits_file: Optional[str], split: str, ids: Optional[Sequence[str]] = None):
    """(kind, cases) of ``folder``, restricted to one split of a splits file, or to ``ids``, when given."""
    from ..data.layouts import find_cases

    discovery = find_cases(Path(folder))
    cases = discovery.cases
    wanted, source = (list(ids), folder) if ids is not None else (None, splits_file)
    if splits_file and ids is None:
        from ..data.splits import read_splits

        wanted = read_splits(splits_file).of(split)
    if wanted is not None:
        by_id = {c.case_id: c for c in cases}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise InputError(f"{split} cases missing from {folder}: {', '.join(missing[:5])}", source)
        cases = [by_id[i] for i in wanted]
    if not cases:
        raise InputError("no labelled cases to evaluate", folder)
    return discovery.kind, sorted(cases, key=lambda c: c.case_id)


def evaluate_model(model: str, data: Path, splits_file: Optional[str] = None, split: str = "test",
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM, spacing_2d: float = 1.0, device: str = "cpu",
                   threshold: float = 0.5, limit: Optional[int] = None, save_dir: Optional[Path] = None,
                   progress=None, ids: Optional[Sequence[str]] = None,
                   box_prompts: str = "detected", refine: bool = False,
                   precision: str = "fp32", flips: str = "none") -> List[Dict[str, Any]]:
    """Per-case, per-class metric rows of ``model`` (a name or .safetensors path) on ``data`` (all its cases,
    one split of ``splits_file``, or the cases ``ids``). ``box_prompts="ground_truth"``: a box-mode model is
    prompted with the boxes of the reference masks (2D only). ``refine``: the refinement pass of the lite family
    (``ldfsam.infer.refine``; 2D images, lite models). ``precision`` of 2D images (auto, fp32, bf16; auto: the
    precision Phase 2 picks on this machine, ``finetune.precision``): the embeddings come from the cache of that
    precision, shared with Phase 2's runs of the same encoder (volumes: the pipeline's own precision). ``flips``
    (``predict_2d.FLIPS``: none, h, hv; 2D images, lite feature-prompt or auto models): test-time flips, the logits
    averaged over the image and its horizontal (h) or also vertical and both (hv) flips, before the refinement
    pass."""
    from ..data.labels import map_labels

    kind, cases = select_cases(Path(data), splits_file, split, ids)
    cases = cases[:limit] if limit else cases
    from ..checkpoint import load_checkpoint
    from ..infer.predictor import resolve_device
    from ..models import resolve_model

    loaded = load_checkpoint(resolve_model(model), device=resolve_device(device))
    names = list(loaded.model_cfg.class_names)
    gt_boxes = box_prompts == "ground_truth"
    if gt_boxes and (kind != "2d" or not loaded.model_cfg.uses_boxes):
        raise InputError("ground-truth box prompts need a box-mode model and a 2D dataset", model)
    embeddings = encoder = None
    if kind == "2d" and loaded.model_cfg.sam.encoder == "tiny_vit":
        # The lite preset's encoder is LiteMedSAM's, frozen: the embeddings of its training run (and of earlier
        # evaluations) are valid here, and it costs 10-20× the rest of the model.
        from ..finetune.embedding_cache import EmbeddingCache, encoder_fingerprint, inference_encoder
        from ..finetune.precision import resolve_precision

        precision = resolve_precision(precision, loaded.model.pixel_mean.device)
        if precision not in ("fp32", "bf16"):
            raise InputError(f"evaluate runs 2D images in fp32 or bf16, not {precision}", model)
        embeddings = EmbeddingCache(encoder_fingerprint(loaded.model), precision=precision)
        encoder = inference_encoder(loaded.model)
    check_test_flips(flips, loaded.model_cfg, model)
    if flips != "none" and embeddings is None:
        raise InputError("test-time flips need a lite feature-prompt (or auto) model and a 2D dataset", model)
    refiner = None
    if refine:
        if embeddings is None:
            raise InputError("the refinement pass of evaluate needs a 2D dataset", data)
        from ..infer.refine import refiner_for

        refiner = refiner_for(loaded.model_cfg)
    rows: List[Dict[str, Any]] = []
    if progress is not None:
        progress.start("evaluate", total=len(cases), message=f"evaluating {model} on {len(cases)} {kind} cases")
    for i, case in enumerate(cases):
        if kind == "2d":
            from ..data.images import read_mask_image, read_rgb

            image, ref = read_rgb(case.image), read_mask_image(case.label)
            if image.shape[:2] != ref.shape:
                raise InputError(f"mask size {ref.shape[::-1]} differs from its image's {image.shape[1::-1]}",
                                 case.label)
            pred = predict_2d(loaded, image, loaded.model.pixel_mean.device, threshold, ref if gt_boxes else None,
                               embeddings, refiner, precision if embeddings is not None else "fp32", encoder,
                               flips)
            pred_classes = np.zeros(ref.shape, np.uint8)
            for c in range(pred.shape[0]):
                pred_classes[pred[c]] = c + 1
            ref_classes = ref.astype(np.uint8)  # 2D masks are binary: class 1
            spacing = (spacing_2d, spacing_2d)
        else:
            from ..data.volume import read_volume
            from ..infer.pipeline import segment_volume

            result = segment_volume(case.image, None, model=loaded, device=device, threshold=threshold)
            pred_classes = result.labels
            label_img = read_volume(case.label, label=True)
            ref_classes, _ = map_labels(_array(label_img), loaded.preprocess, case.label)
            if ref_classes.shape != pred_classes.shape:
                raise InputError(f"label map shape {ref_classes.shape} differs from its image's "
                                 f"{pred_classes.shape}", case.label)
            spacing = tuple(float(s) for s in reversed(label_img.GetSpacing()))
        if save_dir is not None:
            _save_prediction(Path(save_dir), case, kind, pred_classes, None if kind == "2d" else result.grid)
        for c, name in enumerate(names, start=1):
            m = pair_metrics(pred_classes == c, ref_classes == c, spacing, tolerance_mm)
            rows.append({"case_id": case.case_id, "class": name, **m.as_dict()})
        if progress is not None:
            progress.update("evaluate", i + 1, len(cases), case=case.case_id, dice=rows[-1]["dice"])
    return rows


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _save_prediction(folder: Path, case, kind: str, classes: np.ndarray, grid=None) -> None:
    """Write one case's predicted classes into ``folder`` (replacing an earlier prediction), never over the
    case's own image or reference (``save_dir`` inside the dataset, say)."""
    from ..errors import Arg, OutputError

    target = folder / f"{case.case_id}{'.png' if kind == '2d' else '.nii.gz'}"
    if target.resolve() in (Path(case.image).resolve(), Path(case.label).resolve()):
        raise OutputError("is a file of the dataset being evaluated; give {} a folder of its own", target,
                          arguments=[Arg("save_dir")])
    if kind == "2d":
        from ..data.images import write_label_png

        write_label_png(target, classes)
    else:
        from ..infer.outputs import write_label_map

        write_label_map(target, classes, grid, overwrite=True)
