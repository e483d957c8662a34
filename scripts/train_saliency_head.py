"""Add SPD's saliency head to the bundled demo model, trained on phantom embeddings with everything else frozen.

    nice -n 10 python scripts/train_saliency_head.py            # rewrites ldfsam/resources/demo/ldfsam_demo.safetensors

The demo model was trained before the head existed (``scripts/train_demo_model.py``); re-running that whole script
for a 17.5 k-parameter head would change every other tensor too. This script keeps every tensor of the file as
it is and adds ``saliency_head.*`` (float16, 35 kB) and ``model.saliency`` in its configuration.

Training data are the embeddings prompted segmentation itself computes (``ldfsam.infer.slice_sam``: LiteMedSAM's
frozen TinyViT, the volume's intensity window), each encoded once, of phantoms with seeds the demo model and the
tests do not use: whole slices (what a click without a box sees) and the views around single teeth that a box
gives (``Propagator``'s view: three times the box's side), on slices across each tooth and a few beyond its ends
(where the prior must say "no tooth" for propagation to stop). Targets: every tooth voxel (the class "tooth").
Loss: Dice + BCE on the 256×256 model image, as Phase 2's saliency term (``ldfsam.finetune.spd``).

SPD's pairwise slice consistency on the prior itself (``--psc W``, row (d) of ``benchmarks/bench_noisy_prompts.py``):
``--pairs N`` adds N pairs of adjacent whole slices (z, z+1) per phantom of ``PAIR_SEEDS``, at the geometry
``bench_noisy_prompts`` segments (whole 160×160 slices of 0.5 × 0.5 × 1 mm); with ``W`` > 0 each step adds
W × ``finetune.spd.psc_loss`` of the head's map on z+1 against its map on z, detached (uni-directional), near
the two slices' teeth. Prompted segmentation decodes with LiteMedSAM's published decoder, so the head's map is the
one prediction of a model that reaches it: PSC is put on that map. The pair embeddings join the Dice + BCE pool
whatever W is, and the pairs are drawn whether or not W > 0, so runs with and without PSC differ in that term only.

    python scripts/train_saliency_head.py --pairs 6 --psc 0.1 --out prior_psc.safetensors --cache CACHE
    python scripts/train_saliency_head.py --pairs 6 --psc 0 --out prior_no_psc.safetensors --cache CACHE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "ldfsam" / "resources" / "demo" / "ldfsam_demo.safetensors"
SEEDS = range(3000, 3003)  # training phantoms; 3100 is held out for the report below
HELD_OUT = 3100
SHAPE = (40, 192, 192)
SPACING = 0.25
PAIR_SEEDS = range(3010, 3013)  # phantoms of adjacent-slice pairs (--pairs), at bench_noisy_prompts' geometry
PAIR_SHAPE = (40, 160, 160)
PAIR_SPACING = (0.5, 0.5, 1.0)  # x, y, z mm
HELD_OUT_PAIRS = 3110  # 6 pairs at that geometry, held out for the report


def phantom_items(seed: int, parts, rng: np.random.Generator, n_full: int, n_teeth: int, per_tooth: int):
    """(embedding 256×64×64 float16, target 256×256 bool) of one phantom's whole slices and tooth views."""
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.data.phantom_anatomy import Anatomy
    from ldfsam.data.preprocess import PreprocessConfig, intensity_window
    from ldfsam.infer.prompts import VoxelPrompt
    from ldfsam.infer.propagate import Propagator
    from ldfsam.infer.slice_sam import SliceSAM

    image, labels = make_phantom(SHAPE, SPACING, seed=seed, anatomy=Anatomy() if seed % 2 else None)
    volume, truth = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    sam = SliceSAM(parts, volume, intensity_window(volume, PreprocessConfig()), cache_bytes=0)
    jobs = [(int(z), None) for z in rng.choice(SHAPE[0], n_full, replace=False)]
    teeth = [int(t) for t in np.unique(truth) if t]
    for fdi in rng.choice(teeth, min(n_teeth, len(teeth)), replace=False):
        z, y, x = np.nonzero(truth == fdi)
        box = (int(z.min()), int(z.max()), int(y.min()) - 1, int(y.max()) + 1, int(x.min()) - 1, int(x.max()) + 1)
        view = Propagator(sam, VoxelPrompt("t", box, True, [], (0, SHAPE[0] - 1)), (SPACING,) * 3).view
        lo, hi = max(0, box[0] - 3), min(SHAPE[0] - 1, box[1] + 3)
        jobs += [(int(k), view) for k in np.unique(np.linspace(lo, hi, per_tooth).round().astype(int))]
    out = []
    for z, view in jobs:
        view = view or sam.full_view()
        emb = sam.embedding(z, view)[0].to(torch.float16)
        target = torch.from_numpy(truth[z, view[0]:view[1], view[2]:view[3]] > 0).float()[None, None]
        _, h, w = sam._geometry(view)
        target = F.interpolate(target, size=(h, w), mode="nearest")
        target = F.pad(target, (0, sam.size - w, 0, sam.size - h))[0, 0] > 0.5
        out.append((emb, target))
    return out


