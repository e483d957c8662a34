"""Train the bundled demo model (``ldfsam-demo``) on procedural phantoms, reproducibly, on a CPU.

    python scripts/train_demo_model.py --augment --out ldfsam/resources/demo/ldfsam_demo.safetensors

What it is: LDFSAM of the ``lite`` preset: LiteMedSAM's pretrained TinyViT encoder (frozen, not stored in the
file: the model refers to it by the SHA256 of the LiteMedSAM weights), its pretrained prompt encoder and mask
decoder fine-tuned, dense+sparse feature prompts from a YOLOv8n prompt generator at 256 px (P3 32×32, resampled
to the 64×64 embedding grid: Phase 1 at 512 would cost four times as much CPU). Trained only on synthetic
phantoms (``ldfsam.data.synthetic``, with ``--augment`` the CBCT-realism augmentations and non-tooth anatomy of
``ldfsam.data.augment``); with ``--pseudo-volumes`` / ``--negative-volumes`` Phase 2 also sees real CT slices
labelled by a teacher model's automatic output or as background (``scripts/demo_pseudo_labels.py``: knowledge
distillation, no hand-made label). What it is not: a clinical model; it has never seen a labelled real scan.

Two phases as in the paper, simplified for a CPU:
1. the YOLOv8n prompt generator learns to detect teeth (ultralytics' detection loss on per-tooth boxes; no
   teacher, so no localization distillation), from random weights (``--yolo-init scratch``, the bundled model) or
   from the COCO-pretrained YOLOv8n (``--yolo-init auto``: ``yolov8n-coco`` where installed, Ultralytics weights,
   AGPL-3.0), started as ``ldfsam distill`` starts its student (pretrained BatchNorm frozen by default);
2. with the prompt generator and the encoder frozen, each training slice is encoded once
   (``ldfsam.finetune.embedding_cache``), then the feature prompt heads, SAM's "no mask" embedding and the mask
   decoder learn the masks with Dice + BCE.
The trained tensors are stored as float16 to keep the file small. Also writes the demo phantom (a seed not used
in training).

``--encoder half`` runs Phase 2 on the embeddings of the lite family's distilled half-resolution encoder
(``ldfsam.infer.encoder_choice``, about a third of TinyViT's operations) instead of LiteMedSAM's own; the file
records it (``SamConfig.trained_encoder``), so segmentation uses that encoder by default. ``--saliency-from FILE``
copies SPD's saliency head of another demo model file (``scripts/train_saliency_head.py`` adds it) unchanged.
``--from FILE`` starts from a trained demo model instead (its prompt generator, saliency head and configuration
kept, Phase 1 skipped): Phase 2 continues from its feature prompt heads and decoder, e.g. on the other encoder.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "ldfsam" / "resources" / "demo"
# Shipped phantom: its seed is outside the training seeds.
PHANTOM_SEED = 7
PHANTOM_SHAPE = (72, 160, 160)
PHANTOM_SPACING = 0.4


def demo_model_config():
    from ldfsam.model.presets import model_config

    cfg = model_config("lite")
    cfg.prompt_generator.image_size = 256
    return cfg


def make_slices(n_phantoms: int, size: int, pre, seed0: int = 1000, augment: bool = False):
    """Normalised slices (uint8 N×size×size), tooth masks (bool N×size×size), YOLO boxes per slice.

    ``augment``: CBCT-realism augmentations and non-tooth anatomy (spine, rami, ...); otherwise clean phantoms.
    """
    from ldfsam.data.augment import AugmentConfig
    from ldfsam.data.synthetic import PhantomSampling, training_slices

    sampling = PhantomSampling() if augment else PhantomSampling.clean()
    data = training_slices(n_phantoms, size, seed0, pre, sampling, None if augment else AugmentConfig.none())
    return data.images, data.masks, data.yolo()


def _warmup_cosine(opt, steps: int, warmup: int = 20):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def init_prompt_generator(model, init: str, bn: str, images: np.ndarray, log) -> Optional[List[str]]:
    """Start the prompt generator from pretrained weights the way ``ldfsam distill`` starts its student
    (``ldfsam.distill.weights`` / ``bn_init``): ``init`` "auto" (the registry's YOLOv8n weights where installed, else
    random), "scratch", a registry name or a prompt generator file. Returns the BatchNorm layers to keep training
    (the rest frozen) when ``bn`` is "frozen" and the weights' BatchNorm was folded, else None."""
    from ldfsam.distill.bn_init import fresh_batchnorms, reestimate_bn
    from ldfsam.distill.weights import has_folded_bn, load_init_source, resolve_init, transfer_weights
    from ldfsam.progress import Progress

    det = model.prompt_generator.detector
    init = resolve_init("prompt generator", init, model.cfg.prompt_generator.scale, Progress("bar"))
    if init == "scratch":
        log("prompt generator: random initialisation")
        return None
    source = load_init_source(init)
    done, total = transfer_weights(det, source)
    log(f"prompt generator: {done} of {total} tensors from {init} (the class branch keeps its fresh initialisation)")
    if not has_folded_bn(init):
        return None
    if bn == "frozen":
        return fresh_batchnorms(det, source)
    # As Phase1Trainer: the BatchNorm statistics re-estimated on 256 training images, the eval-mode map unchanged.
    layers, seen = reestimate_bn(det, (_rgb(images[i:i + 16]) for i in range(0, min(256, len(images)), 16)))
    log(f"prompt generator: BatchNorm statistics re-estimated on {seen} slices ({layers} layers)")
    return None


