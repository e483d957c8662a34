"""Picture of a model on the real head CT: axial and sagittal slices of ``ct-head-stanford``'s jaw crop with the
segmentation overlaid (docs/images/demo_on_ct_head.png by default).

    python scripts/render_real_ct.py [--model ldfsam-demo] [--out docs/images/demo_on_ct_head.png]

The CT is read from ``$LDFSAM_DATA_DIR`` (default ``../shared/data``); it is never copied into the repository.
Prints how many voxels were segmented on each slice. On the crop (slice 0 is the skull-base side) the upper tooth
row lies at slices 5-17 (root apices about 5-8, crowns 9-17), slice 18 is the gap between the rows, the lower row
at 19-30 (crowns 19-26, incisor tips to 27, roots in the mandible to about 30); enamel and metal (values of 3000
and more) lie on slices 10-27, the metal fillings and their streaks at about 15-22, the mandible's body at 25-39,
the mastoids and petrous bones at 0-14, the cervical spine throughout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    p.add_argument("--input", type=Path, default=data / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    p.add_argument("--model", default="ldfsam-demo")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "demo_on_ct_head.png")
    p.add_argument("--slices", default="8,12,14,17,20,23,26", help="axial slices of the crop to show")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    from ldfsam.infer.pipeline import segment_volume

    result = segment_volume(args.input, None, model=args.model, device="cpu")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(args.input))).astype(np.float32)
    labels = result.labels > 0
    total = int(labels.sum())
    print(f"segmented {total} voxels; per slice: "
          + " ".join(f"{z}:{int(labels[z].sum())}" for z in range(labels.shape[0]) if labels[z].any()))
    lo, hi = np.percentile(image, [1, 99.5])
    red = ListedColormap(["red"])
    zs = [int(z) for z in args.slices.split(",")]
    cx = int(np.argmax(labels.sum(axis=(0, 1)))) if total else image.shape[2] // 2
    fig, axes = plt.subplots(1, len(zs) + 1, figsize=(2.4 * (len(zs) + 1), 2.8), dpi=100)
    for ax, z in zip(axes, zs):
        ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(np.ma.masked_where(~labels[z], labels[z]), cmap=red, alpha=0.6)
        ax.set_title(f"axial z={z}", fontsize=8)
        ax.axis("off")
    ax = axes[-1]
    sag, mask = image[:, :, cx], labels[:, :, cx]
    ax.imshow(sag, cmap="gray", vmin=lo, vmax=hi, aspect=2.0, origin="upper")
    ax.imshow(np.ma.masked_where(~mask, mask), cmap=red, alpha=0.6, aspect=2.0)
    ax.set_title(f"sagittal x={cx}", fontsize=8)
    ax.axis("off")
    fig.suptitle(f"{args.model} on {args.input.name} (real CT; red: segmented as tooth)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