def pair_items(seed: int, parts, rng: np.random.Generator, n_pairs: int):
    """(embedding, target) of ``n_pairs`` pairs of adjacent whole slices (z, z+1) of one phantom, in that order:
    items 2k and 2k+1 are a pair. The z are drawn among the slices that hold teeth, the tooth rows' ends included
    (where PSC pulls the map on z+1 towards z's)."""
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.data.phantom_anatomy import Anatomy
    from ldfsam.data.preprocess import PreprocessConfig, intensity_window
    from ldfsam.infer.slice_sam import SliceSAM

    image, labels = make_phantom(PAIR_SHAPE, PAIR_SPACING, seed=seed, anatomy=Anatomy() if seed % 2 else None)
    volume, truth = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    sam = SliceSAM(parts, volume, intensity_window(volume, PreprocessConfig()), cache_bytes=0)
    zs = np.nonzero(truth.any((1, 2)))[0]
    zs = zs[zs + 1 < PAIR_SHAPE[0]]
    out = []
    for z in sorted(rng.choice(zs, min(n_pairs, len(zs)), replace=False)):
        for k in (int(z), int(z) + 1):
            view = sam.full_view()
            emb = sam.embedding(k, view)[0].to(torch.float16)
            target = torch.from_numpy(truth[k] > 0).float()[None, None]
            _, h, w = sam._geometry(view)
            target = F.interpolate(target, size=(h, w), mode="nearest")
            out.append((emb, F.pad(target, (0, sam.size - w, 0, sam.size - h))[0, 0] > 0.5))
    return out


def cached(folder, seed: int, make, name: str = "phantom"):
    """``make()``'s (embedding, target) list, kept in ``folder`` (None: not kept)."""
    from safetensors.torch import load_file, save_file

    path = None if folder is None else Path(folder) / f"{name}_{seed}.safetensors"
    if path is not None and path.is_file():
        t = load_file(str(path))
        return list(zip(t["embeddings"], t["targets"]))
    items = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": torch.stack([e for e, _ in items]), "targets": torch.stack([m for _, m in items])},
                  str(path))
    return items


