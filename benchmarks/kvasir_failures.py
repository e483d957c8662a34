"""Where a Kvasir-SEG model loses against the reference boxes: detection errors or box precision (no training).

For each validation image: the detector of a box-mode model (``--detector``, at its saved confidence and box count,
or ``--conf/--max-boxes``) against the reference masks' boxes (one per connected component): the best IoU of the
main (largest) reference box, missed reference boxes (no detected box at IoU >= 0.5), extra detected boxes; and the
Dice of LiteMedSAM's unchanged decoder (``--zero-shot``, a zero-shot model of ``bench_kvasir.py``) prompted with the
detected boxes and with the reference boxes, on the cached embeddings. ``--compare NAME=per_case.csv`` adds the
per-image Dice of evaluated runs to the summary by detection outcome. Writes one CSV row per image.

    python benchmarks/kvasir_failures.py --detector RUN/b100-finetune-box/model.safetensors \\
        --zero-shot RUN/b010-finetune-zero-shot-gt/model.safetensors --prepared PREPARED --out failures.csv \\
        --compare dense+sparse=RUN/b100-finetune-dense_sparse/eval-val/per_case.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def box_iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", required=True, type=Path, help="a box-mode (or zero-shot) model: its detector")
    p.add_argument("--zero-shot", required=True, type=Path, help="a zero-shot model (LiteMedSAM's decoder unchanged)")
    p.add_argument("--prepared", required=True, type=Path, help="the prepared folder (its validation split)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR", REPO.parent / "shared" / "data"))
                   / "kvasir-seg")
    p.add_argument("--conf", type=float, help="detection confidence (default: the detector model's)")
    p.add_argument("--max-boxes", type=int, help="boxes per image (default: the detector model's)")
    p.add_argument("--limit", type=int)
    p.add_argument("--compare", action="append", default=[], help="NAME=per_case.csv of an evaluated run")
    p.add_argument("--out", required=True, type=Path, help="CSV, one row per image")
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from ldfsam.checkpoint import load_checkpoint
    from ldfsam.data.images import read_mask_image, read_rgb, resize_square
    from ldfsam.evaluate.model_eval import select_cases
    from ldfsam.finetune.embedding_cache import EmbeddingCache, encoder_fingerprint

    ids = json.loads((args.prepared / "splits.json").read_text())["val"]
    _, cases = select_cases(args.data, None, "test", ids)
    cases = cases[: args.limit] if args.limit else cases
    det = load_checkpoint(str(args.detector), device=torch.device("cpu"))
    if args.conf is not None:
        det.model.cfg.box_conf = args.conf
    if args.max_boxes is not None:
        det.model.cfg.max_boxes = args.max_boxes
    zs = load_checkpoint(str(args.zero_shot), device=torch.device("cpu"))
    embeddings = EmbeddingCache(encoder_fingerprint(zs.model))
    y_size, s_size, zs_y = det.preprocess.yolo_size, zs.preprocess.sam_size, zs.preprocess.yolo_size
    print(f"detector: YOLO {y_size}, confidence {det.model.cfg.box_conf}, at most {det.model.cfg.max_boxes} boxes",
          flush=True)

    def decoder_dice(embedding, boxes01, ref) -> float:
        if not boxes01:
            return 1.0 if not ref.any() else 0.0
        b = torch.tensor([[*(np.asarray(x) * zs_y), 1.0, 0.0] for x in boxes01], dtype=torch.float32)
        with torch.no_grad():
            logits = zs.model.decode(embedding[None], None, [b]).float()
            logits = F.interpolate(logits, size=ref.shape, mode="bilinear", align_corners=False)
        pred = (torch.sigmoid(logits[0, 0]) > 0.5).numpy()
        return 2.0 * float((pred & ref).sum()) / max(float(pred.sum() + ref.sum()), 1.0)

    rows = []
    for case in cases:
        image, ref = read_rgb(case.image), read_mask_image(case.label)
        h, w = ref.shape
        yolo = torch.from_numpy(resize_square(image, y_size, False).copy()).permute(2, 0, 1).float()[None] / 255.0
        sam = torch.from_numpy(resize_square(image, s_size, False).copy()).permute(2, 0, 1).float()[None] / 255.0
        with torch.no_grad():
            found = det.model.detect(yolo)[0][:, :5].numpy()
        labels, _ = ndimage.label(ref)
        refs = [np.array([x.start / w, y.start / h, x.stop / w, y.stop / h]) for y, x in ndimage.find_objects(labels)]
        dets = [d[:4] / y_size for d in found]
        best_ref = [max((box_iou(r, d) for d in dets), default=0.0) for r in refs]
        best_det = [max((box_iou(d, r) for r in refs), default=0.0) for d in dets]
        areas = [(r[2] - r[0]) * (r[3] - r[1]) for r in refs]
        main = int(np.argmax(areas))
        embedding = embeddings.embedding_of(sam[0], lambda sam=sam: zs.model.encode_image(sam).float()[0])
        rows.append({"case_id": case.case_id, "n_ref": len(refs), "n_det": len(dets),
                     "main_ref_area": round(float(areas[main]), 4), "iou_main": round(best_ref[main], 4),
                     "missed": sum(v < 0.5 for v in best_ref), "extra": sum(v < 0.5 for v in best_det),
                     "det_scores": ";".join(f"{d[4]:.2f}" for d in found),
                     "zs_ref": round(decoder_dice(embedding, refs, ref), 4),
                     "zs_det": round(decoder_dice(embedding, dets, ref), 4)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    missed, extra, n_det = col("missed") > 0, col("extra") > 0, col("n_det")
    groups = {"all": np.ones(len(rows), bool), "clean detection": ~missed & ~extra & (n_det > 0),
              "a missed box": missed | (n_det == 0), "only an extra box": extra & ~missed}
    runs = {}
    for spec in args.compare:
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as f:
            by_id = {r["case_id"]: float(r["dice"]) for r in csv.DictReader(f)}
        runs[name] = np.array([by_id[r["case_id"]] for r in rows])
    print("\n| images | n | " + " | ".join(runs) + (" | " if runs else "") +
          "LiteMedSAM, detected boxes | LiteMedSAM, reference boxes |")
    print("| --- " * (4 + len(runs)) + "|")
    for name, m in groups.items():
        cells = [f"{v[m].mean():.3f}" for v in runs.values()] + [f"{col('zs_det')[m].mean():.3f}",
                                                                 f"{col('zs_ref')[m].mean():.3f}"]
        print(f"| {name} | {int(m.sum())} | " + " | ".join(cells) + " |")
    gap = col("zs_ref") - col("zs_det")
    clean = groups["clean detection"]
    print(f"\nreference − detected boxes: {gap.mean():.4f} = {(gap * ~clean).sum() / len(rows):.4f} from detection "
          f"errors ({int((~clean).sum())} images) + {(gap * clean).sum() / len(rows):.4f} from the clean ones; "
          f"main-box IoU median {np.median(col('iou_main')):.3f}\nrows: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
