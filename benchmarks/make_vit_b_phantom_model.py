"""Make ``vit_b-phantom``: the vit_b configuration with weights that segment the phantoms, for timing vit_b on
realistic masks (``bench_segment.py --presets vit_b-phantom``).

    python benchmarks/make_vit_b_phantom_model.py          # 16 min on two AVX2 cores (float32)

Why it exists: timing does not depend on the weights, but what happens after the model does. Random weights
give noise masks everywhere (pessimistic clean-up and writing), an untrained prompt generator that finds no
teeth, and no way to see how ``--slice-spacing auto`` adapts to the anatomy. No pretrained SAM or YOLO exists
offline and training 271 M parameters on two CPU cores is out of reach, so this model is made cheaply:

* the architecture is exactly ``model_config("vit_b")``: YOLOv8n prompt generator at 640, SAM vit_b encoder with
  SAM-Med2D adapters (271 M parameters), dense + sparse feature prompts;
* the prompt generator starts from the bundled demo model's YOLOv8n (trained at 256 px) and is fine-tuned at
  640 on phantom slices;
* the image encoder keeps its random initialisation (seed 0) and stays frozen; its embeddings of the training
  slices are computed once;
* the feature prompt heads, prompt encoder and mask decoder learn the masks (Dice + BCE) on those embeddings.

It segments the phantoms from the feature prompts (Dice 0.90 and 0.85 on the benchmark phantoms with teeth on
40% and 100% of the slices; the trained demo model: 0.93 and 0.89) and is good for nothing else. It is written
to the user's cache (``~/.cache/ldfsam/bench/vit_b-phantom.safetensors``, 0.55 GB in float16), never to the
repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
OUT = Path.home() / ".cache" / "ldfsam" / "bench" / "vit_b-phantom.safetensors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--phantoms", type=int, default=6)
    ap.add_argument("--yolo-steps", type=int, default=60)
    ap.add_argument("--sam-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "scripts"))
    from train_demo_model import _warmup_cosine, make_slices, train_prompt_generator

    from ldfsam.checkpoint import load_checkpoint, save_checkpoint
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.finetune.loss import dice_bce_loss, hard_dice
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config
    from ldfsam.models import resolve_model
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f} s] {msg}", flush=True)

    cfg = model_config("vit_b")
    pre = PreprocessConfig(target_spacing=None, sam_size=256, yolo_size=cfg.prompt_generator.image_size)
    model = build_model(cfg)
    demo = load_checkpoint(resolve_model(None)).model
    model.prompt_generator.detector.load_state_dict(demo.prompt_generator.detector.float().state_dict())
    del demo
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")

    # The same phantoms at both input sizes (make_slices is deterministic in its seeds).
    yolo_images, _, boxes = make_slices(args.phantoms, pre.yolo_size, pre)
    sam_images, masks, _ = make_slices(args.phantoms, pre.sam_size, pre)
    log(f"data: {len(sam_images)} slices, {int(masks.reshape(len(masks), -1).any(1).sum())} with teeth")
    train_prompt_generator(model, yolo_images, boxes, args.yolo_steps, args.batch, 1e-3, log)

    # Frozen parts once: encoder embeddings (bf16 autocast where `--precision auto` picks it, as at inference) and
    # the prompt generator's features.
    model.eval()
    embeddings, features = [], []
    from ldfsam.cpu_precision import auto_cpu_precision

    bf16 = auto_cpu_precision() == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for k in range(0, len(sam_images), args.batch):
            sam = torch.from_numpy(sam_images[k:k + args.batch]).float().div_(255)[:, None].expand(-1, 3, -1, -1)
            yolo = torch.from_numpy(yolo_images[k:k + args.batch]).float().div_(255)[:, None].expand(-1, 3, -1, -1)
            embeddings.append(model.encode_image(sam.contiguous()).float())
            features.append([f.half() for f in model.prompt_features(yolo.contiguous())])
            if k % (20 * args.batch) == 0:
                log(f"embedded {k + len(sam)}/{len(sam_images)} slices")
    embeddings = torch.cat(embeddings)
    features = [torch.cat([f[i] for f in features]) for i in range(3)]
    log("embeddings and prompt features cached")

    params = [p for n, p in model.named_parameters()
              if n.startswith(("feature_prompts.", "prompt_encoder.", "mask_decoder."))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = _warmup_cosine(opt, args.sam_steps)
    has = masks.reshape(len(masks), -1).any(1)
    teeth, empty = np.nonzero(has)[0], np.nonzero(~has)[0]
    rng = np.random.default_rng(2)
    model.train()
    for step in range(args.sam_steps):
        n_empty = max(1, args.batch // 8)
        idx = torch.from_numpy(np.concatenate([rng.choice(teeth, args.batch - n_empty), rng.choice(empty, n_empty)]))
        target = torch.from_numpy(masks[idx.numpy()]).float()[:, None]
        logits = model.decode(embeddings[idx], [f[idx].float() for f in features])
        loss = dice_bce_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.sam_steps - 1:
            log(f"decoder step {step}/{args.sam_steps} loss {loss.item():.4f} "
                f"dice {hard_dice(logits.detach(), target).mean().item():.3f}")
    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    training = {"script": "benchmarks/make_vit_b_phantom_model.py", "args": {k: str(v) for k, v in vars(args).items()},
                "note": "benchmark model: random frozen vit_b encoder, trained heads; phantoms only",
                "seconds": round(time.time() - t0)}
    save_checkpoint(args.out, model.half(), cfg, pre, training=training)
    log(f"saved {args.out} ({args.out.stat().st_size / 1e6:.0f} MB)")
    print(json.dumps({"model": str(args.out), "seconds": round(time.time() - t0)}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