def train_prompt_generator(model, images, boxes, steps: int, batch: int, lr: float, log,
                           train_bn: Optional[List[str]] = None) -> None:
    """``train_bn``: with pretrained weights whose BatchNorm was folded and is kept frozen, the layers that still
    normalise (those the weights do not cover); None: every BatchNorm trains."""
    from ultralytics.cfg import get_cfg

    from ldfsam.distill.bn_init import freeze_bn

    det = model.prompt_generator.detector
    det.args = get_cfg()
    det.train()
    if train_bn is not None:
        n = freeze_bn(det, skip=train_bn)
        log(f"prompt generator: {n} pretrained BatchNorm layers frozen, {len(train_bn)} fresh ones train")
    for p in det.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(det.parameters(), lr=lr, weight_decay=5e-4)
    sched = _warmup_cosine(opt, steps)
    rng = np.random.default_rng(1)
    for step in range(steps):
        idx = rng.integers(0, len(images), batch)
        img = torch.from_numpy(images[idx]).float().div_(255)[:, None].expand(-1, 3, -1, -1).contiguous()
        rows = [(i, b) for i, j in enumerate(idx) for b in boxes[j]]
        batch_idx = torch.tensor([i for i, _ in rows], dtype=torch.float32)
        cls = torch.tensor([[b[0]] for _, b in rows], dtype=torch.float32).view(-1, 1)
        xywh = torch.tensor(np.array([b[1:] for _, b in rows]), dtype=torch.float32).view(-1, 4)
        if rng.random() < 0.5:  # left-right mirror, boxes too
            img = img.flip(-1)
            xywh[:, 0] = 1.0 - xywh[:, 0]
        loss, items = det.loss({"img": img, "batch_idx": batch_idx, "cls": cls, "bboxes": xywh})
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(det.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"yolo step {step}/{steps} loss {float(loss.detach().sum()):.3f} "
                + " ".join(f"{k} {float(v):.3f}" for k, v in items.items()))
    det.eval()
    for p in det.parameters():
        p.requires_grad_(False)


