"""Benchmark ``ldfsam segment`` on the CPU: seconds per volume, slices per second, peak memory, the machine's fp32
and bf16 matmul peaks (measured in the same run), the precision ``--precision auto`` picked here (measured once per
machine, ``ldfsam.cpu_precision``) and the share of the faster of the two peaks that the SAM image encoder reaches.

    python benchmarks/bench_segment.py                  # vit_b, small and demo; 40% and 100% tooth slices
    python benchmarks/bench_segment.py --presets demo --fractions 0.4 --slice-spacing native

The volume is a procedural phantom of SLICES×SIZE×SIZE voxels at 0.25 mm (``ldfsam.data.phantom``) whose teeth
occupy the given fraction of the slices. "vit_b" and "small" have random weights (timing does not depend on
them), so their untrained prompt generator cannot decide which slices hold teeth: the phantom's truth selects
them instead (the ``keep_slices`` argument of ``segment_volume``), and their masks are noise (which makes the
clean-up slower than on real masks). Noise masks cannot drive the coarse-to-fine choice of ``auto`` either
(neighbouring noise looks alike, so it would run on too few slices), so for them ``auto`` is timed as ``1px``,
every candidate: the most ``auto`` can cost. "demo" is the bundled trained model (the ``lite`` preset on
LiteMedSAM's frozen TinyViT encoder): the real pipeline end to end, with the Dice against the phantom's truth.
Everything else is the real pipeline for all three, including the prompt generator on every model slice, the
clean-up and writing a .seg.nrrd. Each segmentation runs in a fresh child process that loads the model from a
file, as ``ldfsam segment`` does, so its peak memory
(VmHWM) is its own; "process" is that child's wall time from its start, imports included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(threads: int, dtype, n: int = 3072, repeat: int = 5) -> float:
    """Best GEMM throughput (FLOP/s) of an n×n×n product in ``dtype`` at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def encoder_flops(model, size: int) -> float:
    """FLOPs of one image through the SAM image encoder in use (matmuls and convolutions, as torch counts them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ldfsam.model.tiny_vit_student import HalfResTinyViT

    enc = model.image_encoder
    if isinstance(enc, HalfResTinyViT):
        # Its prepared backbone's attention runs oneDNN operators the counter does not see: count an unprepared
        # copy of the same layout on the meta device (as bench_student_encoder does).
        neck = enc.up_neck
        with torch.device("meta"):
            copy = HalfResTinyViT(enc.image_size, neck.out.in_channels, len(neck.blocks), neck.stem is not None)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            copy(torch.empty(1, 3, size, size, device="meta"))
        return float(counter.get_total_flops())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.rand(1, 3, size, size))
    return float(counter.get_total_flops())


def encoder_rate(model, size: int, batch: int, dtype, repeat: int = 3) -> float:
    """Seconds per image through the encoder alone (best of ``repeat`` batches)."""
    import torch

    x = torch.rand(batch, 3, size, size)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    best = float("inf")
    with torch.inference_mode(), ctx:
        model.encode_image(x)
        for _ in range(repeat):
            t = time.perf_counter()
            model.encode_image(x)
            best = min(best, (time.perf_counter() - t) / batch)
    return best


# Models with trained weights: real prompt generator and masks, the pipeline end to end, Dice against the truth.
TRAINED = ("demo", "vit_b-phantom")
DEMO_MODEL = None  # --demo-model: another file for the "demo" preset


def trained_file(preset: str) -> Path:
    if preset == "demo":
        from ldfsam.models import resolve_model

        return resolve_model(DEMO_MODEL)
    path = Path.home() / ".cache" / "ldfsam" / "bench" / "vit_b-phantom.safetensors"
    if not path.exists():
        raise SystemExit(f"{path}: missing; make it with python benchmarks/make_vit_b_phantom_model.py")
    return path


def build(preset: str):
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.model.build import build_model
    from ldfsam.model.presets import model_config
    from ldfsam.offline import import_ultralytics

    import_ultralytics()
    import torch

    if preset in TRAINED:
        from ldfsam.checkpoint import load_checkpoint

        loaded = load_checkpoint(trained_file(preset))
        return loaded.model_cfg, loaded.preprocess, loaded.model.eval()
    torch.manual_seed(0)
    cfg = model_config(preset)
    pre = PreprocessConfig(target_spacing=None, yolo_size=cfg.prompt_generator.image_size)
    return cfg, pre, build_model(cfg).eval()


def child(args) -> int:
    """Segment one volume and print one JSON line (run in a fresh process for a clean peak-memory figure)."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    from ldfsam.infer import segment_volume

    keep = None
    if args.preset not in TRAINED:  # random weights: the truth says which slices hold teeth
        truth = sitk.GetArrayFromImage(sitk.ReadImage(args.labels))
        keep = np.asarray(truth.reshape(truth.shape[0], -1).any(axis=1))
        del truth
    out = Path(args.workdir) / f"out_{args.preset}_{os.getpid()}.seg.nrrd"
    t = time.perf_counter()
    r = segment_volume(args.volume, out, model=args.model, device="cpu", batch=args.batch, precision=args.precision,
                       keep_slices=keep, slice_spacing=args.slice_spacing, force=True, encoder=args.encoder,
                       interpolate_embeddings=args.between_child == "on")
    seconds = time.perf_counter() - t
    process = time.time() - _process_start()
    out.unlink()
    peak = _peak_rss()
    dice = None
    if args.preset in TRAINED:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(args.labels)) > 0
        pred = r.labels > 0
        dice = float(2 * np.count_nonzero(truth & pred) / (np.count_nonzero(truth) + np.count_nonzero(pred)))
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: comparable on a shared machine, unlike wall time
    print(json.dumps({"seconds": seconds, "process_seconds": process, "slices": r.slices,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime, "system_seconds": usage.ru_stime,
                      "model_slices": r.model_slices, "with_teeth": r.slices_with_teeth,
                      "encoded": r.encoded_slices, "batch": r.batch,
                      "peak_bytes": peak, "dice": dice, "timings": r.timings}))
    return 0


