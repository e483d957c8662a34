"""``ldfsam demo``: segment the bundled phantom with the bundled demo model and report Dice against its truth.

The demo model was trained only on synthetic phantoms (``scripts/train_demo_model.py``); it shows the pipeline
working end to end on a fresh machine and is not a clinical model.
"""

from __future__ import annotations

import argparse

COMMAND = "demo"
HELP = "Segment the bundled CBCT phantom with the bundled demo model and print Dice against its truth."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="where to write the segmentation (.seg.nrrd or .nii.gz; default: "
                                               "$LDFSAM_HOME/demo/ldfsam-demo.seg.nrrd, replaced on every run)")
    parser.add_argument("--model", default=None, help="model name or file (default: the bundled demo model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--encoder", choices=("auto", "full", "half"), default="auto",
                        help="the model's image encoder: auto (the one it was trained on), full (LiteMedSAM's), "
                             "half (the distilled half-resolution one: faster; docs/model.md)")


def run(args) -> int:
    from .segment import exit_on_interrupt

    return exit_on_interrupt(COMMAND, _run, args)


def _run(args) -> int:
    from pathlib import Path

    from ._progress import command_progress

    with command_progress(args, COMMAND) as progress:
        from ..offline import import_ultralytics

        import_ultralytics()
        import numpy as np
        import SimpleITK as sitk

        from ..data.volume import read_volume
        from ..errors import InputError
        from ..infer import segment_volume
        from ..models.registry import RESOURCES

        phantom = RESOURCES / "demo" / "phantom.nii.gz"
        truth_path = RESOURCES / "demo" / "phantom_labels.nii.gz"
        if not phantom.is_file() or not truth_path.is_file():
            raise InputError("the demo phantom is missing from this installation", phantom.parent)
        if args.output:
            output, force = Path(args.output), args.force
        else:
            from ..home import ldfsam_home

            # The demo's own file in ldfsam's own folder: replacing it on the next run loses nothing.
            output, force = ldfsam_home() / "demo" / "ldfsam-demo.seg.nrrd", True
        result = segment_volume(phantom, output, model=args.model, device=args.device, progress=progress,
                                force=force, encoder=args.encoder)
        truth = sitk.GetArrayFromImage(read_volume(truth_path, label=True)) > 0  # a view would outlive its image
        pred = result.labels > 0
        inter = int(np.count_nonzero(pred & truth))
        total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
        dice = 2.0 * inter / total if total else 1.0
        if args.progress == "json":
            progress.log("evaluate", f"Dice {dice:.4f}", dice=round(dice, 4))
    if args.progress != "json":
        print(f"segmented the demo phantom ({result.slices} slices; the model ran on {result.model_slices}, "
              f"{result.slices_with_teeth} with teeth) in "
              f"{result.timings['total']:.1f} s; wrote {output}")
        print(f"Dice against the phantom's truth: {dice:.4f}")
        print("(demo model trained on synthetic phantoms and on real CT slices labelled by a model, never by hand; "
              "not a clinical model)")
    return 0
