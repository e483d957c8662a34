"""Train the bundled demo model (``ldfsam-demo``) on procedural phantoms, reproducibly, on a CPU.

    python scripts/train_demo_model.py --out ldfsam/resources/demo/ldfsam_demo.safetensors

What it is: LDFSAM's architecture at a demo size (the ``small`` preset narrowed to a 128-wide encoder and a
128-wide decoder, YOLOv8n prompt generator at 256 px, dense+sparse feature prompts), trained only on synthetic
phantoms from ``ldfsam.data.phantom``. What it is not: a clinical model; it has never seen a real scan.

Two phases as in the paper, simplified for a from-scratch demo without pretrained weights:
1. the YOLOv8n prompt generator learns to detect teeth (ultralytics' detection loss on per-tooth boxes; no
   teacher, so no localization distillation);
2. with the prompt generator frozen, SAM (encoder with adapters, prompt encoder, mask decoder) and the feature
   prompt encoder learn the masks with Dice + BCE. No pretrained SAM exists offline, so the whole encoder trains.
Weights are stored as float16 to keep the file small. Also writes the demo phantom (a seed not used in training).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

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
    from ldfsam.model.presets import model_config, sam_config

    cfg = model_config("small")
    cfg.sam = sam_config("small", embed_dim=128, num_heads=4, prompt_embed_dim=128)
    cfg.feature_prompts.mix_channels = 96
    cfg.feature_prompts.sparse_hidden = 192
    return cfg


def make_slices(n_phantoms: int, size: int, pre, seed0: int = 1000, augment: bool = False):
    """Normalised slices (uint8 N×size×size), tooth masks (bool N×size×size), YOLO boxes per slice.

    ``augment``: CBCT-realism augmentations and non-tooth anatomy (spine, rami, ...); otherwise clean phantoms.
    """
    from ldfsam.data.augment import AugmentConfig
    from ldfsam.data.synthetic import PhantomSampling, training_slices

    sampling = PhantomSampling() if augment else PhantomSampling(noise=(15.0, 70.0), anatomy_p=0.0)
    data = training_slices(n_phantoms, size, seed0, pre, sampling, None if augment else AugmentConfig.none())
    return data.images, data.masks, data.yolo()


def _warmup_cosine(opt, steps: int, warmup: int = 20):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_prompt_generator(model, images, boxes, steps: int, batch: int, lr: float, log) -> None:
    from ultralytics.cfg import get_cfg

    det = model.prompt_generator.detector
    det.args = get_cfg()
    det.train()
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


def train_sam(model, images, masks, steps: int, batch: int, lr: float, log) -> None:
    from ldfsam.finetune.loss import dice_bce_loss, hard_dice

    params = [p for n, p in model.named_parameters() if not n.startswith("prompt_generator.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = _warmup_cosine(opt, steps)
    has = masks.reshape(len(masks), -1).any(1)
    teeth, empty = np.nonzero(has)[0], np.nonzero(~has)[0]
    rng = np.random.default_rng(2)
    model.train()
    for step in range(steps):
        n_empty = batch // 8
        idx = np.concatenate([rng.choice(teeth, batch - n_empty), rng.choice(empty, n_empty)])
        img = torch.from_numpy(images[idx]).float().div_(255)[:, None].expand(-1, 3, -1, -1).contiguous()
        target = torch.from_numpy(masks[idx]).float()[:, None]
        if rng.random() < 0.5:
            img, target = img.flip(-1), target.flip(-1)
        with torch.no_grad():
            feats = model.prompt_features(img)
        logits = model.decode(model.encode_image(img), feats)
        loss = dice_bce_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"sam step {step}/{steps} loss {float(loss):.4f} dice {float(hard_dice(logits, target).mean()):.3f}")
    model.eval()


def write_phantom(folder: Path) -> None:
    from ldfsam.data.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    image, labels = make_phantom(PHANTOM_SHAPE, spacing=PHANTOM_SPACING, seed=PHANTOM_SEED, teeth_fraction=0.6)
    sitk.WriteImage(image, str(folder / "phantom.nii.gz"), True)
    sitk.WriteImage(labels, str(folder / "phantom_labels.nii.gz"), True)


def register_bundled(model: Path) -> None:
    """Record the bundled model's size and SHA256 in ``ldfsam/resources/models.json`` (entry ``ldfsam-demo``)."""
    import hashlib

    registry = REPO / "ldfsam" / "resources" / "models.json"
    data = json.loads(registry.read_text())
    entry = {
        "name": "ldfsam-demo",
        "bundled": str(model.resolve().relative_to(REPO / "ldfsam" / "resources")),
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "size": model.stat().st_size,
        "description": "Demo model bundled with ldfsam: trained on synthetic phantoms only, not a clinical model.",
    }
    data["models"] = [entry] + [m for m in data["models"] if m["name"] != "ldfsam-demo"]
    registry.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR / "ldfsam_demo.safetensors")
    ap.add_argument("--phantoms", type=int, default=24)
    ap.add_argument("--yolo-steps", type=int, default=300)
    ap.add_argument("--sam-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
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

    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f} s] {msg}", flush=True)

    cfg = demo_model_config()
    pre = PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=256)
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters")
    images, masks, boxes = make_slices(args.phantoms, 256, pre, augment=args.augment)
    log(f"data: {len(images)} slices from {args.phantoms} phantoms, {int(masks.reshape(len(masks), -1).any(1).sum())}"
        " with teeth")
    train_prompt_generator(model, images, boxes, args.yolo_steps, args.batch, 2e-3, log)
    train_sam(model, images, masks, args.sam_steps, args.batch // 2, 1e-3, log)
    training = {"script": "scripts/train_demo_model.py", "args": {k: str(v) for k, v in vars(args).items()},
                "data": f"{args.phantoms} procedural phantoms (ldfsam.data.synthetic, seeds 1000+"
                        f"{', augmented' if args.augment else ''})",
                "note": "synthetic phantoms only; not a clinical model", "seconds": round(time.time() - t0)}
    save_checkpoint(args.out, model.half(), cfg, pre, training=training)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    write_phantom(args.out.parent)
    log(f"wrote the demo phantom to {args.out.parent}")
    if args.out.resolve().parent == DEMO_DIR.resolve():
        register_bundled(args.out)
        log("recorded its size and SHA256 in ldfsam/resources/models.json")
    print(json.dumps({"model": str(args.out), "seconds": round(time.time() - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
