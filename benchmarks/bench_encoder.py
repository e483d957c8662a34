"""Speed of LiteMedSAM's TinyViT encoder on the CPU, and the Dice cost of smaller input sizes.

Part 1, speed: images/s and achieved GFLOP/s of the encoder against the machine's measured matmul peak (fp32 and
bf16, measured in the same run), for input sizes 256/192/128 and batch sizes 1..8, for each variant:

- ``eager``: TinyViT as loaded (conv + BatchNorm, NCHW), fp32: the layout of LiteMedSAM's own code ("before");
- ``plain``: ``prepare_for_inference(fused=False)``: prepared, but the plain modules (not the fused CPU kernels);
- ``fused``: ``prepare_for_inference`` (BatchNorm folded into the convolutions, channels_last, bias tables
  gathered once; in float32 on the CPU oneDNN's fused kernels, one image at a time), fp32;
- ``fused-bf16``: the same under bf16 autocast;
- ``compiled``/``compiled-bf16``: ``torch.compile`` of the fused encoder (inductor, weights frozen), where it
  works; compile time is reported separately and excluded from the rates.

Every variant's output is compared with the eager fp32 one (max absolute difference, cosine similarity).

Part 2, Dice: zero-shot box-prompted LiteMedSAM on Kvasir-SEG images (box from the reference mask) at input sizes
256/192/128, Dice at the image's original resolution, mean with a 95 % bootstrap CI.

    python benchmarks/bench_encoder.py --json /work/runs/bench_encoder.json
    python benchmarks/bench_encoder.py --interleave 5 --variants fused plain --sizes 256 --batches 4 --threads 2 \
        --dice-images 0      # on a shared machine: ratios within rounds, wall and CPU time
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent


def machine_info(threads: int) -> dict:
    import torch

    from ldfsam.cpu_precision import cpu_name as _cpu_name
    from ldfsam.cpu_precision import cpu_supports_bf16

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw",
                                             "amx_bf16", "amx_tile", "avx_vnni"})
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": threads, "isa_flags": isa,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_supports_bf16(),
            "torch": torch.__version__, "python": platform.python_version(), "load_average": os.getloadavg()}


def encoder_flops(size: int) -> float:
    """FLOPs of one image (matmuls and convolutions, depthwise included, as torch counts them: 2 per MAC),
    counted on the meta device: shapes only, no arithmetic."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ldfsam.model.tiny_vit import TinyViT

    with torch.device("meta"):
        encoder = TinyViT(image_size=size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.empty(1, 3, size, size, device="meta"))
    return float(counter.get_total_flops())


def _autocast(bf16: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def seconds_per_image(fn, x, bf16: bool, repeat: int) -> float:
    """Best of ``repeat`` timed batches (after one warm-up), per image."""
    import torch

    best = float("inf")
    with torch.inference_mode(), _autocast(bf16):
        fn(x)
        for _ in range(repeat):
            t = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t)
    return best / x.shape[0]


def agreement(fn, reference, x, bf16: bool) -> dict:
    import torch

    with torch.inference_mode(), _autocast(bf16):
        out = fn(x).float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), reference.flatten(1)).min().item()
    return {"max_abs_diff": (out - reference).abs().max().item(), "min_cosine": cos}


def variants(encoder, want: list, log) -> dict:
    """name -> (callable, bf16, compile seconds or None)."""
    from ldfsam.model.tiny_vit_inference import compile_encoder, prepare_for_inference

    fused = prepare_for_inference(copy.deepcopy(encoder))
    out = {"eager": (encoder, False, None), "fused": (fused, False, None), "fused-bf16": (fused, True, None)}
    if "plain" in want:  # prepared as the product does, but without oneDNN's fused float32 kernels
        out["plain"] = (prepare_for_inference(copy.deepcopy(encoder), fused=False), False, None)
    if any(v.startswith("compiled") for v in want):
        out["compiled"] = (compile_encoder(copy.deepcopy(fused)), False, None)
        out["compiled-bf16"] = (compile_encoder(copy.deepcopy(fused)), True, None)
    return {k: v for k, v in out.items() if k in want}


