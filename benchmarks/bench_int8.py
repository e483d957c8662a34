"""Dynamic int8 quantisation of LiteMedSAM's linear layers on the CPU: zero-shot box Dice and encoder speed.

Variants, all on the encoder as the product runs it in float32 (``prepare_for_inference``: BatchNorm folded,
channels_last, oneDNN's fused CPU path):

- ``fp32``: as it is;
- ``int8``: every ``nn.Linear`` of the TinyViT encoder (attention qkv/proj, MLP fc1/fc2: 50.8 of its 74.9 GFLOP)
  replaced by torch's dynamic int8 linear (weights int8 per output channel, activations quantised per call);
- ``int8+decoder``: the same and the mask decoder's linear layers too (Dice only: the decoder's time is small).

Dice, zero-shot with boxes from the reference masks (the accuracy rule of the lite family's speed levers: at most
0.01 lower than fp32 on both sets):

- Kvasir-SEG: the 80 validation images of ``bench_kvasir.py``'s split (sorted ids of ``train_ids.txt``, one
  shuffle with seed 2025, 10 % held out), as ``bench_encoder.py``'s Dice part (whole image at 256, Dice at the
  original resolution);
- phantom teeth: a procedural CBCT phantom (``ldfsam.data.phantom``), tooth cross-sections drawn with a seed, each
  prompted as the prompted mode does (``SliceSAM``: per-volume window, a square view of 3× the box around the
  tooth, the box one voxel wider than the tooth), Dice on the view.

Speed: seconds per image through the encoder, fp32 and int8 passes interleaved on the same images (one image a
pass, as the fused path runs), at ``--threads`` (default 1); wall time and the thread's CPU time, and their
int8/fp32 ratios of the medians. Prints the machine and the load average.

    python benchmarks/bench_int8.py --json /tmp/int8.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))


def quantized(module):
    """A copy of ``module`` with every ``nn.Linear`` as torch's dynamic int8 linear (per-channel weights)."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantisation is deprecated in favour of torchao
        return quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


class Remembered:
    """An encoder that computes each distinct input once (two decoders on the same int8 embeddings)."""

    def __init__(self, encoder) -> None:
        self.encoder, self.seen = encoder, {}

    def __call__(self, x):
        import hashlib

        key = hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()
        if key not in self.seen:
            self.seen[key] = self.encoder(x)
        return self.seen[key]


def kvasir_val_ids(data_dir: Path, seed: int) -> list:
    from ldfsam.data.splits import make_splits

    ids = [line.strip() for line in (data_dir / "kvasir-seg" / "train_ids.txt").read_text().splitlines()
           if line.strip()]
    return make_splits(ids, test_count=0, val_fraction=0.1, seed=seed).val


def phantom_cases(args):
    """(volume z×y×x int16, window, [(z, fdi, box (y0, y1, x0, x1), view, truth on the view)])."""
    import numpy as np
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom
    from ldfsam.data.preprocess import PreprocessConfig, intensity_window
    from ldfsam.infer.propagate import PropagationConfig

    image, labels = make_phantom((args.phantom_slices, args.phantom_size, args.phantom_size), spacing=0.25,
                                 seed=args.seed, teeth_fraction=1.0)
    volume = sitk.GetArrayFromImage(image)
    lab = sitk.GetArrayFromImage(labels)
    window = intensity_window(volume, PreprocessConfig())
    cfg = PropagationConfig()
    pairs = []
    for z in range(0, lab.shape[0], max(1, args.phantom_step)):
        for fdi in np.unique(lab[z]):
            if fdi == 0:
                continue
            ys, xs = np.nonzero(lab[z] == fdi)
            if len(ys) < 20:  # a cut through a tooth's tip: no box a user would draw
                continue
            pairs.append((z, int(fdi), ys, xs))
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(pairs), size=min(args.phantom_teeth, len(pairs)), replace=False))
    cases = []
    ny, nx = lab.shape[1:]
    for i in chosen:
        z, fdi, ys, xs = pairs[i]
        box = (max(0, ys.min() - 1), min(ny - 1, ys.max() + 1), max(0, xs.min() - 1), min(nx - 1, xs.max() + 1))
        side = int(round(max(cfg.view_context * max(box[1] - box[0] + 1, box[3] - box[2] + 1), cfg.min_view)))
        view = []
        for lo, hi, n in ((box[0], box[1], ny), (box[2], box[3], nx)):
            s = min(side, n)
            start = min(max(0, int(round((lo + hi + 1) / 2 - s / 2))), n - s)
            view += [start, start + s]
        y0, y1, x0, x1 = view
        cases.append((z, fdi, tuple(float(v) for v in box), tuple(view), lab[z, y0:y1, x0:x1] == fdi))
    return volume, window, cases


def phantom_dice(parts, decoders: dict, volume, window, cases) -> dict:
    """Dice of each case per decoder (name -> decoder), the encoder's embeddings computed once."""
    import numpy as np

    from ldfsam.infer.slice_sam import SamParts, SliceSAM

    sam = SliceSAM(SamParts(parts.image_encoder, parts.prompt_encoder, parts.mask_decoder, 256), volume, window,
                   precision="fp32")
    out = {}
    for name, decoder in decoders.items():
        sam.parts.mask_decoder = decoder
        sam.memo.clear()
        dices = []
        for z, _, box, view, truth in cases:
            pred = sam.decode(z, box, view=view)[0] > 0
            dices.append(float(2 * np.count_nonzero(pred & truth)
                               / max(np.count_nonzero(pred) + np.count_nonzero(truth), 1)))
        out[name] = dices
    return out


