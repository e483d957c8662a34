"""Augmented phantoms beside a real head CT, both as the model sees them (after preprocessing), to a PNG.

    python scripts/phantom_vs_real.py --out docs/images/phantom_vs_real.png

Top row: axial slices of the real scan's tooth region (default: the Stanford head CT's jaw crop in the shared
data) windowed by ``preprocess.prepare_volume``; the rows below: augmented phantoms (``ldfsam.data.synthetic``)
through the same preprocessing, their tooth labels outlined. Also prints the grey-value histograms of both after
preprocessing (deciles of the voxels inside the head), the numbers the augmentation defaults were tuned on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=DATA / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    ap.add_argument("--slices", type=int, nargs="+", default=[14, 18, 22, 26, 30],
                    help="axial slices of the real scan to show")
    ap.add_argument("--phantoms", type=int, default=3, help="rows of augmented phantoms")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256, help="model input size the slices are resized to")
    ap.add_argument("--clean", action="store_true", help="phantoms without augmentation or extra anatomy")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "phantom_vs_real.png")
    ap.add_argument("--dpi", type=int, default=50)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ldfsam.atomic import atomic_path
    from ldfsam.data.augment import AugmentConfig
    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.preprocess import prepare_volume, to_model_input
    from ldfsam.data.synthetic import PhantomSampling, iter_training_slices
    from ldfsam.data.volume import read_volume

    pre = PreprocessConfig(target_spacing=None)
    real = prepare_volume(read_volume(args.real), pre).array
    bad = [z for z in args.slices if not 0 <= z < real.shape[0]]
    if bad:
        ap.error(f"--slices {bad} outside the real scan's 0..{real.shape[0] - 1}")
    real_img = to_model_input(torch.from_numpy(real[args.slices]), args.size)[:, 0].numpy()
    sampling = PhantomSampling(anatomy_p=0.0) if args.clean else None
    augment = AugmentConfig.none() if args.clean else None
    rows = []
    for part in iter_training_slices(args.phantoms, args.size, args.seed, pre, sampling, augment):
        with_teeth = np.nonzero(part.masks.reshape(len(part), -1).any(1))[0]
        # Slices from below the tooth rows to above them, as the real row's.
        lo, hi = (int(with_teeth[0]), int(with_teeth[-1])) if with_teeth.size else (0, len(part) - 1)
        picks = np.linspace(max(0, lo - 2), min(len(part) - 1, hi + 2), len(args.slices)).round().astype(int)
        rows.append((part.images[picks] / 255.0, part.masks[picks]))

    def deciles(a: np.ndarray) -> str:
        inside = a[a > 0.2]
        return " ".join(f"{v:.2f}" for v in np.percentile(inside, np.arange(10, 100, 10)))

    print(f"real    deciles inside the head: {deciles(real_img)}")
    for i, (img, _) in enumerate(rows):
        print(f"phantom {i} deciles inside the head: {deciles(img)}")

    n_cols = len(args.slices)
    fig, axes = plt.subplots(1 + len(rows), n_cols, figsize=(2.2 * n_cols, 2.3 * (1 + len(rows))))
    axes = np.atleast_2d(axes)
    for c, z in enumerate(args.slices):
        axes[0, c].imshow(real_img[c], cmap="gray", vmin=0, vmax=1)
        axes[0, c].set_title(f"real z {z}", fontsize=8)
    for r, (img, mask) in enumerate(rows, start=1):
        for c in range(n_cols):
            axes[r, c].imshow(img[c], cmap="gray", vmin=0, vmax=1)
            if mask[c].any():
                axes[r, c].contour(mask[c], [0.5], colors="r", linewidths=0.4)
        axes[r, 0].set_title(f"phantom {args.seed + r - 1}", fontsize=8, loc="left")
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout(pad=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=args.dpi, format="png")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
