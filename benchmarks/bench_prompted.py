"""Benchmark prompted segmentation on the CPU: time to the first 3D result for one tooth, and time per
correcting click on slices already encoded.

    python benchmarks/bench_prompted.py                     # 420×650×650 phantom at 0.25 mm, tooth 11
    python benchmarks/bench_prompted.py --slices 120 --size 256 --fdi 36

The volume is a procedural phantom (``ldfsam.data.phantom``, as bench_segment.py) with exact per-tooth truth;
the prompt is a 3D box one voxel wider than the tooth. "first result" is everything after the volume is in
memory: LiteMedSAM's weights loaded, the per-volume window, every slice the propagation visits encoded once,
decoded, propagated, the mask assembled. A click is an exclude point on a segmented slice near one end of the
tooth, answered as the Slicer module's clicks are: by the prompt worker's request handler (``ldfsam
prompt-worker``, here in this process), which re-runs the structure with every click so far, decoding again only
the slices whose prompts changed (the embeddings and earlier decoder results are cached), and writes the label
map Slicer loads (the block of the grid holding the mask). The clicks are then repeated with blending between anchors
run all the way (``agree_iou`` above 1) on a fresh decoder memo and the same embeddings, so that the two ways
compare in one run: decoder passes, seconds, and how far the masks differ. Prints the machine (CPU, flags, torch,
load average).

``--prior MODEL`` runs the same with SPD's prior (a model with a saliency head, e.g. ldfsam-demo): clicks validated,
CPD propagation; it counts the saliency-head passes against the slices decoded (at most one head pass per newly
decoded slice: the head reads the embedding the decoder has) and times one head pass beside one decoder pass.

``--compare-prior MODEL`` measures what a click costs with SPD's prior against without it, in one run on the same
slice embeddings (each way starts with an empty decoder memo, so none reuses another's decoder passes): the box,
then ``--clicks`` include clicks on the tooth (one slice further from its top end each time, where the prior keeps
them), answered by the worker's handler first without a prior, then with ``MODEL``, then with ``MODEL`` and the
rules for a prior that does not see the whole tooth switched off, so that CPD's stop stands wherever it stops: the
root rules (``past_prior_in_bone``, ``image_on_root``, ``gap_in_bone``) and the crown rules (``past_prior_seen``,
``past_prior_unseen``), each of which decodes the slice where CPD stopped to test its section (what those rules cost
a click). Per click: seconds, slices decoded again, saliency-head passes; and the time of one head pass and one
decoder pass. The issue's bar:
a click with the prior costs no more than without, beyond one head pass per newly decoded slice, i.e. (seconds
with the prior − passes × head pass) per decoded slice against seconds per decoded slice without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldfsam.cpu_precision import cpu_name  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=420)
    ap.add_argument("--size", type=int, default=650)
    ap.add_argument("--fdi", type=int, default=11)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--prior", default=None, help="a model with a saliency head (SPD's prior); default: none")
    ap.add_argument("--compare-prior", metavar="MODEL", help="click cost with this prior against without one")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from ldfsam.data.phantom import make_phantom
    from ldfsam.infer.prompted import PromptedSession
    from ldfsam.infer.prompts import StructurePrompt

    torch.set_num_threads(args.threads)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "isa": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
               "load_before": os.getloadavg()}
    print(f"machine: {machine}", flush=True)
    t = time.perf_counter()
    image, labels = make_phantom((args.slices, args.size, args.size), spacing=0.25, seed=1)
    truth = sitk.GetArrayViewFromImage(labels) == args.fdi
    z, y, x = np.nonzero(truth)
    print(f"phantom {args.slices}x{args.size}x{args.size} in {time.perf_counter() - t:.0f} s; tooth {args.fdi} on "
          f"slices {z.min()}-{z.max()}", flush=True)
    lo = image.TransformContinuousIndexToPhysicalPoint((x.min() - 1.0, y.min() - 1.0, z.min() - 1.0))
    hi = image.TransformContinuousIndexToPhysicalPoint((x.max() + 1.0, y.max() + 1.0, z.max() + 1.0))

    if args.compare_prior:
        results = compare_prior(image, truth, lo, hi, args, machine)
        print(json.dumps(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    t0 = time.perf_counter()
    session = PromptedSession(image, precision=args.precision, prior=args.prior)
    _ = session.sam, session.prior
    t_load = time.perf_counter() - t0
    machine["precision"] = str(session.sam.dtype).replace("torch.", "")
    print(f"--precision {args.precision} runs {machine['precision']}", flush=True)
    result = session.segment(StructurePrompt(f"Tooth {args.fdi}", tuple(lo), tuple(hi)))
    t_first = time.perf_counter() - t0
    mask = result.mask
    dice = 2.0 * (mask & truth).sum() / max(1, mask.sum() + truth.sum())
    sam = session.sam
    first = {"seconds": t_first, "load_seconds": t_load, "encoded": sam.encoded, "decoded": sam.decoded,
             "slices": len(result.slices), "dice": float(dice), "saliency_passes": _passes(session)}
    print(f"first 3D result: {t_first:.1f} s (weights and window {t_load:.1f} s), {sam.encoded} slices encoded "
          f"({(t_first - t_load) / max(1, sam.encoded):.2f} s per slice, decoding included), Dice {dice:.3f}",
          flush=True)
    clicks = run_clicks(session, image, mask, lo, hi, args)
    whole_grid = time_whole_grid_label_map(session, mask)
    print(f"writing the mask as a label map of the whole grid instead of its block: {whole_grid:.2f} s", flush=True)
    decoder_ms = time_decoder(session, mask)
    if session.maps is not None:
        decoder_ms["saliency_head"] = time_saliency_head(session, mask)
    print("one decoder pass (prompt encoder and mask decoder, embedding cached): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in decoder_ms.items()), flush=True)
    agree_iou = session.propagation.agree_iou
    session.propagation.agree_iou = 2.0  # blend all the way, as before the agreement stop
    session.sam.memo.clear()
    print("the same clicks, blending all the way between anchors:", flush=True)
    full = run_clicks(session, image, mask, lo, hi, args)
    session.propagation.agree_iou = agree_iou
    for c, f in zip(clicks, full):
        c["dice_vs_full_blend"] = float(2.0 * (c.pop("mask") & f["mask"]).sum()
                                        / max(1, c.get("voxels", 0) + f["voxels"]))
        f.pop("mask")
        c["full_blend"] = f
        print(f"click on slice {c['slice']}: {c['seconds']:.2f} s / {c['decoded']} decoded with the agreement "
              f"stop, {f['seconds']:.2f} s / {f['decoded']} blending all the way; masks agree at Dice "
              f"{c['dice_vs_full_blend']:.4f}", flush=True)
    machine["load_after"] = os.getloadavg()
    results = {"machine": machine, "volume": [args.slices, args.size, args.size], "fdi": args.fdi,
               "first": first, "agree_iou": agree_iou, "clicks": clicks, "whole_grid_label_map_s": whole_grid,
               "decoder_ms": decoder_ms}
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def compare_prior(image, truth, lo, hi, args, machine) -> dict:
    """Click costs without and with the prior ``args.compare_prior`` on one SliceSAM (see the module's
    docstring)."""
    import tempfile

    from ldfsam.cli.prompt_worker import Worker
    from ldfsam.infer.prompted import PromptedSession
    from ldfsam.infer.propagation_config import PropagationConfig

    plain = PromptedSession(image, precision=args.precision)
    spd = PromptedSession(image, precision=args.precision, prior=args.compare_prior)
    spd._sam = plain.sam  # the same LiteMedSAM and embeddings
    # the prior without the rules for a prior that does not see the whole tooth (roots, crowns), CPD's stop standing
    # wherever it stops: what those rules cost a click
    old_rules = PropagationConfig(past_prior_in_bone=False, image_on_root=False, gap_in_bone=False,
                                  past_prior_seen=False, past_prior_unseen=False)
    spd_old = PromptedSession(image, precision=args.precision, prior=args.compare_prior, propagation=old_rules)
    spd_old._sam = plain.sam
    zs = np.nonzero(truth.any((1, 2)))[0]
    where = []
    for i in range(args.clicks):
        ys, xs = np.nonzero(truth[zs.max() - 1 - i])
        k = len(ys) // 2
        where.append(list(image.TransformContinuousIndexToPhysicalPoint((float(xs[k]), float(ys[k]),
                                                                         float(zs.max() - 1 - i)))))
    out = {"machine": machine, "volume": [args.slices, args.size, args.size], "fdi": args.fdi}
    sam = plain.sam
    with tempfile.TemporaryDirectory() as tmp:
        for key, session in (("without", plain), ("with", spd), ("with_root_and_crown_rules_off", spd_old)):
            worker = Worker(precision=args.precision)
            worker.session = session
            name = f"Tooth {args.fdi}"
            sam.memo.clear()  # the embeddings are shared, the decoder's results are not: each way decodes its own
            t, encoded, decoded, passes = time.perf_counter(), sam.encoded, sam.decoded, _passes(session)
            worker.segment({"structure": {"name": name, "box": {"min": list(lo), "max": list(hi)}},
                            "output": str(Path(tmp) / f"{key}.nii.gz")})
            first = {"seconds": time.perf_counter() - t, "encoded": sam.encoded - encoded,
                     "decoded": sam.decoded - decoded, "saliency_passes": _passes(session) - passes}
            clicks = []
            for i, position in enumerate(where):
                t, encoded, decoded, passes = time.perf_counter(), sam.encoded, sam.decoded, _passes(session)
                answer = worker.click({"name": name, "position": position, "label": "include",
                                       "output": str(Path(tmp) / f"{key}{i}.nii.gz")})
                clicks.append({"seconds": time.perf_counter() - t, "encoded": sam.encoded - encoded,
                               "decoded": sam.decoded - decoded, "saliency_passes": _passes(session) - passes,
                               "voxels": answer["voxels"], "not_used": answer.get("not_used")})
                c = clicks[-1]
                print(f"{key} prior, click {i + 1}: {c['seconds']:.2f} s, {c['decoded']} decoded, {c['encoded']} "
                      f"encoded, {c['saliency_passes']} head passes, not used: {c['not_used']}", flush=True)
            out[key] = {"first": first, "clicks": clicks}
            print(f"{key} prior, first result: {first}", flush=True)
    z = int(np.median(zs))
    view = next(v for (k, v) in sam.cache if k == z)
    ys, xs = np.nonzero(truth[z])
    box = (float(ys.min()), float(ys.max()), float(xs.min()), float(xs.max()))
    import torch

    with torch.inference_mode():
        sam._decode(z, box, [], None, view)
        t = time.perf_counter()
        for _ in range(10):
            sam._decode(z, box, [], None, view)
        decoder_ms = (time.perf_counter() - t) / 10 * 1000
    maps = spd.maps
    maps.map(z, view)
    t = time.perf_counter()
    for _ in range(10):
        maps.maps.clear()
        maps.map(z, view)
    head_ms = (time.perf_counter() - t) / 10 * 1000
    a, b, o = out["without"]["clicks"], out["with"]["clicks"], out["with_root_and_crown_rules_off"]["clicks"]
    per = [sum(c["seconds"] for c in a) / max(1, sum(c["decoded"] for c in a)),
           (sum(c["seconds"] for c in b) - head_ms / 1000 * sum(c["saliency_passes"] for c in b))
           / max(1, sum(c["decoded"] for c in b))]
    decoded = [sum(c["decoded"] for c in clicks) for clicks in (a, b, o)]
    out.update(decoder_ms=decoder_ms, head_ms=head_ms, seconds_per_decoded_slice_without=per[0],
               seconds_per_decoded_slice_with_less_head=per[1], ratio=per[1] / per[0] if per[0] else None,
               decoded_per_click={"without": decoded[0] / len(a), "with": decoded[1] / len(b),
                                  "with_root_and_crown_rules_off": decoded[2] / len(o)})
    machine["load_after"] = os.getloadavg()
    print(f"one decoder pass {decoder_ms:.1f} ms, one saliency-head pass {head_ms:.1f} ms; per decoded slice of a "
          f"click: {per[0]:.3f} s without the prior, {per[1]:.3f} s with it less its head passes "
          f"(ratio {out['ratio'] if out['ratio'] is None else round(out['ratio'], 3)}); slices decoded per click: "
          f"{decoded[0]} / {decoded[1]} / {decoded[2]} in all without the prior / with it / with it and the root "
          "and crown rules off", flush=True)
    return out


def time_whole_grid_label_map(session, mask) -> float:
    """Seconds to write ``mask`` as a compressed label map of the whole grid (what a click answer would cost
    without writing only the mask's block)."""
    import tempfile

    from ldfsam.infer.outputs import write_label_map

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_label_map(Path(tmp) / "whole.nii.gz", mask.astype(np.uint8), session.grid)
        return time.perf_counter() - t


def _passes(session) -> int:
    return 0 if session.maps is None else session.maps.passes


def time_saliency_head(session, mask, repeats: int = 10) -> float:
    """Milliseconds per saliency-head pass (embedding cached, the map resized onto the view), as a click pays it."""
    sam, maps = session.sam, session.maps
    z = int(np.nonzero(mask.any((1, 2)))[0].mean())
    view = next(v for (k, v) in sam.cache if k == z)
    maps.map(z, view)
    t = time.perf_counter()
    for _ in range(repeats):
        maps.maps.clear()
        maps.map(z, view)
    return (time.perf_counter() - t) / repeats * 1000


def time_decoder(session, mask, repeats: int = 10) -> dict:
    """Milliseconds per decoder pass on an encoded slice of the tooth (a box prompt, no memo), in the session's
    precision and in float32."""
    import torch

    sam = session.sam
    z = int(np.nonzero(mask.any((1, 2)))[0].mean())
    ys, xs = np.nonzero(mask[z])
    box = (float(ys.min()), float(ys.max()), float(xs.min()), float(xs.max()))
    view = next(v for (k, v) in sam.cache if k == z)  # the view the propagation encoded it with
    out = {}
    dtype = sam.dtype
    for name, d in ((str(dtype).replace("torch.", ""), dtype), ("float32", torch.float32)):
        sam.dtype = d
        with torch.inference_mode():  # as SliceSAM.decode runs it
            sam._decode(z, box, [], None, view)  # warm-up
            t = time.perf_counter()
            for _ in range(repeats):
                sam._decode(z, box, [], None, view)
            out[name] = (time.perf_counter() - t) / repeats * 1000
    sam.dtype = dtype
    return out


def run_clicks(session, image, mask, lo, hi, args) -> list:
    """Exclude clicks on segmented slices near the top end of the tooth, one slice further in each time, answered
    as the Slicer module gets them: by ``ldfsam prompt-worker``'s request handler (in this process), which re-runs
    the structure with every click so far and writes its label map (the block holding the mask)."""
    import tempfile

    import SimpleITK as sitk

    from ldfsam.cli.prompt_worker import Worker

    worker = Worker(precision=args.precision)
    worker.session = session
    sam = session.sam
    name = f"Tooth {args.fdi}"
    clicks = []
    zs = np.nonzero(mask.any((1, 2)))[0]
    with tempfile.TemporaryDirectory() as tmp:
        worker.segment({"cmd": "segment", "structure": {"name": name, "box": {"min": list(lo), "max": list(hi)}},
                        "output": str(Path(tmp) / "first.nii.gz")})
        for i in range(args.clicks):
            zc = int(zs.max()) - i
            ys, xs = np.nonzero(mask[zc])
            if not len(ys):
                break
            where = image.TransformContinuousIndexToPhysicalPoint((float(xs[len(xs) // 2]),
                                                                   float(ys[len(ys) // 2]), float(zc)))
            output = Path(tmp) / f"click{i}.nii.gz"
            encoded, decoded, passes = sam.encoded, sam.decoded, _passes(session)
            t = time.perf_counter()
            answer = worker.click({"cmd": "click", "name": name, "position": list(where), "label": "exclude",
                                   "output": str(output)})
            seconds = time.perf_counter() - t
            block = sitk.ReadImage(str(output))
            after = sitk.GetArrayFromImage(sitk.Resample(block, image, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                         0)) > 0
            clicks.append({"seconds": seconds, "slice": zc, "encoded": sam.encoded - encoded,
                           "decoded": sam.decoded - decoded, "voxels": int(answer["voxels"]),
                           "saliency_passes": _passes(session) - passes, "not_used": answer.get("not_used"),
                           "label_map": list(block.GetSize()), "mask": after})
            print(f"click {i + 1} on slice {zc}: {seconds:.2f} s ({sam.decoded - decoded} slices decoded again, "
                  f"{sam.encoded - encoded} encoded, {_passes(session) - passes} saliency-head passes; label map "
                  f"{block.GetSize()} written)", flush=True)
    return clicks


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
