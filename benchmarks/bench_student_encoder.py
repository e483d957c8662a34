"""Cheaper encoders for the lite family against LiteMedSAM's own: zero-shot box Dice, GFLOPs and seconds per slice.

Encoders (every one feeds LiteMedSAM's frozen prompt encoder and mask decoder):

- ``teacher``: LiteMedSAM's TinyViT at 256 (the reference; fused float32 path, as the product runs it);
- ``half-native`` (``--native``): the same weights at 128, prompt encoder and decoder on its 32×32 grid;
- ``half-bilinear``: the same at 128, its 32×32 embedding upsampled (bilinear) to 64×64 (the half-resolution
  student with an untrained neck: what a neck has to improve on);
- each ``--necks`` file: the half-resolution student (``ldfsam.model.tiny_vit_student``) with that distilled neck
  (``scripts/distill_encoder.py``).

Accuracy rule for offering a cheaper encoder: its mean Dice at most 0.01 below the teacher's on both sets, which
are ``bench_int8.py``'s: the 80 Kvasir-SEG validation images (reference boxes, Dice at the original resolution) and
120 tooth cross-sections of a seed-2025 phantom prompted as the prompted mode does (never among the distillation's
inputs). Differences are paired, with a 95 % bootstrap CI.

Speed: GFLOPs per slice (counted on the meta device) and seconds per slice through each encoder, passes
interleaved on the same images at ``--threads`` (wall and thread CPU time, medians).

    OMP_NUM_THREADS=1 python benchmarks/bench_student_encoder.py --necks neck.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))


def student_with_neck(neck_file: Path, state):
    """The half-resolution student: LiteMedSAM's TinyViT weights at 128 and the neck of ``neck_file`` (None: an
    untrained neck, i.e. bilinear upsampling)."""
    from ldfsam.model.lite_weights import load_litemedsam
    from ldfsam.model.tiny_vit_inference import prepare_for_inference
    from ldfsam.model.tiny_vit_student import HalfResTinyViT, half_resolution_encoder

    teacher = load_litemedsam(256, state).image_encoder
    if neck_file is not None:
        return half_resolution_encoder(teacher, neck_file)
    student = HalfResTinyViT()
    student.backbone.load_state_dict(teacher.state_dict())
    prepare_for_inference(student.backbone)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student


def gflops(build, size: int) -> float:
    """GFLOPs of one image through the network ``build()`` makes, counted on the meta device (the prepared
    encoders run oneDNN operators that torch's counter does not see)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = build()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--necks", type=Path, nargs="*", default=[])
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip half-bilinear")
    ap.add_argument("--native", action="store_true", help="also half-native")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR",
                                                                         REPO.parent / "shared" / "data")))
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--kvasir-images", type=int, default=80)
    ap.add_argument("--phantom-teeth", type=int, default=120)
    ap.add_argument("--timing-images", type=int, default=3)
    ap.add_argument("--timing-rounds", type=int, default=3)
    ap.add_argument("--reuse", type=Path, help="a previous run's --json: the Dice per case of every encoder it "
                    "measured (teacher, half-bilinear...) is taken from there, not computed again (same sets, seed)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from bench_encoder import kvasir_box_dice, kvasir_cases, machine_info
    from bench_int8 import kvasir_val_ids, paired, phantom_cases, phantom_dice, timing

    from ldfsam.heap import reuse_large_blocks
    from ldfsam.model.lite_weights import litemedsam_state_dict, load_litemedsam
    from ldfsam.model.tiny_vit import TinyViT
    from ldfsam.model.tiny_vit_inference import prepare_for_inference
    from ldfsam.model.tiny_vit_student import HalfResTinyViT

    reuse_large_blocks()
    torch.set_num_threads(args.threads)
    results = {"machine": machine_info(args.threads), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {results['machine']}", flush=True)
    before = json.loads(args.reuse.read_text()) if args.reuse else {}
    state = litemedsam_state_dict()
    teacher = load_litemedsam(256, state)
    prepare_for_inference(teacher.image_encoder)
    native = load_litemedsam(128, state)
    prepare_for_inference(native.image_encoder)
    encoders = {"teacher": teacher.image_encoder}
    if args.baseline:
        encoders["half-bilinear"] = student_with_neck(None, state)
    for path in args.necks:
        encoders[f"student:{path.stem}"] = student_with_neck(path, state)

    results["gflops"] = {"teacher": gflops(lambda: TinyViT(image_size=256), 256)}
    for name, enc in encoders.items():
        if name != "teacher":
            neck = dict(neck_hidden=enc.up_neck.out.in_channels, neck_depth=len(enc.up_neck.blocks),
                        neck_stem=enc.up_neck.stem is not None)
            results["gflops"][name] = gflops(lambda: HalfResTinyViT(**neck), 256)  # noqa: B023 (called at once)
    results["gflops"]["half-native"] = gflops(lambda: TinyViT(image_size=128), 128)
    print(f"GFLOP per slice: {json.dumps({k: round(v, 1) for k, v in results['gflops'].items()})}", flush=True)
    load = os.getloadavg()
    t = time.perf_counter()
    results["timing"] = timing(encoders, 256, args.timing_images, args.timing_rounds)
    results["timing"]["load_average"] = [load, os.getloadavg()]
    for name in encoders:
        r = results["timing"][name]
        r["cpu_ratio_to_teacher"] = r["cpu"] / results["timing"]["teacher"]["cpu"]
        print(f"{name}: {r['wall']:.3f} s wall, {r['cpu']:.3f} s CPU per slice at {args.threads} thread(s), CPU "
              f"{r['cpu_ratio_to_teacher']:.2f}x the teacher's", flush=True)
    print(f"(load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}; {time.perf_counter() - t:.0f} s)", flush=True)

    def rule(rows: dict) -> None:
        for name, r in rows.items():
            print(f"  {name}: {r['variant']:.4f} vs teacher {r['fp32']:.4f}, difference {r['difference']:+.4f} "
                  f"[{r['difference_ci95'][0]:+.4f}, {r['difference_ci95'][1]:+.4f}] (n={r['n']})", flush=True)

    if args.kvasir_images > 0:
        ids = kvasir_val_ids(args.data_dir, args.seed)[:args.kvasir_images]
        cases = list(kvasir_cases(args.data_dir, 0, args.seed, ids=ids))
        dice = {name: before["kvasir_per_image"][name] if name in before.get("kvasir_per_image", {}) else
                kvasir_box_dice(enc, teacher, cases, 256, 1) for name, enc in encoders.items()}
        if args.native:
            dice["half-native"] = kvasir_box_dice(native.image_encoder, native, cases, 128, 1)
        results["kvasir"] = {n: paired(dice["teacher"], d, args.seed) for n, d in dice.items() if n != "teacher"}
        results["kvasir_per_image"] = dice
        print("Kvasir-SEG validation, box Dice:", flush=True)
        rule(results["kvasir"])
    if args.phantom_teeth > 0:
        pargs = SimpleNamespace(phantom_slices=60, phantom_size=650, seed=args.seed, phantom_step=4,
                                phantom_teeth=args.phantom_teeth)
        volume, window, cases = phantom_cases(pargs)
        dice = {}
        for name, enc in encoders.items():
            if name in before.get("phantom_per_case", {}):
                dice[name] = before["phantom_per_case"][name]
                continue
            parts = SimpleNamespace(image_encoder=enc, prompt_encoder=teacher.prompt_encoder,
                                    mask_decoder=teacher.mask_decoder)
            dice[name] = phantom_dice(parts, {"d": teacher.mask_decoder}, volume, window, cases)["d"]
        if args.native:
            import numpy as np

            from ldfsam.infer.slice_sam import SamParts, SliceSAM

            sam = SliceSAM(SamParts(native.image_encoder, native.prompt_encoder, native.mask_decoder, 128), volume,
                           window, precision="fp32")
            dice["half-native"] = []
            for z, _, box, view, truth in cases:
                pred = sam.decode(z, box, view=view)[0] > 0
                dice["half-native"].append(float(2 * np.count_nonzero(pred & truth)
                                                 / max(np.count_nonzero(pred) + np.count_nonzero(truth), 1)))
        results["phantom"] = {n: paired(dice["teacher"], d, args.seed) for n, d in dice.items() if n != "teacher"}
        results["phantom_per_case"] = dice
        print("phantom teeth, box Dice:", flush=True)
        rule(results["phantom"])
    verdict = {}
    for name in results.get("kvasir", results.get("phantom", {})):
        drops = [results[s][name]["difference"] for s in ("kvasir", "phantom") if s in results]
        verdict[name] = all(d >= -0.01 for d in drops)
    results["meets_rule"] = verdict
    print(f"meets the rule (drop <= 0.01 on both sets): {verdict}", flush=True)
    results["machine"]["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
