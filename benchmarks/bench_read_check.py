"""What the completeness check of compressed volumes costs: SimpleITK's read of a CBCT-sized volume against
``ldfsam.data.integrity.check_volume_file`` on it, per format, and the slow path (inflating the stream again)
that a file whose voxels the reader converted takes.

    python benchmarks/bench_read_check.py
    python benchmarks/bench_read_check.py --slices 420 --size 650 --repeats 3 --json out.json

The volume is the bundled demo phantom resampled (linear) to SLICES×SIZE×SIZE int16 voxels: CT-like grey values,
compressing like a real scan. Files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=420)
    ap.add_argument("--size", type=int, default=650)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import SimpleITK as sitk

    from ldfsam.data import integrity
    from ldfsam.models.registry import RESOURCES

    src = sitk.ReadImage(str(RESOURCES / "demo" / "phantom.nii.gz"))
    ref = sitk.Image([args.size, args.size, args.slices], sitk.sitkInt16)
    ref.SetSpacing([s * n / m for s, n, m in zip(src.GetSpacing(), src.GetSize(), ref.GetSize())])
    ref.SetOrigin(src.GetOrigin())
    ref.SetDirection(src.GetDirection())
    image = sitk.Cast(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0), sitk.sitkInt16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".nii.gz", ".nrrd", ".mha"):
            path = Path(tmp) / f"volume{suffix}"
            sitk.WriteImage(image, str(path), True)
            read = check = inflate = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                got = sitk.ReadImage(str(path))
                read = min(read, time.perf_counter() - t)
                t = time.perf_counter()
                integrity.check_volume_file(path, got)
                check = min(check, time.perf_counter() - t)
                t = time.perf_counter()
                integrity.check_volume_file(path, None)  # no voxels to compare: the stream is inflated
                inflate = min(inflate, time.perf_counter() - t)
            row = {"format": suffix, "mb": round(path.stat().st_size / 2**20, 1),
                   "voxel_mb": round(image.GetNumberOfPixels() * 2 / 2**20, 1), "read_s": round(read, 3),
                   "check_s": round(check, 3), "inflate_s": round(inflate, 3)}
            rows.append(row)
            print(f"{suffix:8s} {row['mb']:7.1f} MB file, {row['voxel_mb']:.0f} MB voxels: read {read:.2f} s, "
                  f"check {check:.3f} s ({100 * check / read:.0f}% of the read), slow path {inflate:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
