"""Distil LiteMedSAM's image embeddings into the half-resolution student's neck (``ldfsam.model.tiny_vit_student``).

The student's backbone is LiteMedSAM's own TinyViT run at half the input resolution and stays frozen, so every
training input goes through it once: its two outputs (coarse B×256×32×32, fine B×128×64×64) and the teacher's
embedding (256×64×64) are cached as float16 files, and the epochs train only the small neck (MSE to the teacher's
embedding; with ``--task-weight W`` plus W × the BCE of LiteMedSAM's frozen decoder's mask on the student's
embedding to its mask on the teacher's, prompted with the box of each Kvasir image's reference mask: a loss on what
the decoder reads). ``--init`` continues from a neck; ``--kvasir-dice`` reports held-out box Dice. Training
inputs, none of them in the accuracy rule's sets (benchmarks/bench_student_encoder.py):

- Kvasir-SEG: the training part of ``bench_kvasir.py``'s split (its 80 validation images excluded); the teacher's
  embeddings are read from a Phase 2 embedding cache when one is given (``--teacher-cache``: the folder of
  ``finetune/embedding_cache.py`` for LiteMedSAM at fp32) and computed otherwise;
- medical slices as the product encodes them (``SliceSAM.model_image``): whole slices and tooth views of
  procedural CBCT phantoms (seeds other than the benchmark's 2025), and whole slices and views of the real head
  CTs in ../shared/data.

    OMP_NUM_THREADS=1 python scripts/distill_encoder.py --work /tmp/distill --out student_neck.safetensors

The bundled neck (``litemedsam-half-neck``): ``--stem --hidden 256 --depth 4 --kvasir-images 100 --phantom-seeds 1
--epochs 10`` (MSE), then ``--init`` that neck with ``--kvasir-images 720 --phantom-seeds 1 2 3 4 --task-weight 0.02
--lr 5e-4 --epochs 3``, stored as float16 (docs/model.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def kvasir_inputs(data_dir: Path, seed: int, count: int):
    """(name, 3×256×256 input as Phase 2 feeds it: resized, /255) of the Kvasir images outside the validation set."""
    import torch

    from ldfsam.data.images import read_rgb, resize_square
    from ldfsam.data.splits import make_splits

    ids = [line.strip() for line in (data_dir / "kvasir-seg" / "train_ids.txt").read_text().splitlines()
           if line.strip()]
    train = make_splits(ids, test_count=0, val_fraction=0.1, seed=seed).train
    for name in train[:count]:
        rgb = read_rgb(data_dir / "kvasir-seg" / "images" / f"{name}.jpg")
        yield f"kvasir/{name}", torch.from_numpy(resize_square(rgb, 256, False).copy()).permute(2, 0, 1).float() / 255


def medical_inputs(data_dir: Path, phantom_seeds, views_per_volume: int, parts):
    """(name, 3×256×256 input) of whole slices and square views, as ``SliceSAM`` encodes them."""
    import numpy as np
    import SimpleITK as sitk
    from bench_int8 import phantom_cases

    from ldfsam.data.preprocess import PreprocessConfig, intensity_window
    from ldfsam.infer.slice_sam import SamParts, SliceSAM

    sam_parts = SamParts(parts.image_encoder, parts.prompt_encoder, parts.mask_decoder, 256)
    for seed in phantom_seeds:
        args = SimpleNamespace(phantom_slices=60, phantom_size=650, seed=seed, phantom_step=4,
                               phantom_teeth=views_per_volume)
        volume, window, cases = phantom_cases(args)
        sam = SliceSAM(sam_parts, volume, window, precision="fp32")
        for z in range(0, volume.shape[0], 4):
            yield f"phantom{seed}/z{z}", sam.model_image(z)[0]
        for z, fdi, _, view, _ in cases:
            yield f"phantom{seed}/z{z}_t{fdi}", sam.model_image(z, view)[0]
    rng = np.random.default_rng(7)
    for rel, step in (("ct-head-stanford/CThead_jaw_z60-112.nii.gz", 2), ("ct-headsq/headsq.nii.gz", 3)):
        path = data_dir / rel
        if not path.is_file():
            log(f"skipped {path}: absent")
            continue
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        window = intensity_window(volume, PreprocessConfig())
        sam = SliceSAM(sam_parts, volume, window, precision="fp32")
        nz, ny, nx = volume.shape
        for z in range(0, nz, step):
            yield f"{rel}/z{z}", sam.model_image(z)[0]
        for i in range(views_per_volume // 2):
            side = int(rng.integers(min(ny, nx) // 6, min(ny, nx) // 2))
            y0, x0 = int(rng.integers(0, ny - side)), int(rng.integers(0, nx - side))
            z = int(rng.integers(0, nz))
            yield f"{rel}/z{z}_v{i}", sam.model_image(z, (y0, y0 + side, x0, x0 + side))[0]


def build_cache(args) -> list:
    """Encode every training input once; returns the feature files (one per input)."""
    import torch
    from safetensors.torch import load_file, save_file

    from ldfsam.atomic import atomic_path
    from ldfsam.finetune.embedding_cache import image_key
    from ldfsam.model.lite_weights import litemedsam_state_dict, load_litemedsam
    from ldfsam.model.tiny_vit_inference import prepare_for_inference
    from ldfsam.model.tiny_vit_student import HalfResTinyViT

    state = litemedsam_state_dict()
    teacher = load_litemedsam(256, state)
    teacher_encoder = prepare_for_inference(teacher.image_encoder)
    student = HalfResTinyViT()
    student.backbone.load_state_dict(load_litemedsam(128, state).image_encoder.state_dict())
    prepare_for_inference(student.backbone)
    student.eval()
    out_dir = args.work / "features"
    out_dir.mkdir(parents=True, exist_ok=True)
    files, computed, borrowed, t0 = [], 0, 0, time.process_time()
    sources = [kvasir_inputs(args.data_dir, args.seed, args.kvasir_images)] if args.kvasir_images > 0 else []
    sources.append(medical_inputs(args.data_dir, args.phantom_seeds, args.views, teacher))
    checked = False
    for source in sources:
        for name, image in source:
            path = out_dir / (hashlib.sha1(name.encode()).hexdigest()[:20] + ".safetensors")
            files.append(path)
            image_file = path.with_suffix(".image.safetensors")
            if args.stem and not image_file.is_file():  # the neck's full-resolution input
                with atomic_path(image_file) as tmp:
                    save_file({"image": image.to(torch.float16).contiguous()}, str(tmp))
            if path.is_file():
                continue
            target = None
            if args.teacher_cache is not None and name.startswith("kvasir/"):
                cached = args.teacher_cache / f"{image_key(image)}.safetensors"
                if cached.is_file():
                    target = load_file(str(cached))["embedding"]
                    borrowed += 1
            with torch.inference_mode():
                if target is None or not checked:
                    own = teacher_encoder(image[None])[0]
                    if target is not None:  # the borrowed cache must be this teacher's, on these inputs
                        err = (own - target.float()).abs().max().item()
                        if err > 0.05:
                            raise SystemExit(f"--teacher-cache differs from the teacher by {err:.3g}: wrong cache")
                        log(f"teacher cache checked on {name}: max |difference| {err:.2g}")
                        checked = True
                    target = own
                    computed += target is own
                coarse, fine = student.features(image[None])
            with atomic_path(path) as tmp:
                save_file({"target": target.to(torch.float16).contiguous(),
                           "coarse": coarse[0].to(torch.float16).contiguous(),
                           "fine": fine[0].to(torch.float16).contiguous()}, str(tmp), metadata={"name": name})
            if len(files) % 50 == 0:
                log(f"{len(files)} inputs cached ({computed} teacher passes, {borrowed} from the cache; "
                    f"{time.process_time() - t0:.0f} s CPU)")
    log(f"cache: {len(files)} inputs, {computed} teacher passes, {borrowed} borrowed, "
        f"{time.process_time() - t0:.0f} s CPU")
    return files


class TaskLoss:
    """What the embedding is for: LiteMedSAM's frozen prompt encoder and mask decoder prompted with the box of a
    Kvasir image's reference mask. ``loss``: BCE of the student's mask logits to the teacher's mask probabilities
    (soft targets, the teacher's logits computed once from its cached embedding); ``box_dice``: box Dice at 256
    against the reference mask, student's and teacher's."""

    def __init__(self, data_dir: Path) -> None:
        from ldfsam.model.lite_weights import load_litemedsam

        parts = load_litemedsam(256)
        self.prompt_encoder, self.mask_decoder = parts.prompt_encoder, parts.mask_decoder
        for p in list(self.prompt_encoder.parameters()) + list(self.mask_decoder.parameters()):
            p.requires_grad_(False)
        self.pe = self.prompt_encoder.get_dense_pe()
        self.masks = data_dir / "kvasir-seg" / "masks"

    def attach(self, item: dict, name: str) -> None:
        import numpy as np
        import torch

        from ldfsam.data.images import read_mask_image, resize_square

        mask = read_mask_image(self.masks / f"{name}.jpg")
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        # the box as bench_encoder.kvasir_box_dice gives it (reference mask, scaled to 256)
        item["box"] = torch.tensor([xs.min() * 256 / w, ys.min() * 256 / h, (xs.max() + 1) * 256 / w,
                                    (ys.max() + 1) * 256 / h], dtype=torch.float32)
        item["mask"] = torch.from_numpy(resize_square(mask.astype(np.uint8) * 255, 256, True) > 127)
        with torch.no_grad():
            item["teacher_logits"] = self.logits(item["target"].float()[None], [item])[0].to(torch.float16)

    def logits(self, emb, items: list):
        import torch

        sparse, dense = self.prompt_encoder(len(items), boxes=torch.stack([d["box"] for d in items]))
        return self.mask_decoder(emb, self.pe, sparse, dense)[:, 0]

    def loss(self, emb, items: list):
        import torch

        target = torch.sigmoid(torch.stack([d["teacher_logits"] for d in items]).float())
        return torch.nn.functional.binary_cross_entropy_with_logits(self.logits(emb, items), target)

    def box_dice(self, emb, items: list):
        def dice(pred, truth):
            return float(2 * (pred & truth).sum() / max(int(pred.sum() + truth.sum()), 1))

        student = self.logits(emb, items) > 0
        return ([dice(p, d["mask"]) for p, d in zip(student, items)],
                [dice(d["teacher_logits"] > 0, d["mask"]) for d in items])


def train(args, files: list) -> dict:
    import torch
    from safetensors.torch import load_file, safe_open

    from ldfsam.model.tiny_vit_student import UpNeck, save_neck

    def names(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata()["name"]

    data = [load_file(str(p)) | (load_file(str(p.with_suffix(".image.safetensors"))) if args.stem else {})
            for p in files]
    full_names = [names(p) for p in files]
    groups = [n.split("/")[0] for n in full_names]
    task = TaskLoss(args.data_dir) if args.task_weight > 0 or args.kvasir_dice else None
    if task is not None:
        for d, name in zip(data, full_names):
            if name.startswith("kvasir/"):
                task.attach(d, name.split("/", 1)[1])
        log(f"box prompts and the teacher's mask logits of {sum('box' in d for d in data)} Kvasir inputs")
    # every 10th input of each source held out: the embedding error on inputs the neck did not see
    held = [i % 10 == 0 for i in range(len(data))]
    tr = [d for d, h in zip(data, held) if not h]
    va = [d for d, h in zip(data, held) if h]
    log(f"training on {len(tr)} inputs, {len(va)} held out; sources {sorted(set(groups))}")
    torch.manual_seed(args.seed)
    if args.init is not None:  # continue from a distilled neck (its own sizes)
        from ldfsam.file_format import load_state

        tensors, document = load_state(args.init)
        c = document["config"]
        args.hidden, args.depth, args.stem = c["hidden"], c["depth"], c["stem"]
    neck = UpNeck(hidden=args.hidden, depth=args.depth, stem=args.stem)
    if args.init is not None:
        neck.load_state_dict(tensors)
    opt = torch.optim.AdamW(neck.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(tr) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.05)

    def stack(items, key):
        return torch.stack([d[key] for d in items]).float()

    def run(items):
        return neck(stack(items, "coarse"), stack(items, "fine"), stack(items, "image") if args.stem else None)

    def evaluate(items) -> dict:
        neck.eval()
        mse = base = cos = 0.0
        student_dice, teacher_dice = [], []
        with torch.no_grad():
            for i in range(0, len(items), 16):
                chunk = items[i:i + 16]
                c, t = stack(chunk, "coarse"), stack(chunk, "target")
                y = run(chunk)
                up = torch.nn.functional.interpolate(c, size=t.shape[-2:], mode="bilinear", align_corners=False)
                mse += ((y - t) ** 2).mean(dim=(1, 2, 3)).sum().item()
                base += ((up - t) ** 2).mean(dim=(1, 2, 3)).sum().item()
                cos += torch.nn.functional.cosine_similarity(y, t, dim=1).mean(dim=(1, 2)).sum().item()
                if task is not None:
                    k = [j for j, d in enumerate(chunk) if "box" in d]
                    if k:
                        s_dice, t_dice = task.box_dice(y[k], [chunk[j] for j in k])
                        student_dice += s_dice
                        teacher_dice += t_dice
        neck.train()
        n = max(len(items), 1)
        out = {"mse": mse / n, "mse_bilinear": base / n, "cosine": cos / n}
        if student_dice:  # box Dice at 256 against the reference masks (held-out Kvasir training images)
            out.update(kvasir_dice=sum(student_dice) / len(student_dice),
                       kvasir_dice_teacher=sum(teacher_dice) / len(teacher_dice), kvasir_n=len(student_dice))
        return out

    history = [{"epoch": 0, "held_out": evaluate(va)}]
    log(f"epoch 0: held-out {history[-1]['held_out']}")
    t0, step = time.process_time(), 0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(tr)).tolist()
        total = 0.0
        for i in range(0, len(order), args.batch):
            chunk = [tr[j] for j in order[i:i + args.batch]]
            y = run(chunk)
            loss = torch.nn.functional.mse_loss(y, stack(chunk, "target"))
            if args.task_weight > 0:
                k = [j for j, d in enumerate(chunk) if "box" in d]
                if k:
                    loss = loss + args.task_weight * task.loss(y[k], [chunk[j] for j in k]) * len(k) / len(chunk)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += loss.item() * len(chunk)
        history.append({"epoch": epoch, "train_mse": total / len(tr), "held_out": evaluate(va),
                        "cpu_seconds": time.process_time() - t0})
        log(f"epoch {epoch}: train {total / len(tr):.5f}, held-out {history[-1]['held_out']}, "
            f"{time.process_time() - t0:.0f} s CPU")
        if args.out is not None:
            if args.keep_epochs:
                save_neck(args.out.with_name(f"{args.out.stem}.e{epoch}.safetensors"), neck,
                          {"epochs": epoch, "held_out": history[-1]["held_out"]})
            save_neck(args.out, neck, {"epochs": epoch, "inputs": {g: groups.count(g) for g in sorted(set(groups))},
                                       "held_out": history[-1]["held_out"], "lr": args.lr,
                                       "loss": "mse" + (f" + {args.task_weight} x box-mask BCE to the teacher's "
                                                        "(Kvasir)" if args.task_weight > 0 else ""),
                                       "init": None if args.init is None else args.init.name,
                                       "script": "scripts/distill_encoder.py"})
    return {"history": history, "inputs": len(data), "train": len(tr), "held_out": len(va),
            "sources": {g: groups.count(g) for g in sorted(set(groups))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the cached features")
    ap.add_argument("--out", type=Path, help="the trained neck (safetensors; config in its metadata)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LDFSAM_DATA_DIR",
                                                                         REPO.parent / "shared" / "data")))
    ap.add_argument("--teacher-cache", type=Path, help="a Phase 2 embedding-cache folder of LiteMedSAM (fp32)")
    ap.add_argument("--kvasir-images", type=int, default=720, help="how many of the 720 training images (0: none)")
    ap.add_argument("--phantom-seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--views", type=int, default=30, help="tooth views per phantom (half as many per real CT)")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--stem", action="store_true", help="the neck also sees the full-resolution image")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--task-weight", type=float, default=0.0,
                    help="add this weight x the box-mask loss (LiteMedSAM's decoder on the student's embedding "
                         "against the teacher's, boxes of the Kvasir reference masks); 0: embedding MSE only")
    ap.add_argument("--kvasir-dice", action="store_true",
                    help="report held-out Kvasir box Dice each epoch (implied by --task-weight)")
    ap.add_argument("--init", type=Path, help="start from this distilled neck (its sizes replace --hidden etc.)")
    ap.add_argument("--keep-epochs", action="store_true", help="also save each epoch's neck (OUT.eN.safetensors)")
    ap.add_argument("--cache-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from ldfsam.heap import reuse_large_blocks

    reuse_large_blocks()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log(f"load {os.getloadavg()}, {torch.get_num_threads()} thread(s)")
    files = build_cache(args)
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.cache_only:
        result.update(train(args, files))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