def main() -> int:
    from ldfsam.infer.segment_options import SegmentOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["vit_b", "small", "demo"],
                    help="vit_b, small (random weights), demo (the bundled trained small model) and/or "
                         "vit_b-phantom (vit_b trained on phantoms: benchmarks/make_vit_b_phantom_model.py)")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.4, 1.0])
    ap.add_argument("--slices", type=int, default=420)
    ap.add_argument("--size", type=int, default=650)
    ap.add_argument("--batch", type=int, default=SegmentOptions.batch, help="slices per batch (default: ldfsam "
                    "segment's)")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--slice-spacing", default="auto", help="as `ldfsam segment --slice-spacing` (auto, native, mm)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--malloc", nargs="+", default=["default"], choices=("default", "system"),
                    help="allocator settings to run each volume with, in turn: default (ldfsam.heap keeps large "
                         "blocks) and/or system (LDFSAM_MALLOC=system); several (repeats allowed, e.g. default "
                         "system system default) give back-to-back ratios")
    ap.add_argument("--encoders", nargs="+", default=["auto"], choices=("auto", "full", "half"),
                    help="lite models' image encoder, each run in turn (auto: the one the model was trained on; "
                         "full: LiteMedSAM's TinyViT; half: the distilled half-resolution student)")
    ap.add_argument("--between", nargs="+", default=["off"], choices=("on", "off"),
                    help="slices between two encoded neighbours decoded on their interpolated embeddings (on) or "
                         "encoded (off, the product's default); each run in turn, as --encoders")
    ap.add_argument("--demo-model", type=Path, help="the model file the demo preset runs (default: the bundled "
                    "ldfsam-demo); its runs and its encoder figures use --encoders")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--between-child", default="off", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--volume", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DEMO_MODEL
    DEMO_MODEL = args.demo_model
    if args.child:
        return child(args)

    import SimpleITK as sitk
    import torch

    from ldfsam.cpu_precision import cached_measurement, cpu_name, cpu_supports_bf16
    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer.encoder_choice import select_encoder
    from ldfsam.infer.predictor import resolve_precision

    torch.set_num_threads(args.threads)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "python": platform.python_version(), "load_before": os.getloadavg()}
    dtype = resolve_precision(args.precision, torch.device("cpu"))  # auto: measured (or read from the cache)
    precision = str(dtype).replace("torch.", "")
    machine["native_bf16"] = cpu_supports_bf16()
    machine["isa"] = torch.backends.cpu.get_cpu_capability()  # AVX2, AVX512, ...
    measured = cached_measurement()
    if measured is not None:
        machine["auto_measurement"] = {**dataclasses.asdict(measured), "choice": measured.choice}
    # Emulated bf16 runs at well under 1 GFLOP/s: a smaller product keeps its peak to seconds.
    peaks = {"float32": matmul_peak(args.threads, torch.float32),
             "bfloat16": matmul_peak(args.threads, torch.bfloat16, n=3072 if machine["native_bf16"] else 512)}
    faster = max(peaks, key=peaks.get)
    peak = peaks[faster]
    print(f"machine: {machine}", flush=True)
    print(f"matmul peaks: float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.0f} "
          f"GFLOP/s; --precision {args.precision} runs {precision}", flush=True)
    results = {"machine": machine, "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
               "faster_peak": faster, "precision": precision, "slice_spacing": args.slice_spacing, "runs": []}
    with tempfile.TemporaryDirectory(prefix="ldfsam-bench-") as work:
        for preset in args.presets:
            cfg, pre, model = build(preset)
            encs = {}  # the encoder each run uses (--encoders), timed alone
            for encoder in dict.fromkeys(args.encoders):
                select_encoder(model, encoder)
                flops = encoder_flops(model, pre.sam_size)
                per_image = encoder_rate(model, pre.sam_size, args.batch, dtype)
                encs[encoder] = {"encoder_gflop_per_slice": flops / 1e9, "encoder_s_per_slice": per_image,
                                 "encoder_fraction_of_faster_peak": flops / per_image / peak}
                print(f"{preset}, --encoder {encoder}: encoder in {precision} {flops / 1e9:.1f} GFLOP/slice, "
                      f"{per_image * 1e3:.0f} ms/slice ({flops / per_image / 1e9:.0f} GFLOP/s = "
                      f"{encs[encoder]['encoder_fraction_of_faster_peak']:.0%} of the {faster} matmul peak, the "
                      "faster of the two)", flush=True)
            select_encoder(model, "full")
            # The child loads the model from a file, as `ldfsam segment` does (random weights, saved once).
            model_file = Path(work) / f"{preset}.safetensors"
            if preset in TRAINED:
                model_file = trained_file(preset)
            else:
                from ldfsam.checkpoint import save_checkpoint

                save_checkpoint(model_file, model, cfg, pre)
            del model
            spacing = args.slice_spacing
            if preset not in TRAINED and spacing == "auto":
                spacing = "1px"  # random weights: the upper bound of auto (see the module docstring)
            for fraction in args.fractions:
                vol = Path(work) / f"phantom_{fraction}.nrrd"
                lab = Path(work) / f"phantom_{fraction}_labels.nrrd"
                if not vol.exists():
                    image, labels = make_phantom((args.slices, args.size, args.size), spacing=0.25, seed=1,
                                                 teeth_fraction=fraction)
                    sitk.WriteImage(image, str(vol))
                    sitk.WriteImage(labels, str(lab), True)
                    del image, labels
                cmd = [sys.executable, __file__, "--child", "--model", str(model_file), "--preset", preset,
                       "--volume", str(vol), "--labels",
                       str(lab), "--workdir", work, "--batch", str(args.batch), "--precision", args.precision,
                       "--threads", str(args.threads), "--slice-spacing", spacing]
                for malloc, encoder, between in [(m, e, b) for m in args.malloc for e in args.encoders
                                                 for b in args.between]:
                    cmd_run = cmd + ["--encoder", encoder, "--between-child", between]
                    env = dict(os.environ)
                    env.pop("LDFSAM_MALLOC", None)
                    if malloc == "system":
                        env["LDFSAM_MALLOC"] = "system"
                    load = os.getloadavg()
                    proc = subprocess.run(cmd_run, capture_output=True, text=True, cwd=REPO, env=env)
                    if proc.returncode != 0:
                        print(proc.stderr, file=sys.stderr)
                        return proc.returncode
                    run = json.loads(proc.stdout.strip().splitlines()[-1])
                    run.update(preset=preset, teeth_fraction=fraction, load_avg=load, slice_spacing=spacing,
                               malloc=malloc, encoder=encoder, between=between, **encs[encoder])
                    run["slices_per_s"] = run["slices"] / run["seconds"]
                    results["runs"].append(run)
                    t = run["timings"]
                    dice = "" if run["dice"] is None else f", Dice {run['dice']:.3f}"
                    print(f"{preset} teeth {fraction:.0%}, --slice-spacing {spacing}: {run['seconds']:.1f} s/volume "
                          f"({run['process_seconds']:.1f} s process, {run['cpu_seconds']:.0f} s CPU){dice}, "
                          f"{run['slices_per_s']:.1f} slices/s, model on {run['model_slices']}, "
                          f"{run['with_teeth']} with teeth, {run['encoded']} encoded, peak "
                          f"{run['peak_bytes'] / 2**30:.2f} GB, batch {run['batch']} | yolo "
                          f"{t['predict.prompt_features']:.1f} s, encoder "
                          f"{t['predict.encoder']:.1f} s, decoder {t['predict.decoder']:.1f} s, clean-up "
                          f"{t['cleanup']:.1f} s, write {t['write']:.1f} s, read+load {t['load']:.1f} s | "
                          f"malloc {malloc}, encoder {encoder}, between {between}, load average {load[0]:.1f}",
                          flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _peak_rss() -> int:
    """This process's peak resident memory (bytes). VmHWM belongs to the address space made at exec, whereas
    ru_maxrss also counts the parent's pages at fork time (Linux keeps it across execve)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _process_start() -> float:
    """This process's start time (seconds since the epoch)."""
    import psutil

    return psutil.Process().create_time()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
