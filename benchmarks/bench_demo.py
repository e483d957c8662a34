"""Where the time of ``ldfsam demo`` goes: CPU time by stage, each run a fresh process, as users start it.

    python benchmarks/bench_demo.py --threads 1 --repeat 3 --json demo_profile.json

Each run is a child process that runs ``ldfsam demo`` (the bundled phantom and model) through the command's
own entry point, with the pipeline's stages wrapped by timers that read the process's CPU time
(``time.process_time``: all its threads, user + system), so that time other processes take on a shared machine
does not count. Stages: Python's start, imports (the modules the command imports, done first), the model file
with reading + planning (the header check, then reading and building the model on a thread of its own beside
reading and planning the volume: one stage, from the first of them to the last one's end), the slice predictor's
set-up (BatchNorm folding, the encoder prepared), the prompt generator (features and the teeth check), the image
encoder, the mask decoder, the rest of prediction (normalising, resizing, the coarse-to-fine schedule,
interpolation into the label map), the clean-up, writing the .seg.nrrd, the demo's Dice check, and the
interpreter's exit (the child's CPU time as its parent sees it, less the time at the end of the command). Wall
times are reported too (they mean little on a shared machine), with the load average at each run's start.

Variants (``--variants``) are run interleaved, ``--repeat`` times each, to compare them by ratios in one run:
``default`` (the product as it is) and ``name=ENV=VALUE[,ENV=VALUE]`` for a run with those environment
variables set; ``LDFSAM_BENCH_DEMO_ARGS`` adds options to the command (``mine=LDFSAM_BENCH_DEMO_ARGS=--model
FILE``). Each run's Dice against the phantom's truth is recorded too. Reported per variant: the median of every
figure and its spread (min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (stage, module, attribute path): wrapped in the child; nested calls are subtracted to give exclusive times.
STAGES = [
    # One stage: the model file loads on a thread of its own beside reading and planning, and the process's CPU
    # time of two overlapping stages would count each one's CPU in the other's.
    ("model file, read + plan", "ldfsam.infer.pipeline", "check_model_file"),
    ("model file, read + plan", "ldfsam.infer.pipeline", "load_model"),
    ("model file, read + plan", "ldfsam.infer.pipeline", "read_input"),
    ("model file, read + plan", "ldfsam.infer.pipeline", "plan_slices"),
    ("predictor set-up", "ldfsam.infer.predictor", "SlicePredictor.__init__"),
    ("prompt generator", "ldfsam.model.prompt_generator", "PromptGenerator.features"),
    ("prompt generator", "ldfsam.model.prompt_generator", "PromptGenerator.has_objects"),
    ("encoder", "ldfsam.model.ldfsam", "LDFSAM.encode_image"),
    ("decoder", "ldfsam.model.ldfsam", "LDFSAM.decode"),
    ("clean-up", "ldfsam.infer.pipeline", "clean_up"),
    ("write", "ldfsam.infer.pipeline", "write_outputs"),
    ("segment_volume", "ldfsam.infer.pipeline", "segment_volume"),
    ("predict", "ldfsam.infer.pipeline", "predict"),
]
# What ``ldfsam demo`` imports on its way (its own lazy imports), imported first to time them as one stage.
IMPORTS = ["ldfsam.cli", "ldfsam.cli.demo", "ldfsam.offline", "numpy", "SimpleITK", "ldfsam.data.volume",
           "ldfsam.errors", "ldfsam.infer", "ldfsam.infer.pipeline", "ldfsam.models.registry", "ldfsam.checkpoint",
           "ldfsam.infer.predictor", "ldfsam.model.prompt_generator", "ldfsam.model.ldfsam"]


def child(args) -> int:
    """Run ``ldfsam demo`` once with timed stages; print one JSON line."""
    import importlib
    import resource

    start_cpu = time.process_time()
    wall0 = time.perf_counter()
    t = time.process_time()
    importlib.import_module("ldfsam.cli").build_parser()
    importlib.import_module("ldfsam.offline").import_ultralytics()  # torch first, as the command imports it
    for name in IMPORTS:
        importlib.import_module(name)
    import torch

    torch.set_num_threads(args.threads)
    imports = time.process_time() - t

    inclusive: dict = {}
    # The slice predictor runs a batch's slices on several threads at once (ldfsam/infer/row_threads.py), each
    # calling the encoder or decoder: a stage's time is from the first of such overlapping calls to the last
    # one's end (the process's CPU time covers all its threads), not their sum.
    running: dict = {}
    lock = threading.Lock()

    def wrap(key, func):
        def timed(*a, **k):
            with lock:
                count, t0, w0 = running.get(key, (0, time.process_time(), time.perf_counter()))
                running[key] = (count + 1, t0, w0)
            try:
                return func(*a, **k)
            finally:
                with lock:
                    count, t0, w0 = running[key]
                    running[key] = (count - 1, t0, w0)
                    if count == 1:
                        del running[key]
                        cpu, wall = inclusive.setdefault(key, [0.0, 0.0])
                        inclusive[key] = [cpu + time.process_time() - t0, wall + time.perf_counter() - w0]
        return timed

    for stage, module, path in STAGES:
        owner = importlib.import_module(module)
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        setattr(owner, attr, wrap(stage, getattr(owner, attr)))

    from ldfsam.cli import main

    out = Path(args.workdir) / f"demo_{os.getpid()}.seg.nrrd"
    t = time.process_time()
    w = time.perf_counter()
    # Extra options of ``ldfsam demo`` for a variant (e.g. ``mine=LDFSAM_BENCH_DEMO_ARGS=--model FILE``).
    extra = os.environ.get("LDFSAM_BENCH_DEMO_ARGS", "").split()
    sys.argv = ["ldfsam", "demo", "--progress", "none", "-o", str(out), "--force", *extra]
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        code = main()  # as the ``ldfsam`` command calls it (argv from the process)
    command_cpu, command_wall = time.process_time() - t, time.perf_counter() - w
    dice = [float(line.rsplit(":", 1)[1]) for line in said.getvalue().splitlines() if line.startswith("Dice")]
    out.unlink(missing_ok=True)

    def cpu(stage):
        return inclusive.get(stage, [0.0, 0.0])[0]

    def wall(stage):
        return inclusive.get(stage, [0.0, 0.0])[1]

    names = ["model file, read + plan", "predictor set-up", "prompt generator", "encoder", "decoder", "clean-up",
             "write"]
    stages = {"python start": start_cpu, "imports": imports}
    for n in names:
        stages[n] = cpu(n)
    stages["predict, other"] = cpu("predict") - sum(cpu(n) for n in ("predictor set-up", "prompt generator",
                                                                      "encoder", "decoder"))
    stages["segment_volume, other"] = cpu("segment_volume") - cpu("predict") - sum(
        stages[n] for n in ("model file, read + plan", "clean-up", "write"))
    stages["demo command, other"] = command_cpu - cpu("segment_volume")
    walls = {n: wall(n) for n in names}
    walls["command"] = command_wall
    walls["process until exit"] = time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    print(json.dumps({"code": code, "cpu": stages, "cpu_at_end": time.process_time(), "wall": walls,
                      "system_seconds": usage.ru_stime, "peak_bytes": peak, "dice": dice[0] if dice else None}),
          flush=True)
    return 0


def run_child(args, env_extra: dict, workdir: str) -> dict:
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--workdir", workdir]
    load = os.getloadavg()[0]
    w = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - w
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "load": load, "process_wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant, interleaved")
    ap.add_argument("--variants", nargs="+", default=["default"],
                    help="default and/or name=ENV=VALUE[,ENV=VALUE] (environment of that variant's runs)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    variants = {}
    for v in args.variants:
        name, _, spec = v.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in spec.split(",") if kv) if spec else {}
    from ldfsam.cpu_precision import cpu_name

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
               "python": platform.python_version(), "load_before": os.getloadavg()}
    print(f"machine: {machine}", flush=True)
    runs: dict = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="ldfsam-bench-demo-") as work:
        for i in range(args.repeat):
            for name, env in variants.items():
                before = os.times()
                r = run_child(args, env, work)
                after = os.times()
                # The child's whole CPU time as its parent sees it: also the interpreter's exit.
                r["process_cpu"] = (after.children_user - before.children_user
                                    + after.children_system - before.children_system)
                r["cpu"]["interpreter exit"] = r["process_cpu"] - r["cpu_at_end"]
                runs[name].append(r)
                c = r["cpu"]
                print(f"{name} run {i + 1}: {r['process_cpu']:.1f} s CPU, {r['process_wall']:.1f} s wall, peak "
                      f"{r['peak_bytes'] / 2**30:.2f} GiB, Dice {r.get('dice')}, load {r['load']:.1f} | "
                      + ", ".join(f"{k} {v:.2f}" for k, v in c.items()), flush=True)
    summary = {}
    for name, rs in runs.items():
        keys = list(rs[0]["cpu"])
        med = {k: statistics.median(r["cpu"][k] for r in rs) for k in keys}
        spread = {k: [min(r["cpu"][k] for r in rs), max(r["cpu"][k] for r in rs)] for k in keys}
        total = [r["process_cpu"] for r in rs]
        summary[name] = {"process_cpu_median": statistics.median(total), "process_cpu_range": [min(total), max(total)],
                         "process_wall_median": statistics.median(r["process_wall"] for r in rs),
                         "peak_bytes_max": max(r["peak_bytes"] for r in rs), "cpu_median": med,
                         "cpu_range": spread, "loads": [r["load"] for r in rs]}
        print(f"\n{name}: process CPU median {statistics.median(total):.1f} s (range {min(total):.1f}-"
              f"{max(total):.1f}), wall median {summary[name]['process_wall_median']:.1f} s, loads "
              f"{', '.join(f'{x:.1f}' for x in summary[name]['loads'])}")
        for k in keys:
            print(f"  {k:24s} {med[k]:7.2f} s  ({spread[k][0]:.2f}-{spread[k][1]:.2f})  "
                  f"{med[k] / statistics.median(total):5.1%}")
    if len(runs) > 1:
        names = list(runs)
        base = names[0]
        for other in names[1:]:
            ratios = [b["process_cpu"] / a["process_cpu"] for a, b in zip(runs[base], runs[other])]
            print(f"{other} / {base}, process CPU, per interleaved pair: "
                  + ", ".join(f"{r:.3f}" for r in ratios) + f" (median {statistics.median(ratios):.3f})")
            summary[f"{other}/{base}"] = ratios
    machine["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
