"""Learning from corrections on exact truth: the bundled model on "the clinic's scans", then improved on 1, 2, 4
corrected volumes.

The clinic's scans are augmented phantoms of a shifted domain: settings of ``ldfsam.data.augment_config`` the
bundled model was never trained on (stronger noise, more metal with stronger streaks, a gamma outside the trained
range, more blur). Held-out volumes (seeds 5000, ...) are segmented by the bundled model and by each improved model;
Dice per volume with a 95 % bootstrap CI. Each round makes training cases with ``add_training_case`` (labels =
the truth on the reviewed slices only, every other slice left empty and unreviewed) and runs the real command
``ldfsam train CASES -o RUN --from ldfsam-demo --mix-phantoms M``, timed (wall and CPU seconds of the process
tree). Results: ``OUT/results.json`` and a table on stdout.

    nice -n 10 python benchmarks/bench_corrections.py --out runs/corrections [--rounds 1,2,4] [--eval 10]
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

DEFAULT_SHAPE = "48x96x96"  # z, y, x voxels: the smallest of PhantomSampling's shapes, so ten volumes fit an hour


def shifted_config():
    """Augmentations outside the ranges the bundled model was trained with (docs/data.md, Augmented phantoms)."""
    from ldfsam.data.augment_config import AugmentConfig

    cfg = AugmentConfig()
    cfg.noise.p, cfg.noise.sigma = 1.0, (0.05, 0.07)  # trained: up to 0.035
    cfg.metal.p, cfg.metal.count, cfg.metal.streak = 1.0, (3, 5), (1.2, 1.6)  # trained: p 0.4, 1-4, 0.2-1.0
    cfg.contrast.p, cfg.contrast.gamma = 1.0, (1.4, 1.6)  # trained: 0.65-1.25
    cfg.blur.p, cfg.blur.sigma_xy = 1.0, (1.3, 1.8)  # trained: 0.2-1.2
    return cfg


def sampling(shape: str):
    """PhantomSampling with one shape "ZxYxX" (or None: PhantomSampling's own shapes)."""
    from ldfsam.data.synthetic import PhantomSampling

    if not shape:
        return None
    return PhantomSampling(shapes=(tuple(int(v) for v in shape.lower().split("x")),))


def write_volume_pair(folder: Path, name: str, seed: int, shape: str = DEFAULT_SHAPE):
    import SimpleITK as sitk

    from ldfsam.data.synthetic import augmented_phantom
    from ldfsam.data.volume import write_label_volume, write_volume

    out, spacing = augmented_phantom(seed, sampling(shape), augment=shifted_config())
    image = sitk.GetImageFromArray(np.asarray(out.image, np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(image, folder / f"{name}.nii.gz", overwrite=True)
    write_label_volume(out.labels, image, folder / f"{name}_label.nii.gz", overwrite=True)
    return folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz", np.asarray(out.labels)


def corrected_cases(scans: Path, cases: Path, n: int, reviewed_every: int, shape: str = DEFAULT_SHAPE) -> None:
    """``n`` training cases: the truth on every ``reviewed_every``-th slice, those slices marked reviewed."""
    import SimpleITK as sitk

    from ldfsam.data.training_case import add_training_case

    for k in range(n):
        vol, lab, labels = write_volume_pair(scans, f"clinic_{k}", 6000 + k, shape)
        reviewed = list(range(0, labels.shape[0], reviewed_every))
        partial = np.zeros_like(labels)
        partial[reviewed] = labels[reviewed]
        ref = sitk.ReadImage(str(vol))
        img = sitk.GetImageFromArray(partial)
        img.CopyInformation(ref)
        seg = scans / f"clinic_{k}_reviewed_only.nrrd"
        sitk.WriteImage(img, str(seg))
        add_training_case(vol, seg, cases, f"clinic_{k}", reviewed_slices=reviewed)


class EncoderMemo:
    """The frozen image encoder's embeddings of the held-out slices, computed once for every model scored.

    Every model of this benchmark shares the bundled model's frozen LiteMedSAM encoder (the lite preset has no
    adapters), and the encoder costs 10-20x the rest of a segmentation: scoring the improved models on the same
    held-out volumes then costs little. Keys are the encoder's fingerprint and the exact input slice, so a model
    with another encoder, or another slice, is encoded as usual; embeddings are kept in float32 (in ``root``,
    so that a resumed benchmark has them too): results are those of ``segment_volume``.
    """

    def __init__(self):
        self.root, self.fingerprints, self.hits, self.misses = None, {}, 0, 0

    def install(self, root: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        from ldfsam.finetune.embedding_cache import encoder_fingerprint, image_key
        from ldfsam.model.ldfsam import LDFSAM

        self.root = root
        plain, memo = LDFSAM.encode_image, self

        def encode_image(model, sam_image):
            if torch.is_grad_enabled():
                return plain(model, sam_image)
            fp = memo.fingerprints.get(id(model))
            if fp is None or fp[0] is not model:
                fp = memo.fingerprints[id(model)] = (model, encoder_fingerprint(model)[:24])
            paths = [memo.root / fp[1] / f"{image_key(x)}.safetensors" for x in sam_image]
            missing = [i for i, q in enumerate(paths) if not q.is_file()]
            memo.hits, memo.misses = memo.hits + len(paths) - len(missing), memo.misses + len(missing)
            fresh = dict(zip(missing, plain(model, sam_image[missing]))) if missing else {}
            for i, e in fresh.items():
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                save_file({"e": e.float().contiguous()}, str(paths[i]))
            return torch.stack([fresh[i] if i in fresh else load_file(str(q))["e"] for i, q in enumerate(paths)])

        LDFSAM.encode_image = encode_image


MEMO = EncoderMemo()


def evaluate(model: str, folder: Path, seed: int = 2025):
    from ldfsam.evaluate.model_eval import evaluate_model
    from ldfsam.evaluate.report import summarize

    t0 = time.monotonic()
    load0 = os.getloadavg()
    rows = evaluate_model(model, folder, device="cpu")
    s = summarize(rows, resamples=1000, seed=seed)
    d = s["metrics"]["tooth"]["dice"]
    return {"dice": d["mean"], "ci": [d["ci_low"], d["ci_high"]], "n": d["n"], "seconds": time.monotonic() - t0,
            "load": [load0, os.getloadavg()], "encoded": MEMO.misses, "memo_hits": MEMO.hits,
            "per_case": {r["case_id"]: r["dice"] for r in rows}}


def cpu_seconds_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def paired_gain(before: dict, after: dict, resamples: int = 2000, seed: int = 2025):
    """Mean per-volume Dice gain and its 95 % bootstrap CI (the same volumes scored by both models)."""
    from ldfsam.evaluate.bootstrap import paired_difference

    d = paired_difference(after["per_case"], before["per_case"], resamples=resamples, seed=seed)
    return {"mean": d["mean"], "ci": [d["ci_low"], d["ci_high"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", default="1,2,4", help="numbers of corrected volumes")
    p.add_argument("--eval", type=int, default=10, help="held-out volumes of the shifted domain")
    p.add_argument("--shape", default=DEFAULT_SHAPE, help="ZxYxX voxels of every shifted-domain volume")
    p.add_argument("--mix-phantoms", type=int, default=2)
    p.add_argument("--reviewed-every", type=int, default=2, help="every k-th slice is reviewed")
    p.add_argument("--phase1-epochs", type=int)
    p.add_argument("--phase2-epochs", type=int)
    p.add_argument("--lr", type=float, help="Phase 2 learning rate (default: the --from short schedule's)")
    p.add_argument("--tag", default="", help="a recipe variant: its rounds are kept apart in results.json")
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    MEMO.install(out / "embeddings")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    held_out = out / "held_out"
    if not (held_out / f"heldout_{args.eval - 1}_label.nii.gz").is_file():
        for k in range(args.eval):
            write_volume_pair(held_out, f"heldout_{k}", 5000 + k, args.shape)
    results["setup"] = {"shape_zyx": args.shape, "eval": args.eval, "cpus": os.cpu_count()}
    if "bundled" not in results:
        results["bundled"] = evaluate("ldfsam-demo", held_out)
        results_path.write_text(json.dumps(results, indent=1))
    config = out / f"train{args.tag}.json"
    settings = {"prepare": {"test_fraction": 0.0, "val_fraction": 0.0}}
    if args.lr:
        settings["finetune"] = {"lr": args.lr}
    config.write_text(json.dumps(settings))
    for n in [int(v) for v in args.rounds.split(",")]:
        key = f"round_{n}{args.tag}"
        if key in results:
            continue
        cases = out / f"cases_{n}"
        if not cases.is_dir():
            corrected_cases(out / "scans", cases, n, args.reviewed_every, args.shape)
        run = out / f"run_{n}{args.tag}"
        cmd = [sys.executable, "-m", "ldfsam", "train", str(cases), "-o", str(run), "--from", "ldfsam-demo",
               "--mix-phantoms", str(args.mix_phantoms), "--config", str(config), "--device", "cpu",
               "--workers", "0", "--progress", "none"]
        for flag, v in (("--phase1-epochs", args.phase1_epochs), ("--phase2-epochs", args.phase2_epochs)):
            if v:
                cmd += [flag, str(v)]
        if (run / "train.json").is_file():
            cmd = cmd[:7] + ["--resume", "--progress", "none"]
        load0 = os.getloadavg()
        cpu0, t0 = cpu_seconds_children(), time.monotonic()
        subprocess.run(cmd, check=True)
        wall, cpu = time.monotonic() - t0, cpu_seconds_children() - cpu0
        stages = json.loads((run / "stages.json").read_text())["stages"]
        train = json.loads((run / "train.json").read_text())["config"]
        # One thread (OMP_NUM_THREADS=1): the CPU time is then what an idle machine's wall time would be.
        results[key] = {"volumes": n, "wall_s": wall, "cpu_s": cpu, "load": [load0, os.getloadavg()],
                        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                        "recipe": {"tag": args.tag, "mix_phantoms": args.mix_phantoms,
                                   "phase1_epochs": args.phase1_epochs or 0,
                                   "phase2_epochs": train["finetune"]["epochs"], "lr": train["finetune"]["lr"],
                                   "batch": train["finetune"]["batch_size"]},
                        "stages_s": {k: v["seconds"] for k, v in stages.items()},
                        "eval": evaluate(str(run / "phase2" / "model.safetensors"), held_out)}
        results[key]["gain"] = paired_gain(results["bundled"], results[key]["eval"])
        results_path.write_text(json.dumps(results, indent=1))
    print(f"volumes {args.shape} (z x y x x voxels), {args.eval} held out")
    print("| model | held-out Dice [95 % CI] | paired gain [95 % CI] | train wall s | train CPU s | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    b = results["bundled"]
    print(f"| bundled ldfsam-demo | {b['dice']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] | | | | |")
    for key in sorted((k for k in results if k.startswith("round_")),
                      key=lambda k: (results[k].get("recipe", {}).get("tag", ""), results[k]["volumes"])):
        r = results[key]
        e, g = r["eval"], r.get("gain") or paired_gain(b, r["eval"])
        print(f"| + {r['volumes']} corrected {r.get('recipe', {})} | {e['dice']:.3f} [{e['ci'][0]:.3f}, "
              f"{e['ci'][1]:.3f}] | {g['mean']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] | {r['wall_s']:.0f} | "
              f"{r['cpu_s']:.0f} | {r.get('load', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
