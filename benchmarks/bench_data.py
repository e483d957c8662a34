"""Data pipeline timings: phantom generation, preprocessing of an inference-size volume, cache build, items.

    python benchmarks/bench_data.py [--big 420 650 650] [--out results.json]

Prints one JSON document (machine, figures in seconds). Figures are recorded in docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _t(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, round(time.perf_counter() - t0, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, nargs=3, default=(420, 650, 650), metavar=("Z", "Y", "X"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import psutil
    import SimpleITK as sitk
    import torch

    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.phantom import make_phantom, teeth_slice_fraction, write_phantom_dataset
    from ldfsam.data.prepared import PreparedData, PrepareOptions, prepare_dataset
    from ldfsam.data.preprocess import prepare_volume, quantize

    torch.set_num_threads(1)
    figures = {}
    make_phantom((64, 128, 128), seed=0)
    _, figures["phantom_64x128x128_s"] = _t(make_phantom, (64, 128, 128), seed=1)
    (image, labels), figures["phantom_big_s"] = _t(make_phantom, tuple(args.big), 0.25, seed=0, teeth_fraction=0.4)
    figures["phantom_big_teeth_fraction"] = teeth_slice_fraction(labels)
    del labels
    prepared, figures["prepare_volume_big_no_resample_s"] = _t(prepare_volume, image, PreprocessConfig())
    _, figures["quantize_big_s"] = _t(quantize, prepared.array)
    del prepared
    coarse = sitk.Image(image)
    coarse.SetSpacing((0.3, 0.3, 0.3))  # a 0.3 mm scan: resampled to 0.25 mm (x1.73 voxels)
    del image
    prepared, figures["prepare_volume_big_resample_0.3_to_0.25_s"] = _t(prepare_volume, coarse, PreprocessConfig())
    figures["resampled_shape"] = list(prepared.array.shape)
    del prepared, coarse

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        write_phantom_dataset(src, cases=4, shape=(64, 128, 128))
        cfg = PreprocessConfig()
        _, figures["prepare_4x64x128x128_with_yolo_s"] = _t(prepare_dataset, src, out, cfg,
                                                              PrepareOptions(test_count=1))
        _, figures["prepare_rerun_cached_s"] = _t(prepare_dataset, src, out, cfg, PrepareOptions(test_count=1))
        ds = PreparedData(out).slice_dataset("train")
        ds[0]
        t0 = time.perf_counter()
        n = min(64, len(ds))
        for i in range(n):
            ds[i]
        figures["slice_item_ms"] = round((time.perf_counter() - t0) / n * 1000, 2)

    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                       "load_avg_1min": round(os.getloadavg()[0], 2), "torch_threads": 1},
           "big_shape": list(args.big), "figures": figures}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