def paired(a: list, b: list, seed: int) -> dict:
    """Means of a and b and the mean of b - a with its 95 % bootstrap CI."""
    from ldfsam.evaluate.bootstrap import paired_difference

    diff = paired_difference(dict(enumerate(b)), dict(enumerate(a)), seed=seed)
    return {"n": len(a), "fp32": statistics.fmean(a), "variant": statistics.fmean(b), "difference": diff["mean"],
            "difference_ci95": [diff["ci_low"], diff["ci_high"]]}


def timing(encoders: dict, size: int, images: int, rounds: int) -> dict:
    """Interleaved passes of each encoder over the same images; per image: wall and thread-CPU seconds."""
    import torch

    x = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {name: {"wall": [], "cpu": []} for name in encoders}
    with torch.inference_mode():
        for fn in encoders.values():
            fn(x[:1])  # warm-up
        for _ in range(rounds):
            for name, fn in encoders.items():
                for i in range(images):
                    w, c = time.perf_counter(), time.thread_time()
                    fn(x[i:i + 1])
                    out[name]["cpu"].append(time.thread_time() - c)
                    out[name]["wall"].append(time.perf_counter() - w)
    return {name: {k: statistics.median(v) for k, v in d.items()} | {"passes": len(d["wall"])}
            for name, d in out.items()}


def report(what: str, unit: str, rows: dict) -> None:
    for name, r in rows.items():
        print(f"{what} ({r['n']} {unit}): fp32 Dice {r['fp32']:.4f}, {name} {r['variant']:.4f}, difference "
              f"{r['difference']:+.4f} [{r['difference_ci95'][0]:+.4f}, {r['difference_ci95'][1]:+.4f}]", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR",
                                                                         REPO.parent / "shared" / "data")))
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--kvasir-images", type=int, default=80, help="how many of the 80 validation images (0: skip)")
    ap.add_argument("--phantom-teeth", type=int, default=120, help="tooth cross-sections (0: skip)")
    ap.add_argument("--phantom-slices", type=int, default=60)
    ap.add_argument("--phantom-size", type=int, default=650)
    ap.add_argument("--phantom-step", type=int, default=4, help="every k-th slice of the phantom")
    ap.add_argument("--timing-images", type=int, default=4)
    ap.add_argument("--timing-rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from bench_encoder import kvasir_box_dice, kvasir_cases, machine_info

    from ldfsam.heap import reuse_large_blocks
    from ldfsam.model.lite_weights import load_litemedsam
    from ldfsam.model.tiny_vit_inference import prepare_for_inference

    reuse_large_blocks()  # as the product
    torch.set_num_threads(args.threads)
    results = {"machine": machine_info(args.threads), "quantized_engine": torch.backends.quantized.engine}
    print(f"machine: {results['machine']}, quantized engine {results['quantized_engine']}", flush=True)

    fp32 = load_litemedsam()
    prepare_for_inference(fp32.image_encoder)
    int8_encoder = quantized(fp32.image_encoder)
    int8 = copy.copy(fp32)
    int8.image_encoder = int8_encoder
    both = copy.copy(int8)
    both.mask_decoder = quantized(fp32.mask_decoder)
    variants = {"fp32": fp32, "int8": int8, "int8+decoder": both}

    t = time.perf_counter()
    load = os.getloadavg()
    results["timing"] = timing({"fp32": fp32.image_encoder, "int8": int8_encoder}, 256, args.timing_images,
                               args.timing_rounds)
    tm = results["timing"]
    results["timing"]["ratio_int8_over_fp32"] = {k: tm["int8"][k] / tm["fp32"][k] for k in ("wall", "cpu")}
    results["timing"]["load_average"] = [load, os.getloadavg()]
    print(f"encoder per image at {args.threads} thread(s): fp32 {tm['fp32']['wall']:.2f} s wall / "
          f"{tm['fp32']['cpu']:.2f} s CPU, int8 {tm['int8']['wall']:.2f} / {tm['int8']['cpu']:.2f} s; int8/fp32 "
          f"{tm['ratio_int8_over_fp32']['wall']:.2f} wall, {tm['ratio_int8_over_fp32']['cpu']:.2f} CPU "
          f"(load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}; {time.perf_counter() - t:.0f} s)", flush=True)

    if args.kvasir_images > 0:
        ids = kvasir_val_ids(args.data_dir, args.seed)[:args.kvasir_images]
        cases = list(kvasir_cases(args.data_dir, 0, args.seed, ids=ids))
        remembered = Remembered(int8_encoder)
        dice = {name: kvasir_box_dice(remembered if name != "fp32" else parts.image_encoder, parts, cases, 256, 1)
                for name, parts in variants.items()}
        results["kvasir"] = {name: paired(dice["fp32"], d, args.seed) for name, d in dice.items() if name != "fp32"}
        report("Kvasir val", "images", results["kvasir"])
    if args.phantom_teeth > 0:
        volume, window, cases = phantom_cases(args)
        dice = phantom_dice(fp32, {"fp32": fp32.mask_decoder}, volume, window, cases)
        dice.update(phantom_dice(int8, {"int8": int8.mask_decoder, "int8+decoder": both.mask_decoder}, volume,
                                 window, cases))
        results["phantom"] = {name: paired(dice["fp32"], d, args.seed) for name, d in dice.items() if name != "fp32"}
        report("phantom teeth", "cross-sections", results["phantom"])
    results["machine"]["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
