"""Many volumes at once: one process (model loaded once, reading and writing overlapped with the model) against
the same without overlap, the old loop of one ``ldfsam segment`` process per volume, and two torchrun ranks.

    python benchmarks/bench_cohort.py                      # 8 phantoms of 64x160x160, the demo model
    python benchmarks/bench_cohort.py --volumes 8 --shape 64 160 160 --threads 2 --json out.json

Every mode runs as fresh processes (start-up, imports and model loads count, as they do for a user) on the same
phantom .nii.gz files, writing .seg.nrrd. Figures: wall time, volumes per minute, model loads, and the model's
idle time: for the one-process modes, the time the loaded model waited for a volume to be read or a result to be
written (``segment_many``'s ``model_idle_s``); for the loop, everything in a process besides its prediction
(start-up, model load, reading, writing), since the model exists only while a process predicts. On a shared
machine compare the ratios of one run; the load average is recorded before and after each mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ONE_PROCESS = """
import json, sys
from ldfsam.offline import import_ultralytics
import_ultralytics()
from ldfsam.infer import segment_many
s = segment_many(sys.argv[1], sys.argv[2], device="cpu", overlap=sys.argv[3] == "on")
print(json.dumps({"done": s.done, "failed": s.failed, "model_loads": s.model_loads, "model_s": s.model_s,
                  "model_idle_s": s.model_idle_s}))
"""


def machine(threads: int) -> dict:
    import torch

    from ldfsam.cpu_precision import cpu_supports_bf16

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next((x.split(":", 1)[1].strip() for x in text.splitlines() if x.startswith("model name")), cpu)
        line = next((x for x in text.splitlines() if x.startswith("flags")), "")
        flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in line.split()]
    except OSError:
        pass
    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "native_bf16": cpu_supports_bf16(), "python": platform.python_version()}


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def run_loop(volumes, out: Path, threads: int) -> dict:
    model_s, loads = 0.0, 0
    t0 = time.perf_counter()
    for v in volumes:
        r = subprocess.run([sys.executable, "-m", "ldfsam", "segment", str(v), "-o", str(out / f"{v.name}.seg.nrrd"),
                            "--device", "cpu", "--progress", "none"], capture_output=True, text=True,
                           env=_env(threads), cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        model_s += float(re.search(r"\(model ([0-9.]+) s\)", r.stdout).group(1))
        loads += 1
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "model_loads": loads, "model_s": model_s, "model_idle_s": wall - model_s}


def run_one(folder: Path, out: Path, threads: int, overlap: bool) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(folder), str(out), "on" if overlap else "off"],
                       capture_output=True, text=True, env=_env(threads), cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **{k: result[k] for k in ("model_loads", "model_s", "model_idle_s")}}


def run_ranks(folder: Path, out: Path, threads: int, ranks: int) -> dict:
    from ldfsam.progress import parse_event

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                        "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "ldfsam", "segment",
                        str(folder), "-o", str(out), "--device", "cpu", "--progress", "json"],
                       capture_output=True, text=True, env=_env(max(1, threads // ranks)), cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    done = [e for e in map(parse_event, r.stdout.splitlines()) if e and e["phase"] == "cohort" and e["kind"] == "done"]
    assert len(done) == ranks
    return {"wall_s": wall, "model_loads": sum(e["model_loads"] for e in done), "model_s": None,
            "model_idle_s": sum(e["model_idle_s"] for e in done)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 160, 160), metavar=("Z", "Y", "X"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of one process "
                    "(each of N ranks gets threads/N)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["loop", "one", "one-no-overlap", "ranks"])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    import SimpleITK as sitk

    from ldfsam.data.phantom import make_phantom

    results = {"machine": machine(args.threads), "volumes": args.volumes, "shape": list(args.shape), "modes": {}}
    print(json.dumps(results["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scans"
        folder.mkdir()
        volumes = []
        for i in range(args.volumes):
            image = make_phantom(tuple(args.shape), spacing=0.25, seed=i, teeth_fraction=0.5)[0]
            volumes.append(folder / f"case{i}.nii.gz")
            sitk.WriteImage(image, str(volumes[-1]), True)
        for mode in args.modes:
            out = Path(tmp) / f"out-{mode}"
            out.mkdir()
            before = _load()
            if mode == "loop":
                row = run_loop(volumes, out, args.threads)
            elif mode == "one":
                row = run_one(folder, out, args.threads, overlap=True)
            elif mode == "one-no-overlap":
                row = run_one(folder, out, args.threads, overlap=False)
            elif mode == "ranks":
                row = run_ranks(folder, out, args.threads, args.ranks)
            else:
                raise SystemExit(f"unknown mode {mode}")
            row.update(volumes_per_minute=60 * args.volumes / row["wall_s"], load_before=before, load_after=_load())
            results["modes"][mode] = row
            print(mode, json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    base = results["modes"].get("loop")
    print("\n| mode | wall s | volumes/min | vs loop | model loads | model idle s | load avg before/after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, row in results["modes"].items():
        ratio = f"{base['wall_s'] / row['wall_s']:.2f}x" if base else ""
        print(f"| {mode} | {row['wall_s']:.1f} | {row['volumes_per_minute']:.2f} | {ratio} | {row['model_loads']} | "
              f"{row['model_idle_s']:.1f} | {row['load_before']} / {row['load_after']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