def speed(args, parts, peaks: dict, log) -> list:
    import torch

    rows = []
    encoder = parts.image_encoder
    chosen = variants(encoder, args.variants, log)
    for size in args.sizes:
        flops = encoder_flops(size)
        log(f"input {size}: {flops / 1e9:.1f} GFLOP per image")
        x8 = torch.rand(max(args.batches), 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            reference = encoder(x8[:1])
        for name, (fn, bf16, _) in chosen.items():
            t = time.perf_counter()
            agree = agreement(fn, reference, x8[:1], bf16)  # also the first call: a compilation, when compiled
            first = time.perf_counter() - t
            for batch in args.batches:
                if name.startswith("compiled") and batch not in args.compiled_batches:
                    continue  # each new shape compiles again: minutes on a busy 2-core machine
                per = seconds_per_image(fn, x8[:batch], bf16, args.repeat)
                rate = flops / per
                row = {"variant": name, "size": size, "batch": batch, "images_per_s": 1 / per,
                       "gflops_per_s": rate / 1e9, "gflop_per_image": flops / 1e9,
                       "fraction_of_fp32_peak": rate / peaks["fp32"], "fraction_of_bf16_peak": rate / peaks["bf16"],
                       "fraction_of_faster_peak": rate / max(peaks.values()), "first_call_s": first, **agree}
                if getattr(fn, "fallback_reason", None):
                    row["compile_fallback"] = fn.fallback_reason
                rows.append(row)
                log(f"  {name:14s} batch {batch}: {1 / per:6.2f} img/s, {rate / 1e9:6.0f} GFLOP/s = "
                    f"{row['fraction_of_faster_peak']:.0%} of the faster matmul peak; max diff "
                    f"{agree['max_abs_diff']:.1e}, first call {first:.1f} s")
    return rows


def interleaved(args, parts, log) -> dict:
    """The variants timed in turn, round after round, each round beside an fp32 matmul at the same thread count:
    on a shared machine the ratios within a round say more than any absolute rate. Per pass: wall time and the
    process's CPU time (all threads; at one thread the thread's own), both per image; the fraction of the matmul
    peak by each clock (GEMM FLOP/s measured the same way right before the round)."""
    import statistics

    import torch

    size, batch = args.sizes[0], args.batches[0]
    flops = encoder_flops(size)
    chosen = variants(parts.image_encoder, args.variants, log)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size))
    n = 1024 if args.threads == 1 else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    rows = {name: [] for name in chosen}
    peaks = []
    with torch.inference_mode():
        for fn, _, _ in chosen.values():
            fn(x[:1])  # warm-up (weight reorders, first allocations)
        for r in range(args.interleave):
            a @ b
            w, c = time.perf_counter(), time.process_time()
            for _ in range(3):
                a @ b
            peak = {"wall": 3 * 2 * n**3 / (time.perf_counter() - w), "cpu": 3 * 2 * n**3 / (time.process_time() - c)}
            peaks.append(peak)
            for name, (fn, bf16, _) in chosen.items():
                load = os.getloadavg()[0]
                with _autocast(bf16):
                    w, c = time.perf_counter(), time.process_time()
                    fn(x)
                    wall, cpu = (time.perf_counter() - w) / batch, (time.process_time() - c) / batch
                row = {"wall_s_per_image": wall, "cpu_s_per_image": cpu, "load": load,
                       "fraction_of_fp32_peak_wall": flops / wall / peak["wall"],
                       "fraction_of_fp32_peak_cpu": flops / cpu / peak["cpu"]}
                rows[name].append(row)
                log(f"round {r + 1} {name:8s}: {wall:.2f} s/img wall ({row['fraction_of_fp32_peak_wall']:.0%} of "
                    f"the fp32 peak of {peak['wall'] / 1e9:.0f} GFLOP/s), {cpu:.2f} s/img CPU "
                    f"({row['fraction_of_fp32_peak_cpu']:.0%}), load {load:.1f}")
    summary = {"threads": args.threads, "size": size, "batch": batch, "gflop_per_image": flops / 1e9,
               "peaks_gflops": [{k: v / 1e9 for k, v in p.items()} for p in peaks], "rows": rows}
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "load"}
        summary[name] = {"median": med, "range": {k: [min(r[k] for r in rs), max(r[k] for r in rs)] for k in med}}
        log(f"{name}: median {med['wall_s_per_image']:.2f} s/img wall, {med['cpu_s_per_image']:.2f} s/img CPU, "
            f"{med['fraction_of_fp32_peak_wall']:.0%} / {med['fraction_of_fp32_peak_cpu']:.0%} of the fp32 peak "
            f"(wall / CPU clock)")
    names = list(rows)
    for other in names[1:]:
        for clock in ("wall", "cpu"):
            key = f"{clock}_s_per_image"
            ratios = [o[key] / f[key] for f, o in zip(rows[names[0]], rows[other])]
            summary[f"{other}/{names[0]} {clock}"] = ratios
            log(f"{other} / {names[0]}, {clock} time per round: {', '.join(f'{q:.2f}' for q in ratios)} "
                f"(median {statistics.median(ratios):.2f})")
    return summary


def kvasir_cases(data_dir: Path, count: int, seed: int, ids=None):
    """(id, rgb, mask) of ``count`` Kvasir-SEG images drawn with ``seed``, or of the images ``ids``."""
    import numpy as np

    from ldfsam.finetune.image_dataset import read_mask_image, read_rgb

    if ids is None:
        pool = sorted(p.stem for p in (data_dir / "kvasir-seg" / "images").glob("*.jpg"))
        ids = sorted(np.random.default_rng(seed).choice(pool, size=min(count, len(pool)), replace=False))
    for name in ids:
        rgb = read_rgb(data_dir / "kvasir-seg" / "images" / f"{name}.jpg")
        mask = read_mask_image(data_dir / "kvasir-seg" / "masks" / f"{name}.jpg")
        yield name, rgb, mask


