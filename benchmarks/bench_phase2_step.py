"""Where one Phase 2 training step of the lite preset spends its time, and what the decoder's sub-pixel upscaling
saves (the Kvasir-SEG benchmark's step: cached LiteMedSAM embeddings, batch 8, YOLO 256, SAM 256).

A step on cached embeddings (``ldfsam/finetune/embedding_cache.py``) is: reading the batch's embeddings, the
frozen YOLOv8 prompt generator's forward (no gradient), the feature prompt heads, the mask decoder, the loss,
the backward pass and AdamW. Each part is timed separately, in CPU time of the process (with one thread: the
work itself, which other processes on a shared machine do not stretch as they stretch wall time) and in wall
time; the variants are interleaved step by step in one process:

- ``convolutions``: the mask decoder's output upscaling as SAM writes it (two 2×2 transposed convolutions, a
  channel LayerNorm and GELUs on the image, then the hypernetwork product): the code before the change;
- ``sub-pixel``: ``MaskDecoder.upscaled_masks`` (the same function as matrix products per sub-pixel).

Inputs are random tensors of the benchmark's shapes (time does not depend on the pixels); the networks are the
lite preset's, randomly initialised. Prints a table of milliseconds per part (median over the steps) and the
step-time ratios.

    OMP_NUM_THREADS=1 python benchmarks/bench_phase2_step.py --steps 6 --json /work/runs/phase2_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def convolution_masks(decoder, src, h: int, w: int, hyper_in):
    """SAM's own upscaling: transposed convolutions on the image, then the hypernetwork product."""
    n, _, d = src.shape
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(n, d, h, w))
    _, c, hh, ww = upscaled.shape
    return (hyper_in @ upscaled.view(n, c, hh * ww)).view(n, -1, hh, ww)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="dense+sparse", help="prompt mode (default dense+sparse)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--yolo-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up step each)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from ldfsam.finetune.config import FinetuneConfig
    from ldfsam.finetune.loss import dice_bce_loss
    from ldfsam.finetune.optim import make_optimizer
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config
    from ldfsam.model.trainable import configure_phase2

    torch.manual_seed(0)
    cfg = model_config("lite", prompt_mode=args.mode, class_names=["polyp"])
    cfg.prompt_generator.image_size = args.yolo_size
    model = build_model(cfg)
    configure_phase2(model)
    model.train()
    opt = make_optimizer(model, FinetuneConfig(lr=5e-4))
    b, g = args.batch, cfg.sam.grid
    embedding = torch.randn(b, cfg.sam.prompt_embed_dim, g, g)
    yolo = torch.rand(b, 3, args.yolo_size, args.yolo_size)
    mask = (torch.rand(b, 1, cfg.sam.image_size, cfg.sam.image_size) > 0.7).float()
    decoder = model.mask_decoder
    sub_pixel = decoder.upscaled_masks
    tmp = Path(tempfile.mkdtemp())
    for i in range(b):  # the embedding cache's files: float16 safetensors, one per image
        save_file({"embedding": embedding[i].half()}, str(tmp / f"{i}.safetensors"))

    def now():
        return time.perf_counter(), time.process_time()

    def step(variant: str) -> dict:
        decoder.upscaled_masks = sub_pixel if variant == "sub-pixel" else (
            lambda src, h, w, hyper: convolution_masks(decoder, src, h, w, hyper))
        t = [now()]
        emb = torch.stack([load_file(str(tmp / f"{i}.safetensors"))["embedding"].float() for i in range(b)])
        t.append(now())
        features = model.prompt_features(yolo)
        t.append(now())
        opt.zero_grad(set_to_none=True)
        if model.feature_prompts is not None:
            model.feature_prompts(features)  # timed apart; decode() runs the heads again as the step does
        t.append(now())
        logits = model.decode(emb, features)
        t.append(now())
        loss = dice_bce_loss(logits, mask)
        t.append(now())
        loss.backward()
        t.append(now())
        opt.step()
        t.append(now())
        names = ["embeddings read", "YOLO features", "feature prompts fwd", "heads + decoder fwd", "loss", "backward",
                 "AdamW"]
        parts = {}
        for clock, which in (("cpu", 1), ("wall", 0)):
            for name, a_, b_ in zip(names, t, t[1:]):
                parts[f"{name} ({clock})"] = b_[which] - a_[which]
            # The heads ran twice (once timed alone): the step is the total without the separately timed pass.
            parts[f"step ({clock})"] = sum(parts[f"{n} ({clock})"] for n in names if n != "feature prompts fwd")
        return parts

    variants = ["convolutions", "sub-pixel"]
    times = {v: [] for v in variants}
    for rep in range(args.steps + 1):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            parts = step(v)
            if rep:  # the first round warms up
                times[v].append(parts)
    decoder.upscaled_masks = sub_pixel
    med = {v: {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in rows[0]} for v, rows in times.items()}
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()}, {args.mode}, batch {b}, grid {g}, "
          f"YOLO {args.yolo_size}; median of {args.steps} steps, ms")
    print("| part | " + " | ".join(variants) + " |\n| --- |" + " --- |" * len(variants))
    for k in med[variants[0]]:
        print(f"| {k} | " + " | ".join(f"{med[v][k] * 1000:.0f}" for v in variants) + " |")
    ratio = {c: med["convolutions"][f"step ({c})"] / med["sub-pixel"][f"step ({c})"] for c in ("cpu", "wall")}
    print(f"step time convolutions / sub-pixel: {ratio['cpu']:.2f}x CPU time, {ratio['wall']:.2f}x wall time")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "load_average_at_end": os.getloadavg(), "torch": torch.__version__},
            "args": {k: str(v) for k, v in vars(args).items()}, "median_s": med, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
