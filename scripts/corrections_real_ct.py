"""Learning from corrections on the real head CT: the upper teeth labelled with prompted segmentation, the bundled
model improved on them, the lower teeth (never labelled) segmented before and after.

    python scripts/corrections_real_ct.py --work runs/ct-corrections [--reviewed teeth+6-9] [--mix-phantoms 2]

Stages (each kept in ``--work``, so a second call goes on where the first stopped):

1. prompted segmentation of the twelve upper teeth of ``ct-head-stanford``'s jaw crop, one box per tooth on slice
   13 (the boxes of ``scripts/prompted_real_ct.py``), propagated with the stop rules; the union is the label map;
2. ``add_training_case`` with only what ``--reviewed`` names reviewed: whole slices where the prompted result
   was checked by eye (every voxel of them counts, background too), the prompted teeth (each with a one-voxel
   shell), or both; everything else, the lower row included, is ignored by the losses;
3. the bundled model on the whole crop ("before");
4. ``ldfsam train CASES --from ldfsam-demo --mix-phantoms M`` (the real command, wall and CPU seconds of the
   process tree);
5. the new model on the whole crop ("after"); voxels marked per region and pictures
   (``docs/images/corrections_ct_*.png``).

Regions of the crop (slice 0 is the skull-base side, voxels 1 x 1 x 2 mm): the upper row occupies slices 5-17,
the lower row 19-30 (crowns 19-22, roots in the mandible to about 30), both inside the arch's in-plane box
``ARCH``; everything marked elsewhere (mastoids, petrous bones, spine, nasal floor above slice 5) is outside the
tooth rows. The CT is read from ``$LDFSAM_DATA_DIR`` (default ``../shared/data``) and never copied into the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
UPPER_ROW, LOWER_ROW = (5, 17), (19, 30)
ARCH = (62, 160, 15, 90)  # x0, x1, y0, y1 inclusive: the dental arch's in-plane box on every slice of the rows


def parse_range(text: str) -> list:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def regions(labels: np.ndarray) -> dict:
    """Voxels marked per region: upper row, lower row (inside the arch box), and outside the tooth rows."""
    marked = labels > 0
    arch = np.zeros_like(marked)
    x0, x1, y0, y1 = ARCH
    arch[:, y0:y1 + 1, x0:x1 + 1] = True
    rows = {}
    for name, (z0, z1) in (("upper_row", UPPER_ROW), ("lower_row", LOWER_ROW)):
        inside = np.zeros_like(marked)
        inside[z0:z1 + 1] = arch[z0:z1 + 1]
        rows[name] = inside
    out = {name: int((marked & m).sum()) for name, m in rows.items()}
    out["outside_rows"] = int((marked & ~rows["upper_row"] & ~rows["lower_row"]).sum())
    out["total"] = int(marked.sum())
    out["per_slice"] = {int(z): int(marked[z].sum()) for z in range(marked.shape[0]) if marked[z].any()}
    return out


def prompted_upper(ct_path: Path, out: Path) -> dict:
    """Stage 1: the upper teeth, one box each, as a label map (FDI values) on the crop's grid."""
    import SimpleITK as sitk
    from prompted_real_ct import UPPER, structure

    from ldfsam.infer.prompted import PromptedSession
    from ldfsam.infer.prompts import parse_prompts
    from ldfsam.infer.propagate import PropagationConfig

    t = time.perf_counter()
    session = PromptedSession(ct_path, propagation=PropagationConfig(stop_rules=True))
    entries = [structure(fdi, "box")[0] for fdi in UPPER]
    labels = None
    spans = {}
    for fdi, prompt in zip(UPPER, parse_prompts({"structures": entries})):
        mask = session.segment(prompt).mask
        labels = np.zeros(mask.shape, np.uint8) if labels is None else labels
        labels[mask & (labels == 0)] = fdi
        zs = np.nonzero(mask.any((1, 2)))[0]
        spans[fdi] = [int(zs.min()), int(zs.max())] if len(zs) else None
        print(f"tooth {fdi}: slices {spans[fdi]}, {int(mask.sum())} voxels", flush=True)
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(session.image)
    sitk.WriteImage(img, str(out))
    return {"seconds": time.perf_counter() - t, "spans": spans, "encoded": session.sam.encoded}