def kvasir_box_dice(encode, parts, cases, size: int, batch: int, bf16: bool = False) -> list:
    """Zero-shot box-prompted Dice of each case (rgb, reference mask): the image min-max scaled and resized to
    ``size``, ``encode`` (image batch -> embeddings), the box of the reference mask, LiteMedSAM's single-mask
    output, Dice at the image's original resolution."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    dices = []
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        images, boxes = [], []
        for _, rgb, mask in chunk:
            img = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
            img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)  # LiteMedSAM: min-max, no mean/std
            images.append(img)
            ys, xs = np.nonzero(mask)
            h, w = mask.shape
            boxes.append([xs.min() * size / w, ys.min() * size / h, (xs.max() + 1) * size / w,
                          (ys.max() + 1) * size / h])
        with torch.inference_mode():
            with _autocast(bf16):
                emb = encode(torch.stack(images)).float()
            sparse, dense = parts.prompt_encoder(len(chunk), boxes=torch.tensor(boxes, dtype=torch.float32))
            logits = parts.mask_decoder(emb, parts.prompt_encoder.get_dense_pe(), sparse, dense)
        for (_, _, mask), lg in zip(chunk, logits):
            pred = F.interpolate(lg[None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0] > 0
            truth = torch.from_numpy(mask)
            inter = (pred & truth).sum().item()
            dices.append(2 * inter / max(pred.sum().item() + truth.sum().item(), 1))
    return dices


def dice_at_sizes(args, log) -> dict:
    """Zero-shot box-prompted Dice on Kvasir images at each input size (fused encoder, ``--dice-precision``)."""
    from ldfsam.evaluate.bootstrap import bootstrap_mean_ci
    from ldfsam.model.lite_weights import litemedsam_state_dict, load_litemedsam
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    state = litemedsam_state_dict()
    cases = list(kvasir_cases(args.data_dir, args.dice_images, args.seed))
    bf16 = args.dice_precision == "bf16"
    out = {}
    for size in args.sizes:
        parts = load_litemedsam(size, state)
        encoder = prepare_for_inference(parts.image_encoder)
        t0 = time.perf_counter()
        dices = kvasir_box_dice(encoder, parts, cases, size, args.dice_batch, bf16)
        ci = bootstrap_mean_ci(dices, seed=args.seed)
        mean, low, high = ci["mean"], ci["ci_low"], ci["ci_high"]
        out[size] = {"images": len(dices), "dice_mean": mean, "ci95": [low, high],
                     "seconds": time.perf_counter() - t0}
        log(f"Dice at {size}: {mean:.3f} [{low:.3f}, {high:.3f}] over {len(dices)} images "
            f"({time.perf_counter() - t0:.0f} s)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 192, 128])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--variants", nargs="+", default=["eager", "fused", "fused-bf16", "compiled", "compiled-bf16"])
    ap.add_argument("--compiled-batches", nargs="+", type=int, default=[1, 8],
                    help="batch sizes timed for the compiled variants (each shape is a separate compilation)")
    ap.add_argument("--repeat", type=int, default=2, help="timed batches per point (the best counts)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="instead of the speed table: the variants in turn for ROUNDS rounds at the first size and "
                         "batch, each round beside an fp32 matmul (wall and CPU time; for shared machines)")
    ap.add_argument("--dice-images", type=int, default=100, help="Kvasir images for the Dice part (0: skip it)")
    ap.add_argument("--dice-batch", type=int, default=8)
    ap.add_argument("--dice-precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR",
                                                                         REPO.parent / "shared" / "data")))
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc as it is (by default large blocks are reused, as the product does: "
                         "ldfsam.heap.reuse_large_blocks)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not args.system_malloc:
        from ldfsam.heap import reuse_large_blocks

        reuse_large_blocks()

    import torch
    from bench_segment import matmul_peak

    from ldfsam.model.lite_weights import load_litemedsam

    def log(text: str) -> None:
        print(text, flush=True)

    torch.set_num_threads(args.threads)
    results = {"machine": machine_info(args.threads), "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"machine: {results['machine']}")
    if args.interleave:
        results["interleaved"] = interleaved(args, load_litemedsam(args.sizes[0]), log)
    elif not args.skip_speed:
        peaks = {"fp32": matmul_peak(args.threads, torch.float32), "bf16": matmul_peak(args.threads, torch.bfloat16)}
        results["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
        log(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
        results["speed"] = speed(args, load_litemedsam(256), peaks, log)
        # Peaks again at the end: the machine may be shared, and the fraction is only as good as the peak.
        results["matmul_peak_gflops_after"] = {
            "fp32": matmul_peak(args.threads, torch.float32) / 1e9,
            "bf16": matmul_peak(args.threads, torch.bfloat16) / 1e9}
        log(f"matmul peak after: {results['matmul_peak_gflops_after']}")
    if args.dice_images > 0:
        results["dice"] = dice_at_sizes(args, log)
    results["machine"]["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(BENCH))
    raise SystemExit(main())
