"""``ldfsam train --from MODEL``: improve an installed model on a handful of the user's cases.

What changes against a training from scratch (``run.py`` calls these where ``TrainConfig.init_model`` is set):

* prepare: the starting model's own preprocessing (spacing, window, classes), so the new cases look to the model
  as its inputs always did; with ``mix_phantoms`` N, N augmented phantoms of the bundled model's training
  distribution (seeds 1000, 1001, ...) join the training split (never validation or test), so that what the model
  knew is not forgotten;
* Phase 1: no teacher; the student is the starting model's prompt generator (``RUN/start/``), trained on;
* Phase 2: the starting model's configuration and weights (feature prompt heads, SAM's prompt encoder and mask
  decoder, adapters where the preset has them; ``finetune/from_model.py``), on cached embeddings where the
  encoder is frozen;
* evaluation: the starting model is evaluated on the same held-out cases (``evaluation/starting_model/``), and
  the report compares the two.

The schedule defaults (``short_schedule``) suit a handful of volumes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError, InputError
from .config import TrainConfig

START_DIR = "start"
SOURCES_DIR = "sources"
MIX_PREFIX = "mix_phantom_"
MIX_SEED = 1000  # the bundled model's training phantoms are seeds 1000-1023 (docs/models.md)

# Short schedule for a handful of cases (each can be overridden on the command line). Phase 1 keeps the model's
# prompt generator unless epochs are asked for: one epoch of the standard YOLOv8 recipe (SGD lr 0.01, mosaic) on
# a few volumes took the demo model's detector from tooth scores of 0.5-0.9 to below 0.15 (docs/training.md),
# under the 0.25 at which inference picks its slices. Asked-for epochs use a gentle recipe (GENTLE_PHASE1).
SHORT_PHASE2_EPOCHS = 6
SHORT_LR = 2e-4
SHORT_BATCH = 8
GENTLE_PHASE1 = dict(lr0=1e-3, lrf=1.0, warmup_epochs=0.0, close_mosaic=0, mosaic=0.0)


def starting_model(model: str):
    """(path, ModelConfig, PreprocessConfig, document) of an installed model name or a model file."""
    from ..checkpoint import read_checkpoint_configs
    from ..models import resolve_model

    path = resolve_model(model).resolve()
    model_cfg, pre, meta = read_checkpoint_configs(path)
    return path, model_cfg, pre, meta


def configure(cfg: TrainConfig, model: str, given: Dict[str, Any]) -> TrainConfig:
    """Set ``cfg`` up to start from ``model``; ``given`` holds the explicit values (not None: ``epochs``,
    ``phase1_epochs``, ``phase2_epochs``, ``batch``, ``lr``), which win over the short schedule."""
    path, model_cfg, pre, _ = starting_model(model)
    cfg.init_model, cfg.init_model_name = str(path), model
    pg = model_cfg.prompt_generator
    d = cfg.distill
    d.ld = dataclasses.replace(d.ld, scheme="none")  # no teacher for a handful of cases
    d.student_scale = pg.scale
    epochs1 = given.get("phase1_epochs", given.get("epochs")) or 0
    cfg.keep_prompt_generator = epochs1 == 0
    batch = given.get("batch") or SHORT_BATCH
    recipe = dict(imgsz=pg.image_size, epochs=max(1, epochs1), batch=batch, **GENTLE_PHASE1)
    d.teacher, d.student = dataclasses.replace(d.teacher, **recipe), dataclasses.replace(d.student, **recipe)
    # The learning rate is the short schedule's unless given (a --config file's finetune.lr, even when it equals
    # FinetuneConfig's own default: the value alone cannot tell set from unset).
    ft = {"epochs": given.get("phase2_epochs") or given.get("epochs") or SHORT_PHASE2_EPOCHS,
          "batch_size": batch, "lr": given.get("lr") or SHORT_LR}
    cfg.finetune = dataclasses.replace(cfg.finetune, **ft)
    cfg.prepare.spacing = pre.target_spacing
    if cfg.mix_phantoms < 0:
        raise ConfigError(f"--mix-phantoms {cfg.mix_phantoms}: give 0 or more phantom volumes")
    from ..finetune.slices import is_prepared

    if cfg.data and is_prepared(Path(cfg.data)):
        raise ConfigError(f"--from needs the folder of cases (as `ldfsam add-case` writes it), not a prepared "
                          f"folder: {cfg.data}")
    return cfg


def preprocess(cfg: TrainConfig):
    """The starting model's PreprocessConfig, with the run's label map and class names where it sets them."""
    from ..data.labels import parse_label_map

    _, _, pre, _ = starting_model(cfg.init_model)
    if cfg.prepare.label_map:
        pre.label_map = parse_label_map(cfg.prepare.label_map)
    if cfg.prepare.class_names:
        pre.class_names = list(cfg.prepare.class_names)
    return pre


# -- the data: the user's cases and the phantoms mixed in ---------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    if not dst.exists() and not dst.is_symlink():
        os.symlink(Path(src).resolve(), dst)


def build_sources(cfg: TrainConfig, root: Path, progress) -> Path:
    """``RUN/sources``: the user's cases (symbolic links, flat layout) and the phantoms; returns the folder."""
    from ..data.layouts import find_volume_cases
    from ..data.training_case import review_file
    from ..data.volume import volume_suffix

    sources = root / SOURCES_DIR
    sources.mkdir(parents=True, exist_ok=True)
    found = find_volume_cases(Path(cfg.data))
    for case in found.cases:
        if case.case_id.startswith(MIX_PREFIX):
            raise InputError(f"case names starting with {MIX_PREFIX!r} are kept for the mixed-in phantoms",
                             case.image)
        image_suffix = "" if case.image.is_dir() else volume_suffix(case.image)
        _link(case.image, sources / f"{case.case_id}{image_suffix}")
        label_suffix = volume_suffix(case.label)
        _link(case.label, sources / (f"{case.case_id}.seg.nrrd" if label_suffix == ".seg.nrrd"
                                     else f"{case.case_id}_label{label_suffix}"))
        review = review_file(case.image, case.case_id)
        if review.is_file():
            _link(review, sources / review.name)
    for k in range(cfg.mix_phantoms):
        _write_phantom(sources, k, progress)
    return sources