def train_decoder(model, images, masks, steps: int, batch: int, lr: float, max_slices: int, log,
                  extra: Optional[tuple] = None) -> None:
    """Phase 2 on cached embeddings: at most ``max_slices`` slices (those with teeth first, one in eight empty),
    each encoded once by the frozen encoder; then the Phase 2 parameters train with Dice + BCE.
    ``extra``: (images, masks) of further slices that are all used (the pseudo-labelled real CT slices)."""
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encode, encoder_fingerprint, image_key
    from ldfsam.finetune.loss import dice_bce_loss, hard_dice
    from ldfsam.finetune.precision import autocast, resolve_precision
    from ldfsam.model.trainable import configure_phase2

    rng = np.random.default_rng(2)
    has = masks.reshape(len(masks), -1).any(1)
    teeth, empty = np.nonzero(has)[0], np.nonzero(~has)[0]
    n_empty = min(len(empty), max_slices // 8)
    n_teeth = min(len(teeth), max_slices - n_empty)
    chosen = np.sort(np.concatenate([rng.choice(teeth, n_teeth, replace=False),
                                     rng.choice(empty, n_empty, replace=False)]))
    if extra is not None:
        chosen = np.concatenate([chosen, np.arange(len(images), len(images) + len(extra[0]))])
        images, masks = np.concatenate([images, extra[0]]), np.concatenate([masks, extra[1]])
    # bf16 autocast where the CPU has native bf16 (2-3× faster for TinyViT and the decoder), else fp32.
    precision = resolve_precision("auto", torch.device("cpu"))
    cache = EmbeddingCache(encoder_fingerprint(model), precision=precision)
    model.eval()
    embeddings = []
    t0 = time.time()
    with torch.no_grad():
        for start in range(0, len(chosen), 8):
            img = _rgb(images[chosen[start:start + 8]])
            keys = [image_key(x) for x in img]
            found = [cache.get(k) for k in keys]
            if any(f is None for f in found):
                fresh = encode(model, img, precision)
                for k, e in zip(keys, fresh):
                    cache.put(k, e)
                found = list(fresh)
            embeddings.extend(e.to(torch.float16) for e in found)
            if start % 80 == 0:
                log(f"embeddings {start + len(keys)}/{len(chosen)} ({time.time() - t0:.0f} s, {precision})")
    embeddings = torch.stack(embeddings)
    configure_phase2(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = _warmup_cosine(opt, steps)
    model.train()
    for step in range(steps):
        idx = rng.integers(0, len(chosen), batch)
        img = _rgb(images[chosen[idx]])
        target = torch.from_numpy(masks[chosen[idx]]).float()[:, None]
        with autocast(precision, torch.device("cpu")):
            logits = model.decode(embeddings[idx].float(), model.prompt_features(img))
        loss = dice_bce_loss(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"sam step {step}/{steps} loss {float(loss):.4f} dice {float(hard_dice(logits, target).mean()):.3f}"
                + (f" alpha {float(model.feature_prompts.alpha):.3f}" if model.feature_prompts.alpha is not None
                   else ""))
    model.eval()


def copy_saliency_head(model, cfg, path: Path) -> dict:
    """Give ``model`` (configuration ``cfg``) the saliency head of the model file ``path``, unchanged; returns how
    that head was trained (the file's record)."""
    from ldfsam.checkpoint import load_checkpoint, read_checkpoint_meta

    other = load_checkpoint(path)
    if getattr(other.model, "saliency_head", None) is None:
        raise SystemExit(f"{path}: has no saliency head")
    cfg.saliency = other.model_cfg.saliency
    model.saliency_head = other.model.saliency_head.float()
    return dict(read_checkpoint_meta(path).get("training", {}).get("saliency", {}), copied_from=path.name)


def _rgb(images: np.ndarray) -> torch.Tensor:
    """uint8 N×S×S slices -> N×3×S×S float in [0, 1]."""
    return torch.from_numpy(images).float().div_(255)[:, None].expand(-1, 3, -1, -1).contiguous()


def write_phantom(folder: Path) -> None:
    from ldfsam.data.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    image, labels = make_phantom(PHANTOM_SHAPE, spacing=PHANTOM_SPACING, seed=PHANTOM_SEED, teeth_fraction=0.6)
    sitk.WriteImage(image, str(folder / "phantom.nii.gz"), True)
    sitk.WriteImage(labels, str(folder / "phantom_labels.nii.gz"), True)


DESCRIPTION = "Demo model bundled with ldfsam: trained on synthetic phantoms only, not a clinical model."
DESCRIPTION_PSEUDO = ("Demo model bundled with ldfsam: trained on synthetic phantoms and on real head CT slices "
                      "labelled by an earlier demo model's output (no hand-made label); not a clinical model.")


def register_bundled(model: Path, description: str = DESCRIPTION) -> None:
    """Record the bundled model's size and SHA256 in ``ldfsam/resources/models.json`` (entry ``ldfsam-demo``)."""
    import hashlib

    registry = REPO / "ldfsam" / "resources" / "models.json"
    data = json.loads(registry.read_text())
    entry = {
        "name": "ldfsam-demo",
        "bundled": str(model.resolve().relative_to(REPO / "ldfsam" / "resources")),
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "size": model.stat().st_size,
        "description": description,
    }
    data["models"] = [entry] + [m for m in data["models"] if m["name"] != "ldfsam-demo"]
    registry.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    from ldfsam.distill.config import DistillConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR / "ldfsam_demo.safetensors")
    ap.add_argument("--phantoms", type=int, default=24)
    ap.add_argument("--yolo-steps", type=int, default=300)
    ap.add_argument("--sam-steps", type=int, default=500)
    ap.add_argument("--sam-slices", type=int, default=480, help="slices encoded for Phase 2 (each once)")
    ap.add_argument("--phase1", type=Path, help="prompt generator file: loaded when it exists (Phase 1 skipped), "
                                                "else written after Phase 1")
    ap.add_argument("--yolo-init", default="scratch",
                    help="Phase 1 start: auto (the pretrained yolov8n-coco where installed, Ultralytics weights, "
                         "AGPL-3.0), scratch, a registry name or a prompt generator file")
    ap.add_argument("--pretrained-bn", choices=("frozen", "reestimate"), default=DistillConfig.pretrained_bn,
                    help="BatchNorm of pretrained weights folded into their convolutions (ldfsam.distill.bn_init)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", choices=("full", "half"), default="full",
                    help="the image encoder Phase 2 trains on and the model segments with (full: LiteMedSAM's "
                         "TinyViT; half: the distilled half-resolution encoder, ldfsam.infer.encoder_choice)")
    ap.add_argument("--from", dest="from_model", type=Path,
                    help="a trained demo model file to continue from (Phase 1 skipped; Phase 2 from its weights)")
    ap.add_argument("--saliency-from", type=Path,
                    help="a demo model file whose saliency head (scripts/train_saliency_head.py) is copied")
    ap.add_argument("--pseudo-volumes", nargs="+", metavar="PATH[:Z0-Z1]",
                    help="real volumes whose slices join Phase 2 with the teacher's automatic output as masks "
                         "(scripts/demo_pseudo_labels.py)")
    ap.add_argument("--negative-volumes", nargs="+", metavar="PATH[:Z0-Z1]",
                    help="real volumes without teeth (e.g. a head CT's cranium) whose slices join Phase 2 as "
                         "background")
    ap.add_argument("--pseudo-teacher", default="ldfsam-demo",
                    help="the model whose automatic output labels --pseudo-volumes (default: the bundled demo model)")
    ap.add_argument("--augment", action="store_true",
                    help="train on augmented phantoms with non-tooth anatomy (ldfsam.data.augment, docs/data.md)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.model.build import build_model
    from ldfsam.model.pretrained import load_pretrained_sam

    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f} s] {msg}", flush=True)

    cfg = demo_model_config()
    pre = PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256)
    if args.from_model is not None:
        from ldfsam.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.from_model)
        model, cfg, pre = loaded.model.float(), loaded.model_cfg, loaded.preprocess
        log(f"model from {args.from_model}")
    else:
        model = build_model(cfg)
        load_pretrained_sam(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters")
    images, masks, boxes = make_slices(args.phantoms, 256, pre, augment=args.augment)
    log(f"data: {len(images)} slices from {args.phantoms} phantoms, {int(masks.reshape(len(masks), -1).any(1).sum())}"
        " with teeth")
    if args.from_model is not None:
        pass  # its prompt generator
    elif args.phase1 is not None and args.phase1.is_file():
        from ldfsam.model.prompt_generator import load_prompt_generator_weights

        state, _, _ = load_prompt_generator_weights(args.phase1)
        model.prompt_generator.load_weights(state, args.phase1)
        log(f"prompt generator from {args.phase1}")
    else:
        train_bn = init_prompt_generator(model, args.yolo_init, args.pretrained_bn, images, log)
        train_prompt_generator(model, images, boxes, args.yolo_steps, args.batch, 2e-3, log, train_bn)
        if args.phase1 is not None:
            from ldfsam.model.prompt_generator import save_prompt_generator

            save_prompt_generator(args.phase1, model.prompt_generator.detector, cfg.prompt_generator,
                                  training={"script": "scripts/train_demo_model.py", "yolo_steps": args.yolo_steps,
                                            "init": args.yolo_init, "pretrained_bn": args.pretrained_bn})
            log(f"saved the prompt generator to {args.phase1}")
    if args.encoder != "full":
        from ldfsam.infer.encoder_choice import select_encoder

        cfg.sam.trained_encoder = args.encoder
        select_encoder(model, args.encoder)
        log(f"Phase 2 on the {args.encoder} encoder's embeddings")
    extra, pseudo = None, None
    if args.pseudo_volumes or args.negative_volumes:
        import hashlib

        from demo_pseudo_labels import pseudo_label_slices

        from ldfsam.infer.model_loading import check_model_file, load_model

        teacher_file = check_model_file(args.pseudo_teacher)
        teacher_sha = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
        teacher = load_model(teacher_file) if args.pseudo_volumes else None
        parts = [pseudo_label_slices(specs, t, 256, pre, log)
                 for specs, t in ((args.pseudo_volumes, teacher), (args.negative_volumes, None)) if specs]
        del teacher
        extra = [np.concatenate([p[i] for p in parts]) for i in (0, 1)]
        pseudo = [r for p in parts for r in p[2]]
    train_decoder(model, images, masks, args.sam_steps, args.batch // 2, 1e-4 * 5, args.sam_slices, log, extra)
    if args.encoder != "full":
        select_encoder(model, "full")  # the file refers to LiteMedSAM's encoder; the student is built from it
    saliency = None
    if args.saliency_from is not None:
        saliency = copy_saliency_head(model, cfg, args.saliency_from)
        log(f"saliency head copied from {args.saliency_from}")
    training = {"script": "scripts/train_demo_model.py", "args": {k: str(v) for k, v in vars(args).items()},
                "data": f"{args.phantoms} procedural phantoms (ldfsam.data.synthetic, seeds 1000+"
                        f"{', augmented' if args.augment else ''})",
                "note": "synthetic phantoms only; not a clinical model", "seconds": round(time.time() - t0)}
    if saliency is not None:
        training["saliency"] = saliency
    if pseudo is not None:
        training["pseudo_labels"] = {"teacher": str(args.pseudo_teacher), "teacher_sha256": teacher_sha,
                                     "volumes": pseudo, "note": "real CT slices labelled by the teacher's automatic "
                                                                "output (knowledge distillation), not by hand"}
        training["note"] = ("synthetic phantoms and real CT slices labelled by a model or as background; not a "
                            "clinical model")
    # float16 for what training made; the encoder stays as LiteMedSAM published it, so the file refers to it.
    for name, module in model.named_children():
        if name != "image_encoder":
            module.half()
    save_checkpoint(args.out, model, cfg, pre, training=training)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    write_phantom(args.out.parent)
    log(f"wrote the demo phantom to {args.out.parent}")
    if args.out.resolve().parent == DEMO_DIR.resolve():
        register_bundled(args.out, DESCRIPTION if pseudo is None else DESCRIPTION_PSEUDO)
        log("recorded its size and SHA256 in ldfsam/resources/models.json")
    print(json.dumps({"model": str(args.out), "seconds": round(time.time() - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
