"""Inference-time variants of a Kvasir run's dense+sparse and box models, chosen on selection images.

For each validation and selection image: the logits (the model's S×S grid, in ``--precision``, as ``ldfsam evaluate``
computes them) of both models for the image and its horizontal (h), vertical (v) and double (hv) flips, each flip
encoded and seen by the YOLO as an image of its own, flipped back (``ldfsam.infer.predict_2d.flip_mean``'s passes).
Then the variants: flip means, the two models joined (mean of their logits where the box model has a box, else
dense+sparse; or their maximum), and the refinement pass (``ldfsam.infer.refine``: replace, union, mask prompt) on
them. Each is scored at the original resolution as ``ldfsam evaluate`` scores; the rule: per run, the variant with
the highest mean Dice on the selection images, reported on all validation images and on the others, with paired
bootstraps against dense+sparse and box; and the one chosen among the variants a user can run (``PRODUCT``: ``ldfsam
segment`` / ``evaluate --flips none|h|hv [--refine]``). The selection images: ``--selection-from val`` the
``--selection`` evenly spread validation images Phase 2 selects its checkpoint on (docs/training.md, "Fourth series":
24 that were mostly clean single detections, so the rule leaned to the box); ``--selection-from train`` that many
training images outside the models' ``--budget`` (never a validation image, never one the budget's detector or
decoder trained on), stratified by polyp area ("Fifth series"); ``--selection-from held-out`` the training images a
``bench_kvasir.py --hold-out`` run kept out of every model's training (at the full budget, where no training image
is left over; "Sixth series").

    python benchmarks/kvasir_variants.py --ds RUN/b100-finetune-dense_sparse/model.safetensors \\
        --box RUN/b100-finetune-box/model.safetensors --prepared RUN/prepared --out variants-b100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldfsam.data.images import FLIPS as IMAGE_FLIPS  # noqa: E402

NO_BOX = -50.0  # box mode's "no object" logit is -100
# The variants a user can run with one model file: ldfsam segment / evaluate --flips none|h|hv [--refine].
PRODUCT = ("ds", "ds_h", "ds_hv", "ds+ref", "ds_h+ref", "ds_hv+ref")
# Each flip on its own (the passes of the product's four-flip mean, ``ldfsam.data.images.FLIPS["hv"]``), so that the
# variants can combine them.
FLIPS = dict(zip(("", "h", "v", "hv"), IMAGE_FLIPS["hv"]))


def logits_of(ds_path: Path, box_path: Path, data: Path, ids, precision: str) -> dict:
    """case id -> {"ref", "embedding", "logits": {(model, flip): S×S}} of the images ``ids``."""
    import torch

    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.data.images import read_mask_image, read_rgb, resize_square
    from ldfsam.evaluate.model_eval import select_cases
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encode, encoder_fingerprint, inference_encoder

    ds, box = load_checkpoint(ds_path), load_checkpoint(box_path)
    pre = ds.preprocess
    cases = select_cases(data, None, "val", ids)[1]
    cache = EmbeddingCache(encoder_fingerprint(ds.model), precision=precision)
    encoder = inference_encoder(ds.model)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    out = {}
    for n, case in enumerate(cases):
        if n % 20 == 0:
            print(f"logits: {n}/{len(cases)} images", file=sys.stderr, flush=True)
        image = read_rgb(case.image)
        rec = {"ref": torch.from_numpy(read_mask_image(case.label)), "logits": {}}
        sam0, yolo0 = (torch.from_numpy(resize_square(image, n, False).copy()).permute(2, 0, 1).float()[None] / 255.0
                       for n in (pre.sam_size, pre.yolo_size))
        for name, dims in FLIPS.items():
            sam, yolo = (torch.flip(t, dims) if dims else t for t in (sam0, yolo0))
            emb = cache.embedding_of(sam[0], lambda sam=sam: encode(ds.model, sam, precision, encoder)[0])
            if not dims:
                rec["embedding"] = emb
            with torch.no_grad(), amp:
                for which, m in (("ds", ds.model), ("box", box.model)):
                    lg = m.decode(emb[None], m.prompt_features(yolo)).float()
                    rec["logits"][which, name] = (torch.flip(lg, dims) if dims else lg)[0, 0]
        out[case.case_id] = rec
    return out


def variants(refine: bool):
    """name -> function(record) -> S×S logits."""
    import torch

    def has_box(lg):
        return bool(lg.max() > NO_BOX)

    def mean(rec, which, flips):
        ls = [rec["logits"][which, f] for f in flips]
        if which == "box":  # a flip without a box says nothing; no box anywhere: background
            ls = [x for x in ls if has_box(x)] or ls[:1]
        return torch.stack(ls).mean(0)

    def joined(ds, box):
        return (ds + box) / 2 if has_box(box) else ds

    sets = {"": [""], "_h": ["", "h"], "_v": ["", "v"], "_hv": ["", "h", "v", "hv"]}
    out = {}
    for tag, fl in sets.items():
        out[f"ds{tag}"] = lambda r, fl=fl: mean(r, "ds", fl)
        out[f"box{tag}"] = lambda r, fl=fl: mean(r, "box", fl)
        out[f"join_mean{tag}"] = lambda r, fl=fl: joined(mean(r, "ds", fl), mean(r, "box", fl))
    out["join_max"] = lambda r: torch.maximum(mean(r, "ds", [""]), mean(r, "box", [""]))
    if refine:
        from ldfsam.infer.refine import BoxRefiner
        from ldfsam.model.lite_weights import load_litemedsam

        parts = load_litemedsam()
        refiners = {"ref": BoxRefiner(parts), "refu": BoxRefiner(parts, combine="union"),
                    "refmp": BoxRefiner(parts, mask_prompt=True)}
        for base in ("ds", "ds_h", "ds_hv", "join_mean", "join_mean_h", "join_mean_hv"):
            for rn, rf in refiners.items():
                out[f"{base}+{rn}"] = (lambda r, b=out[base], rf=rf:
                                       rf.refine(r["embedding"][None], b(r)[None, None])[0, 0])
    return out


def stratified_by_area(data: Path, candidates, count: int) -> list:
    """``count`` of the images ``candidates`` stratified by the reference's area: sorted by their masks' area fraction,
    then evenly spread over that order (``finetune.data._limit``), so small, medium and large polyps are in the set as
    in the dataset. Also the images ``bench_kvasir.py --hold-out`` keeps out of training."""
    import numpy as np

    from ldfsam.data.images import read_mask_image
    from ldfsam.evaluate.model_eval import select_cases
    from ldfsam.finetune.data import _limit

    candidates = list(candidates)
    if len(candidates) < count:
        raise SystemExit(f"only {len(candidates)} candidate images for a selection set of {count}")
    area = {c.case_id: float(np.mean(read_mask_image(c.label))) for c in select_cases(data, None, "train",
                                                                                        candidates)[1]}
    return sorted(_limit(sorted(candidates, key=lambda i: (area[i], i)), count))


def stratified_selection(data: Path, prepared: Path, budget: float, count: int) -> list:
    """``count`` images of the training split outside the budget's training images (never validation images, never
    images a budget's model or detector was trained on), stratified by the reference's area (``stratified_by_area``)."""
    from ldfsam.data.prepared import PreparedData

    pd = PreparedData(prepared)
    used = set(pd.case_ids("train", budget))
    candidates = [i for i in pd.case_ids("train") if i not in used]
    if len(candidates) < count:
        raise SystemExit(f"only {len(candidates)} training images lie outside the {budget:.0%} budget, not {count}")
    return stratified_by_area(data, candidates, count)


def held_out_splits(prepared: Path) -> tuple:
    """(selection, scored) of a prepared folder that ``bench_kvasir.py --hold-out`` made: its held-out training images
    (the folder's ``val`` split, what the run selected on) and the validation images (its ``test`` split)."""
    from ldfsam.data.splits import read_splits

    doc = json.loads((prepared / "splits.json").read_text(encoding="utf-8"))
    if not doc.get("held_out_from_train"):
        raise SystemExit(f"{prepared} holds no held-out training images (made by bench_kvasir.py --hold-out)")
    splits = read_splits(prepared / "splits.json")
    return sorted(splits.val), sorted(splits.test)


def dice(logits, ref) -> float:
    import torch.nn.functional as F

    up = F.interpolate(logits[None, None].float(), size=tuple(ref.shape), mode="bilinear", align_corners=False)
    pred = up[0, 0] > 0
    n = int(pred.sum()) + int(ref.sum())
    return 1.0 if n == 0 else 2.0 * int((pred & ref).sum()) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds", type=Path, required=True, help="the run's dense+sparse model.safetensors")
    p.add_argument("--box", type=Path, required=True, help="the run's box model.safetensors (same prompt generator)")
    p.add_argument("--prepared", type=Path, required=True, help="the run's prepared folder (its validation split)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
                   / "kvasir-seg")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--selection", type=int, default=24,
                   help="images the rule chooses on: with --selection-from val (default) the first of the validation "
                        "images evenly spread (24: the checkpoint-selection images of bench_kvasir); with train, "
                        "this many training images outside --budget, stratified by polyp area")
    p.add_argument("--selection-from", choices=["val", "train", "held-out"], default="val",
                   help="val: choose on validation images (the earlier rule); train: on training images no model of "
                        "the budget saw (never on the validation images the rows report); held-out: on the training "
                        "images bench_kvasir.py --hold-out kept out of every model's training (--prepared is that "
                        "run's prepared folder; the rows report its validation images)")
    p.add_argument("--budget", type=float, default=0.1,
                   help="with --selection-from train: the models' annotation budget (its training images excluded)")
    p.add_argument("--no-refine", action="store_true", help="leave out the refinement-pass variants")
    p.add_argument("--out", type=Path, required=True, help="JSON of the rows and per-image Dice")
    args = p.parse_args()

    import torch

    from ldfsam.data.splits import read_splits
    from ldfsam.evaluate.bootstrap import bootstrap_mean_ci, paired_difference
    from ldfsam.finetune.data import _limit

    if args.selection_from == "held-out":
        held, val_ids = held_out_splits(args.prepared)
        selection = set(held)
    else:
        val_ids = sorted(read_splits(args.prepared / "splits.json").val)
    if args.selection_from == "val":
        selection = set(_limit(val_ids, args.selection))
    elif args.selection_from == "train":
        selection = set(stratified_selection(args.data, args.prepared, args.budget, args.selection))
    records = logits_of(args.ds, args.box, args.data, sorted(set(val_ids) | selection), args.precision)
    ids = val_ids  # the rows: the validation images (with --selection-from train, none of them chooses)
    other = [i for i in ids if i not in selection]
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    scores = {}
    for name, fn in variants(not args.no_refine).items():
        with torch.no_grad(), amp:
            scores[name] = {i: dice(fn(records[i]).float(), records[i]["ref"].bool()) for i in records}
    rows = {}

    def on(per_image):  # the validation images' scores
        return {i: per_image[i] for i in ids}

    for name, s in scores.items():
        rows[name] = {"selection": sum(s[i] for i in selection) / len(selection),
                      "other": sum(s[i] for i in other) / len(other), "all": bootstrap_mean_ci([s[i] for i in ids]),
                      "minus_ds": paired_difference(on(s), on(scores["ds"])),
                      "minus_box": paired_difference(on(s), on(scores["box"]))}
    chosen = max(rows, key=lambda n: rows[n]["selection"])
    offered = max((n for n in rows if n in PRODUCT), key=lambda n: rows[n]["selection"])
    report = {"chosen": chosen, "chosen_of_product": offered, "selection_from": args.selection_from,
              "selection": sorted(selection), "rows": rows, "per_image": scores}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"| variant | {len(selection)} selection | other {len(other)} | all {len(ids)} [95 % CI] | − ds | − box |\n"
          "| --- | --- | --- | --- | --- | --- |")
    fmt = lambda d: f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"  # noqa: E731
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["selection"]):
        a = r["all"]
        mark = " (chosen)" * (name == chosen) + " (chosen of the product's)" * (name == offered)
        print(f"| {name}{mark} | {r['selection']:.4f} | {r['other']:.4f} | "
              f"{a['mean']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] | {fmt(r['minus_ds'])} | "
              f"{fmt(r['minus_box'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