def segment(model: str, ct_path: Path, out: Path) -> dict:
    import SimpleITK as sitk

    from ldfsam.infer.pipeline import segment_volume

    t = time.perf_counter()
    result = segment_volume(ct_path, out, model=model, device="cpu", force=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    return {"seconds": time.perf_counter() - t, "regions": regions(labels), "load": os.getloadavg(),
            "slices_with_teeth": result.slices_with_teeth}


def picture(ct: np.ndarray, upper: np.ndarray, before: np.ndarray, after: np.ndarray, reviewed: list,
            out: Path, zs=(8, 13, 16, 20, 22, 24, 26), teeth: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    red, green = ListedColormap(["red"]), ListedColormap(["lime"])
    rows = (("training labels (prompted, upper row)", upper, green), ("ldfsam-demo (before)", before, red),
            ("improved (after)", after, red))
    fig, axes = plt.subplots(3, len(zs) + 1, figsize=(2.0 * (len(zs) + 1), 6.6), dpi=90)
    ya, yb, xa, xb = 0, 130, 40, 180
    for r, (title, labels, cmap) in enumerate(rows):
        for c, z in enumerate(zs):
            ax = axes[r, c]
            ax.imshow(ct[z, ya:yb, xa:xb], cmap="gray", vmin=800, vmax=3200)
            m = labels[z, ya:yb, xa:xb] > 0
            ax.imshow(np.ma.masked_where(~m, m), cmap=cmap, alpha=0.6)
            tag = "" if r else ("slice reviewed" if z in reviewed else
                                "teeth reviewed" if teeth and labels[z].any() else "not reviewed")
            ax.set_title(f"z={z} {tag}".strip(), fontsize=7)
            ax.axis("off")
        ax = axes[r, -1]
        cx = 136
        ax.imshow(ct[:, ya:yb, cx], cmap="gray", vmin=800, vmax=3200, aspect=2.0)
        m = labels[:, ya:yb, cx] > 0
        ax.imshow(np.ma.masked_where(~m, m), cmap=cmap, alpha=0.6, aspect=2.0)
        ax.set_title(f"sagittal x={cx}", fontsize=7)
        ax.axis("off")
        axes[r, 0].text(-8, (yb - ya) / 2, title, rotation=90, va="center", ha="right", fontsize=7)
    fig.suptitle("real head CT (jaw crop): upper teeth labelled by prompted segmentation, lower teeth never "
                 "labelled", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
    p.add_argument("--input", type=Path, default=data / "ct-head-stanford" / "CThead_jaw_z60-112.nii.gz")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--reviewed", default="teeth", help="slices of the crop whose prompted labels were checked "
                   "whole (e.g. 6-9), 'teeth': each prompted tooth with a one-voxel shell (the unprompted molars "
                   "26-27 lie on slices 10-15, which therefore cannot be reviewed whole), or both: teeth+6-9")
    p.add_argument("--mix-phantoms", type=int, default=2)
    p.add_argument("--phase2-epochs", type=int)
    p.add_argument("--stop-after", choices=("prompted", "before", "train"), help="stop after this stage")
    p.add_argument("--picture", type=Path, default=REPO / "docs" / "images" / "corrections_ct.png")
    args = p.parse_args()
    import SimpleITK as sitk

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    from bench_corrections import MEMO

    MEMO.install(work / "embeddings")  # the frozen encoder's embeddings of the crop, shared by before and after
    res_path = work / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}

    def save():
        res_path.write_text(json.dumps(res, indent=1))

    upper = work / "ct_upper_prompted.nii.gz"
    if "prompted" not in res or not upper.is_file():
        res["prompted"] = prompted_upper(args.input, upper)
        save()
    if args.stop_after == "prompted":
        return 0
    teeth, _, slices = args.reviewed.partition("+") if args.reviewed.startswith("teeth") else ("", "", args.reviewed)
    reviewed = parse_range(slices) if slices else []
    cases = work / f"cases_{args.reviewed}"
    if not cases.is_dir():
        from prompted_real_ct import UPPER

        from ldfsam.data.training_case import add_training_case

        add_training_case(args.input, upper, cases, "ct_upper", reviewed_slices=reviewed or None,
                          reviewed_structures=list(UPPER) if teeth else ())
    if "before" not in res:
        res["before"] = segment("ldfsam-demo", args.input, work / "before.nii.gz")
        save()
    if args.stop_after == "before":
        return 0
    arm = args.reviewed + (f"_mix{args.mix_phantoms}" if args.mix_phantoms else "")
    key = f"train_{arm}"
    run = work / f"run_{arm}"
    if key not in res:
        cfg = work / "train.json"
        cfg.write_text(json.dumps({"prepare": {"test_fraction": 0.0, "val_fraction": 0.0}}))
        cmd = [sys.executable, "-m", "ldfsam", "train", str(cases), "-o", str(run), "--from", "ldfsam-demo",
               "--mix-phantoms", str(args.mix_phantoms), "--config", str(cfg), "--device", "cpu", "--workers", "0",
               "--progress", "none"]
        if args.phase2_epochs:
            cmd += ["--phase2-epochs", str(args.phase2_epochs)]
        if (run / "train.json").is_file():
            cmd = cmd[:7] + ["--resume", "--progress", "none"]
        stages = run / "stages.json"
        if stages.is_file() and "evaluate" in json.loads(stages.read_text())["stages"]:
            cmd = None  # a finished run whose timing was not recorded: only the stages' own seconds are known
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0, t0 = os.getloadavg(), time.monotonic()
        if cmd is not None:
            subprocess.run(cmd, check=True, cwd=REPO)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        train = json.loads((run / "train.json").read_text())["config"]
        res[key] = {"wall_s": time.monotonic() - t0 if cmd else None,
                    "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime) if cmd else None,
                    "load": [load0, os.getloadavg()], "reviewed": reviewed,
                    "phase2_epochs": train["finetune"]["epochs"], "lr": train["finetune"]["lr"],
                    "stages_s": {k: v["seconds"] for k, v in
                                 json.loads((run / "stages.json").read_text())["stages"].items()}}
        save()
    if args.stop_after == "train":
        return 0
    after_key = f"after_{arm}"
    if after_key not in res:
        res[after_key] = segment(str(run / "phase2" / "model.safetensors"), args.input, work / f"{after_key}.nii.gz")
        save()
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(args.input))).astype(np.float32)
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in
              (upper, work / "before.nii.gz", work / f"{after_key}.nii.gz")]
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    picture(ct, *arrays, reviewed, args.picture, teeth=bool(teeth))
    for name, labels in (("before", arrays[1]), (after_key, arrays[2])):
        g = res[name]["regions"]
        # What lies outside the rows on the reviewed slices was taught as background: counted apart.
        on_reviewed = regions(np.where(np.isin(np.arange(len(labels)), reviewed)[:, None, None], labels, 0))
        print(f"{name}: total {g['total']}, upper row {g['upper_row']}, lower row {g['lower_row']}, outside the "
              f"rows {g['outside_rows']} ({on_reviewed['outside_rows']} of them on reviewed slices); "
              f"{res[name]['seconds']:.0f} s")
    print(f"training: {res[key]['wall_s']} s wall, {res[key]['cpu_s']} s CPU, stages {res[key]['stages_s']}; "
          f"wrote {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
