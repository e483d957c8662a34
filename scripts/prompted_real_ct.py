"""Prompted segmentation on the real head CT: single teeth of ``ct-head-stanford``'s jaw crop from a 3D box each,
pictured on axial and sagittal slices (docs/images/prompted_ct_<name>.png).

    python scripts/prompted_real_ct.py [--mask-prompt]

The boxes were placed by eye on slices of the crop (voxel x, y, z; the crop's voxels are 1 × 1 × 2 mm, origin
(0, 0, 120) mm, identity direction, so LPS mm = (x, y, 120 + 2z)); slice 0 is the top of the crop. The CT is read
from ``$LDFSAM_DATA_DIR`` (default ``../shared/data``) and never copied into the repository. Prints per tooth the
slices segmented, the voxels, and how many lie outside the box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# name: (x0, x1, y0, y1, z0, z1) inclusive voxels of the crop.
TEETH = {
    "lower incisor": (109, 116, 33, 44, 21, 25),
    "lower molar": (130, 142, 60, 73, 23, 27),
}


def lps(x: float, y: float, z: float) -> list:
    return [x, y, 120.0 + 2.0 * z]


def prompts_document() -> dict:
    out = []
    for name, (x0, x1, y0, y1, z0, z1) in TEETH.items():
        out.append({"name": name, "box": {"min": lps(x0 - 0.5, y0 - 0.5, z0 - 0.5),
                                          "max": lps(x1 + 0.5, y1 + 0.5, z1 + 0.5)}})
    return {"structures": out}


def picture(ct: np.ndarray, mask: np.ndarray, box, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x0, x1, y0, y1, z0, z1 = box
    zs = np.nonzero(mask.any((1, 2)))[0]
    zm = (z0 + z1) // 2
    xm = int(np.round(np.nonzero(mask[zm])[1].mean())) if mask[zm].any() else (x0 + x1) // 2
    pad = 18
    ya, yb = max(0, y0 - pad), min(ct.shape[1], y1 + pad)
    xa, xb = max(0, x0 - pad), min(ct.shape[2], x1 + pad)
    za, zb = max(0, z0 - 6), min(ct.shape[0], z1 + 7)
    fig, ax = plt.subplots(1, 2, figsize=(7.2, 3.4))
    ax[0].imshow(ct[zm, ya:yb, xa:xb], cmap="gray", vmin=800, vmax=3200, extent=(xa - .5, xb - .5, yb - .5, ya - .5))
    ax[0].contour(np.arange(xa, xb), np.arange(ya, yb), mask[zm, ya:yb, xa:xb], levels=[0.5], colors="lime",
                  linewidths=1.2)
    ax[0].add_patch(Rectangle((x0 - .5, y0 - .5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="orange", ls="--"))
    ax[0].set_title(f"axial, slice {zm}", fontsize=9)
    ax[1].imshow(ct[za:zb, ya:yb, xm], cmap="gray", vmin=800, vmax=3200, aspect=2.0,
                 extent=(ya - .5, yb - .5, zb - .5, za - .5))
    ax[1].contour(np.arange(ya, yb), np.arange(za, zb), mask[za:zb, ya:yb, xm], levels=[0.5], colors="lime",
                  linewidths=1.2)
    ax[1].add_patch(Rectangle((y0 - .5, z0 - .5), y1 - y0 + 1, z1 - z0 + 1, fill=False, ec="orange", ls="--"))
    ax[1].set_title(f"sagittal, x = {xm} (1 × 2 mm pixels)", fontsize=9)
    for a in ax:
        a.tick_params(labelsize=7)
    fig.suptitle(f"{title}: segmented on slices {zs.min()}-{zs.max()}" if len(zs) else f"{title}: empty",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> int:
    from ldfsam.infer.propagate import PropagationConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    p.add_argument("--input", type=Path, default=data / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--mask-prompt", action="store_true", help="previous slice's logits as SAM's mask prompt")
    p.add_argument("--view-context", type=float, default=PropagationConfig.view_context,
                   help="the encoder's view around the box, in box sizes (0: whole slices)")
    args = p.parse_args()
    import SimpleITK as sitk
    import torch

    from ldfsam.infer.prompted import segment_with_prompts

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.json"
        prompts.write_text(json.dumps(prompts_document(), indent=1))
        t = time.perf_counter()
        result = segment_with_prompts(args.input, Path(tmp) / "teeth.seg.nrrd", prompts,
                                      propagation=PropagationConfig(mask_prompt=args.mask_prompt,
                                                                                view_context=args.view_context))
        seconds = time.perf_counter() - t
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(args.input)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for (name, box), value in zip(TEETH.items(), result.values):
        mask = result.labels == value
        x0, x1, y0, y1, z0, z1 = box
        inside = mask[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1].sum()
        zs = np.nonzero(mask.any((1, 2)))[0]
        print(f"{name}: {int(mask.sum())} voxels on slices {list(zs)}, {int(mask.sum() - inside)} outside the box; "
              f"stopped {result.structures[name].stopped}")
        picture(ct, mask, box, name, args.out_dir / f"prompted_ct_{name.replace(' ', '_')}.png")
    print(f"{seconds:.1f} s for both teeth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
