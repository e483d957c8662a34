"""Augmented phantoms beside a real head CT, both as the model sees them (after preprocessing), to a PNG.

    python scripts/phantom_vs_real.py --out docs/images/phantom_vs_real.png

Top rows: axial slices of real scans' tooth regions (default: the Stanford head CT's jaw crop and VTK's headsq
from the shared data) windowed by ``preprocess.prepare_volume``; the rows below: augmented phantoms
(``ldfsam.data.synthetic``) through the same preprocessing, from below the tooth rows to above them, their tooth
labels outlined. Also prints, for every slice of the real volumes and of ``--stats`` phantoms as the model sees
them (after preprocessing, at ``--size``), the figures the augmentation defaults were tuned on: the soft-tissue
grey level (the histogram's mode between 0.2 and 0.7), the fine-grained noise (std of the image minus its
Gaussian blur, sigma 1.5 px, in flat soft tissue) and the bright share (voxels above 0.8 among those above 0.2).
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))


def figures(volume: np.ndarray):
    """(soft-tissue level, fine noise, bright share) of slices (N, H, W) in [0, 1]."""
    from scipy import ndimage

    head = volume > 0.2
    hist, edges = np.histogram(volume[head & (volume < 0.7)], bins=50, range=(0.2, 0.7))
    soft = float(edges[np.argmax(hist)] + 0.005)
    flat = ndimage.binary_erosion(np.abs(volume - soft) < 0.06, structure=np.ones((1, 5, 5), bool))
    fine = volume - ndimage.gaussian_filter(volume, (0, 1.5, 1.5))
    return soft, float(fine[flat].std()), float(np.count_nonzero(volume > 0.8) / max(1, np.count_nonzero(head)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", nargs="+", metavar="PATH:Z,Z,...",
                    default=[f"{DATA / 'ct-head-stanford' / 'CThead_jaw_z60-112.nii.gz'}:14,18,22,26,30",
                             f"{DATA / 'ct-headsq' / 'headsq.nii.gz'}:42,50,58,66,74"],
                    help="real volumes, each with the axial slices to show (the same count for every volume)")
    ap.add_argument("--phantoms", type=int, default=3, help="rows of augmented phantoms")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256, help="model input size the slices are resized to")
    ap.add_argument("--clean", action="store_true", help="phantoms without augmentation or extra anatomy")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "phantom_vs_real.png")
    ap.add_argument("--dpi", type=int, default=50)
    ap.add_argument("--stats", type=int, default=12, help="phantoms measured for the printed figures")
    args = ap.parse_args()

    from ldfsam.data.config import PreprocessConfig
    from ldfsam.data.preprocess import prepare_volume
    from ldfsam.data.volume import read_volume

    # The real volumes first (light imports): a bad --real fails before torch and matplotlib load.
    pre = PreprocessConfig(target_spacing=None)
    volumes = []
    for spec in args.real:
        path, _, zs = spec.rpartition(":")
        try:
            slices = [int(z) for z in zs.split(",")]
        except ValueError:
            ap.error(f"--real {spec!r}: expected PATH:Z,Z,... (axial slice indices)")
        if volumes and len(slices) != len(volumes[0][1]):
            ap.error(f"--real {spec!r}: {len(slices)} slices, the first volume has {len(volumes[0][1])}")
        volume = prepare_volume(read_volume(path), pre).array
        bad = [z for z in slices if not 0 <= z < volume.shape[0]]
        if bad:
            ap.error(f"--real {spec!r}: slices {bad} outside 0..{volume.shape[0] - 1}")
        volumes.append((Path(path).name, slices, volume))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image

    from ldfsam.atomic import atomic_path
    from ldfsam.data.augment import AugmentConfig
    from ldfsam.data.preprocess import to_model_input
    from ldfsam.data.synthetic import PhantomSampling, iter_training_slices

    reals = []
    for name, slices, volume in volumes:
        model_input = to_model_input(torch.from_numpy(volume), args.size)[:, 0].numpy()
        reals.append((name, slices, model_input[slices], figures(model_input)))
    n_cols = len(reals[0][1])
    sampling = PhantomSampling(anatomy_p=0.0) if args.clean else None
    augment = AugmentConfig.none() if args.clean else None
    rows = []
    for part in iter_training_slices(args.phantoms, args.size, args.seed, pre, sampling, augment):
        with_teeth = np.nonzero(part.masks.reshape(len(part), -1).any(1))[0]
        # Slices from below the tooth rows to above them, as the real row's.
        lo, hi = (int(with_teeth[0]), int(with_teeth[-1])) if with_teeth.size else (0, len(part) - 1)
        picks = np.linspace(max(0, lo - 2), min(len(part) - 1, hi + 2), n_cols).round().astype(int)
        rows.append((part.images[picks] / 255.0, part.masks[picks]))

    print("as the model sees them:        soft tissue  fine noise  bright share")
    for name, _, _, f in reals:
        print(f"  {name:28s} {f[0]:11.3f} {f[1]:11.4f} {f[2]:12.3f}")
    measured = np.array([figures(part.images.astype(np.float32) / 255.0)
                         for part in iter_training_slices(args.stats, args.size, args.seed, pre, sampling, augment)])
    for label, f in (("phantoms, median", np.median(measured, 0)), ("phantoms, min", measured.min(0)),
                     ("phantoms, max", measured.max(0))):
        print(f"  {label:28s} {f[0]:11.3f} {f[1]:11.4f} {f[2]:12.3f}")

    n_rows = len(reals) + len(rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.3 * n_rows))
    axes = np.atleast_2d(axes)
    for r, (name, slices, img, _) in enumerate(reals):
        for c, z in enumerate(slices):
            axes[r, c].imshow(img[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(f"{name.split('.')[0]} z {z}", fontsize=7)
    for r, (img, mask) in enumerate(rows, start=len(reals)):
        for c in range(n_cols):
            axes[r, c].imshow(img[c], cmap="gray", vmin=0, vmax=1)
            if mask[c].any():
                axes[r, c].contour(mask[c], [0.5], colors="r", linewidths=0.3)
        axes[r, 0].set_title(f"phantom {args.seed + r - len(reals)}", fontsize=7, loc="left")
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout(pad=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=args.dpi, format="png")
    # Grey slices and red outlines need few colours: a palette PNG is a third of the size.
    picture = Image.open(buf).convert("RGB").quantize(colors=96)
    with atomic_path(args.out) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