def _write_phantom(folder: Path, k: int, progress) -> None:
    import numpy as np
    import SimpleITK as sitk

    from ..data.synthetic import augmented_phantom
    from ..data.volume import write_label_volume, write_volume

    cid = f"{MIX_PREFIX}{k:03d}"
    image_path, label_path = folder / f"{cid}.nii.gz", folder / f"{cid}_label.nii.gz"
    if image_path.is_file() and label_path.is_file():
        return
    out, spacing = augmented_phantom(MIX_SEED + k)
    image = sitk.GetImageFromArray(np.asarray(out.image, np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    # Label map first: an image without its label map is skipped by prepare, never taken as unlabelled teeth.
    write_label_volume(out.labels, image, label_path, overwrite=True)
    write_volume(image, image_path, overwrite=True)
    progress.log("train", f"mixed-in phantom {cid} (seed {MIX_SEED + k})")


def phantom_ids(ids: List[str]) -> List[str]:
    return [i for i in ids if i.startswith(MIX_PREFIX)]


def phantoms_to_training(prepared: Path, cfg: TrainConfig) -> None:
    """The splits of a ``--from`` run: validation and test cases are drawn from the user's wholly reviewed cases
    alone (a partly reviewed case cannot be scored on its whole label map); partly reviewed cases and every
    mixed-in phantom train."""
    import json

    from ..atomic import write_text_atomic
    from ..data.prepared import MANIFEST, PreparedData
    from ..data.splits import Splits, make_splits, write_splits

    manifest = json.loads((prepared / MANIFEST).read_text(encoding="utf-8"))
    data = PreparedData(prepared)
    ids = sorted(manifest["cases"])
    mixed = phantom_ids(ids)
    partial = [i for i in ids if i not in mixed and (data.entry(i).review or {}).get("reviewed_fraction", 1) < 1]
    own = [i for i in ids if i not in mixed and i not in partial]
    p = cfg.prepare
    s = make_splits(own, test_fraction=p.test_fraction, val_fraction=p.val_fraction, seed=cfg.seed)
    splits = Splits(train=list(s.train) + partial + mixed, val=s.val, test=s.test, seed=s.seed,
                    val_fraction=s.val_fraction)
    write_splits(splits, prepared / "splits.json")
    manifest["summary"].update(train=len(splits.train), val=len(splits.val), test=len(splits.test),
                               mixed_phantoms=len(mixed), partly_reviewed=len(partial))
    manifest["yolo"] = {}  # exported again, on these splits, when Phase 1 asks for it
    write_text_atomic(prepared / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def counted_tooth_fraction(prepared: Path, ids: List[str]) -> Optional[float]:
    """The share of tooth among the pixels whose labels count in Phase 2 (the slices ``select_slices`` offers;
    of a partly reviewed case only its reviewed pixels), over cases ``ids``; None when nothing counts."""
    import numpy as np

    from ..data.prepared import PreparedData
    from ..data.slices import select_slices

    data = PreparedData(prepared)
    counted = tooth = 0
    for i in ids:
        e = data.entry(i)
        zs = select_slices(e, data.empty_ratio)
        if not zs:
            continue
        classes = np.asarray(e.classes()[zs]) > 0
        reviewed = e.reviewed()
        valid = np.ones_like(classes) if reviewed is None else np.asarray(reviewed[zs]) > 0
        counted += int(valid.sum())
        tooth += int((classes & valid).sum())
    return tooth / counted if counted else None


# A whole reviewed slice of a dental scan is mostly background (teeth: a few to 15 % of an axial slice; 2-5 % of
# the phantoms'); a review of the teeth alone (a structure and its one-pixel shell) counts about half tooth.
MOSTLY_TOOTH = 0.3


def warn_if_no_background(prepared: Path, cfg: TrainConfig, progress) -> Optional[float]:
    """Warn when the user's cases teach almost no background: a model trained on them learns "more tooth" and
    marks bone and streaks too (docs/training.md, the real head CT). Returns the tooth share of counted pixels."""
    from ..data.splits import read_splits

    own = [i for i in read_splits(prepared / "splits.json").train if not i.startswith(MIX_PREFIX)]
    share = counted_tooth_fraction(prepared, own)
    if share is not None and share > MOSTLY_TOOTH:
        hint = ("phantoms are mixed in, yet they hold no background of your scans" if cfg.mix_phantoms else
                "no phantoms are mixed in either")
        progress.log("train", f"{100 * share:.0f} % of the pixels whose labels count in your cases are tooth: "
                     f"almost no background is taught, and the new model may mark bone and metal streaks as "
                     f"teeth ({hint}). Review whole slices (every voxel of a reviewed slice counts, background "
                     f"too) or mix phantoms in (--mix-phantoms).", level="warning", tooth_share=round(share, 3))
    return share


# -- Phase 1 and Phase 2 --------------------------------------------------------------------------------------------
def start_prompt_generator(cfg: TrainConfig, root: Path) -> Path:
    """``RUN/start/prompt_generator.safetensors``: the starting model's prompt generator, Phase 1's start."""
    from ..atomic import make_folder
    from ..checkpoint import load_state, save_state
    from ..config import to_dict
    from ..model.prompt_generator import FORMAT, VERSION

    target = root / START_DIR / "prompt_generator.safetensors"
    if not target.is_file():
        make_folder(target.parent)
        # Only the file's own tensors are read: the frozen encoder (stored by reference) is not needed here.
        tensors, _ = load_state(cfg.init_model)
        prefix = "prompt_generator.detector."
        state = {k[len(prefix):]: (v.float() if v.is_floating_point() else v)
                 for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise InputError("holds no prompt generator to start Phase 1 from", cfg.init_model)
        _, model_cfg, _, _ = starting_model(cfg.init_model)
        pg = dataclasses.replace(model_cfg.prompt_generator, init_weights=None)
        save_state(target, state, {"format": FORMAT, "version": VERSION, "config": to_dict(pg),
                                   "training": {"from_model": cfg.init_model}})
    return target


def keep_prompt_generator(cfg: TrainConfig, folder) -> Dict[str, Any]:
    """Phase 1 without training: the starting model's prompt generator becomes the run's student."""
    import shutil

    from ..atomic import atomic_path, make_folder

    start = start_prompt_generator(cfg, folder.root)
    if not folder.prompt_generator.is_file():
        make_folder(folder.phase1)
        with atomic_path(folder.prompt_generator) as tmp:
            shutil.copyfile(start, tmp)
    return {"kept": str(start)}


def model_config(cfg: TrainConfig, prompt_generator: Path):
    """Phase 2's ModelConfig: the starting model's, with this run's Phase 1 prompt generator."""
    _, model_cfg, _, _ = starting_model(cfg.init_model)
    model_cfg.prompt_generator = dataclasses.replace(model_cfg.prompt_generator,
                                                     init_weights=str(Path(prompt_generator).resolve()))
    return model_cfg


def evaluate_starting_model(cfg: TrainConfig, folder, source: Path, progress) -> Optional[Dict[str, Any]]:
    """The starting model on the same held-out cases as the new one: ``evaluation/starting_model/``."""
    from ..data.splits import read_splits
    from ..evaluate.model_eval import evaluate_model
    from ..evaluate.report import summarize, write_report

    e = cfg.evaluate
    if not read_splits(folder.splits).of(e.split):
        return None
    out = folder.evaluation / "starting_model"
    rows = evaluate_model(cfg.init_model, source, str(folder.splits), e.split, e.tolerance_mm, device=cfg.device,
                          threshold=e.threshold, progress=progress)
    summary = summarize(rows, resamples=e.bootstrap, seed=cfg.seed, tolerance_mm=e.tolerance_mm)
    write_report(out, rows, summary)
    return summary