def psc_term(head, emb: torch.Tensor, tgt: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Uni-directional PSC (``finetune.spd.psc_loss``) of the head's maps on the pairs (first, first + 1)."""
    from ldfsam.finetune.spd import psc_loss

    here = head.logits_at(emb[first].float(), 256)
    there = head.logits_at(emb[first + 1].float(), 256)
    return psc_loss(here, there, tgt[first], tgt[first + 1], torch.ones(len(first), dtype=torch.bool))


@torch.no_grad()
def held_out_pairs(head, pairs, threshold: float) -> dict:
    """On held-out adjacent whole slices: the map's pixel Dice against the teeth, and how much the maps of z and
    z+1 agree (soft Dice) against how much the teeth of z and z+1 do."""
    prob = torch.sigmoid(head.logits_at(torch.stack([e for e, _ in pairs]).float(), 256))[:, 0]
    ref = torch.stack([t for _, t in pairs])
    pred = prob >= threshold
    dice = 2 * (pred & ref).sum().item() / max(1, pred.sum().item() + ref.sum().item())
    a, b = prob[0::2], prob[1::2]
    agree = (2 * (a * b).sum() / (a + b).sum().clamp_min(1e-6)).item()
    ra, rb = ref[0::2].float(), ref[1::2].float()
    truth = (2 * (ra * rb).sum() / (ra + rb).sum().clamp_min(1e-6)).item()
    return {"held_out_pairs_seed": HELD_OUT_PAIRS, "pairs_pixel_dice": round(dice, 4),
            "pairs_adjacent_map_dice": round(agree, 4), "pairs_adjacent_truth_dice": round(truth, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--out", type=Path, default=DEMO)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", type=Path, help="keep each phantom's embeddings here (a re-run trains at once)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=0, help="adjacent whole-slice pairs per phantom of PAIR_SEEDS")
    ap.add_argument("--psc", type=float, default=0.0, help="weight of PSC on the head's maps of those pairs")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "scripts"))
    from train_demo_model import register_bundled

    from ldfsam.checkpoint import load_state
    from ldfsam.finetune.spd import saliency_loss
    from ldfsam.infer.slice_sam import litemedsam_parts
    from ldfsam.model.config import SaliencyConfig
    from ldfsam.model.saliency import SaliencyHead

    tensors, document = load_state(args.model)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("saliency_head.")}
    parts = litemedsam_parts()
    t0 = time.time()
    items = []
    for seed in SEEDS:
        items += cached(args.cache, seed, lambda s=seed: phantom_items(s, parts, np.random.default_rng(s), n_full=4,
                                                                       n_teeth=3, per_tooth=5))
        print(f"seed {seed}: {len(items)} embeddings ({time.time() - t0:.0f} s)", flush=True)
    pairs = []
    for seed in PAIR_SEEDS if args.pairs else ():
        pairs += cached(args.cache, seed, lambda s=seed: pair_items(s, parts, np.random.default_rng(s), args.pairs),
                        name=f"pairs{args.pairs}")
        print(f"pairs seed {seed}: {len(pairs) // 2} pairs ({time.time() - t0:.0f} s)", flush=True)
    first_pair = len(items)
    items += pairs
    held_pairs = cached(args.cache, HELD_OUT_PAIRS, lambda: pair_items(HELD_OUT_PAIRS, parts,
                                                                         np.random.default_rng(1), 6),
                        name="pairs6") if args.pairs else []
    held = cached(args.cache, HELD_OUT, lambda: phantom_items(HELD_OUT, parts, np.random.default_rng(1), n_full=2,
                                                              n_teeth=2, per_tooth=4))
    cfg = SaliencyConfig(enabled=True)
    head = SaliencyHead(256, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    emb = torch.stack([e for e, _ in items])
    tgt = torch.stack([t for _, t in items])[:, None].float()
    for step in range(args.steps):
        idx = torch.randint(len(items), (args.batch,))
        loss = saliency_loss(head.logits_at(emb[idx].float(), 256), tgt[idx])
        if pairs:
            a = first_pair + 2 * torch.randint(len(pairs) // 2, (max(1, args.batch // 4),))
            if args.psc > 0:
                loss = loss + args.psc * psc_term(head, emb, tgt, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    head.eval()
    with torch.no_grad():
        prob = torch.sigmoid(head.logits_at(torch.stack([e for e, _ in held]).float(), 256))
    ref = torch.stack([t for _, t in held])[:, None]
    pred = prob >= cfg.threshold
    dice = 2 * (pred & ref).sum().item() / max(1, pred.sum().item() + ref.sum().item())
    middle = ((prob > 0.1) & (prob < 0.9)).float().mean().item()
    report = {"psc": args.psc, "pairs_per_phantom": args.pairs, "held_out_seed": HELD_OUT,
              "pixel_dice": round(dice, 4), "share_between_0.1_and_0.9": round(middle, 4),
              "training_embeddings": len(items), "steps": args.steps, "seconds": round(time.time() - t0, 1)}
    if held_pairs:
        report.update(held_out_pairs(head, held_pairs, cfg.threshold))
    print(json.dumps(report), flush=True)
    for name, value in head.state_dict().items():
        tensors[f"saliency_head.{name}"] = value.to(torch.float16)
    document["model"]["saliency"] = {"enabled": True, "hidden": cfg.hidden, "threshold": cfg.threshold}
    document.setdefault("training", {})["saliency"] = {
        "script": "scripts/train_saliency_head.py", "phantom_seeds": [SEEDS.start, SEEDS.stop - 1], **report}
    if args.pairs:
        document["training"]["saliency"]["pair_seeds"] = [PAIR_SEEDS.start, PAIR_SEEDS.stop - 1]
    from ldfsam.checkpoint import save_state

    save_state(args.out, tensors, document)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)
    if args.out.resolve() == DEMO.resolve():
        register_bundled(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
