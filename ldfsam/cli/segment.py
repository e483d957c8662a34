"""``ldfsam segment INPUT -o OUTPUT``: segment the teeth of a CBCT volume onto its own voxel grid;
``ldfsam segment INPUT... -o FOLDER``: many volumes with one model load (``ldfsam.infer.cohort``);
``ldfsam segment IMAGE.png -o MASK.png --model M``: a 2D image, one-class lite models (``ldfsam.infer.image_2d``)."""

from __future__ import annotations

import argparse

COMMAND = "segment"
HELP = "Segment the teeth in a CBCT volume (output: .nii.gz label map or .seg.nrrd Slicer segmentation)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="+",
                        help="CBCT volume: .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM series folder; several, a "
                             "folder of volumes, or @LIST.txt (one path per line) segment into the folder -o; or one "
                             "2D image (.png, .jpg, ...) with a one-class lite --model, its mask written as .png")
    parser.add_argument("-o", "--output", required=True,
                        help="output file; the format follows the extension: .nii.gz/.nii (label map, 1 = tooth) "
                             "or .seg.nrrd (3D Slicer segmentation with names, colours and terminology). For "
                             "several volumes: a folder, one output per volume named after it, and its manifest")
    parser.add_argument("--format", choices=("seg.nrrd", "nii.gz"), default=None,
                        help="format of the outputs written into a folder (default seg.nrrd)")
    parser.add_argument("--model", default=None,
                        help="model name (see `ldfsam models list`) or path to a .safetensors model "
                             "(default: the bundled demo model, trained on synthetic phantoms; not a clinical model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--batch", type=int, default=4,
                        help="slices per batch (default 4; reduced automatically to fit the available memory)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bfloat16 where the CPU/GPU has native support, else float32; with --prompts "
                             "float32 on every CPU")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    parser.add_argument("--threshold", type=float, default=0.5, help="tooth probability threshold (default 0.5)")
    parser.add_argument("--refine", action="store_true",
                        help="lite models: re-segment each piece of the automatic result with LiteMedSAM's own "
                             "decoder from its box (the refinement pass; docs/training.md)")
    parser.add_argument("--flips", choices=("none", "h", "hv"), default="none",
                        help="2D images (one-class lite models): average the logits over the image and its "
                             "horizontal (h) or also vertical and double (hv) flips; hv costs 4 encoder passes "
                             "(default none; measured gains in docs/training.md). Volumes never flip")
    parser.add_argument("--encoder", choices=("auto", "full", "half"), default="auto",
                        help="lite models' image encoder: auto (the one the model was trained on), full "
                             "(LiteMedSAM's TinyViT), half (the distilled half-resolution one: about 3.2x fewer "
                             "operations per slice; docs/model.md)")
    parser.add_argument("--min-island-mm3", type=float, default=10.0,
                        help="remove connected pieces smaller than this volume in mm³ (default 10; 0 keeps all)")
    parser.add_argument("--slice-spacing", default="auto", metavar="auto|native|Npx|MM",
                        help="which slices the model runs on; the slices between are interpolated. auto "
                             "(default): candidates one model pixel apart (the field of view / 256), coarse to "
                             "fine: every 4th first, then the ones between wherever neighbouring masks differ; "
                             "Npx: every candidate N model pixels apart (1px: all of auto's candidates); native: "
                             "every slice; or a distance in mm")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="the true voxel size in mm, replacing the input's (needed for a NIfTI whose header "
                             "states a voxel size of 0; applies to every input)")
    parser.add_argument("--no-fill-holes", action="store_true", help="keep enclosed holes in the mask")
    parser.add_argument("--split-teeth", action="store_true",
                        help="label each tooth separately (one segment per tooth, numbered, not FDI)")
    parser.add_argument("--probabilities", metavar="PATH", help="also write the tooth probability map (.nii.gz)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing output files (into a folder: those its manifest does not record "
                             "as done; done volumes are skipped either way)")
    parser.add_argument("--prompts", metavar="JSON",
                        help="segment the structures described by this prompts file (boxes and include/exclude "
                             "points in LPS mm, one segment per structure; docs/segmentation.md) with LiteMedSAM "
                             "instead of the automatic model")
    parser.add_argument("--prior", metavar="MODEL", default="auto",
                        help="with --prompts: the model whose saliency head checks the clicks and carries prompts "
                             "across slices (SPD; docs/segmentation.md); auto (default): the default model when it "
                             "has one; none: take every prompt as given")
    parser.add_argument("--base-segmentation", metavar="PATH",
                        help="with --prompts: start from this segmentation (.seg.nrrd or label map on the input's "
                             "grid); a structure named like one of its segments replaces it, others are added")


def exit_on_interrupt(command: str, func, *args):
    """Run ``func``; on Ctrl-C/SIGTERM (after every ``with`` block has removed its temporary files) report and
    leave at once: a normal interpreter shutdown with torch and ultralytics loaded takes seconds."""
    import os
    import sys

    try:
        return func(*args)
    except KeyboardInterrupt:
        print(f"ldfsam {command}: cancelled; no output was written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


def run(args) -> int:
    if args.prompts or args.base_segmentation:
        from ._prompted import run_prompted

        return exit_on_interrupt(COMMAND, run_prompted, args)
    return exit_on_interrupt(COMMAND, _run, args)


def _is_cohort(args) -> bool:
    """Several volumes into a folder, rather than today's one volume into one file."""
    from pathlib import Path

    from ..data.volume import is_dicom_folder, volume_suffix

    out = Path(args.output)
    if len(args.input) > 1 or args.input[0].startswith("@") or out.is_dir() or args.output.endswith(("/", "\\")):
        return True
    single = Path(args.input[0])
    if single.is_dir():
        return not is_dicom_folder(single)
    return volume_suffix(out) is None and out.suffix == "" and not out.exists()


def _check_cohort_args(args) -> None:
    """Refuse bad inputs and outputs at once, before torch and ultralytics take seconds to import."""
    from pathlib import Path

    from ..data.volume import volume_suffix
    from ..errors import ConfigError, OutputError
    from ..infer.cohort_inputs import check_output_folder, expand_inputs

    if args.probabilities:
        raise ConfigError("--probabilities: is written for one volume only; segment that volume on its own")
    expand_inputs(args.input)  # first: an input folder with nothing to segment is the problem to name
    out = Path(args.output)
    if volume_suffix(out) and not out.is_dir() and not out.exists():
        raise OutputError("names a file, but several volumes are segmented: give a folder", out)
    check_output_folder(out)
    _options(args).validate()


def _is_2d(args) -> bool:
    """One 2D image (a photograph), not a volume."""
    from pathlib import Path

    from ..data.images import IMAGE_SUFFIXES

    return len(args.input) == 1 and Path(args.input[0]).suffix.lower() in IMAGE_SUFFIXES


def _run(args) -> int:
    if _is_2d(args):
        return _run_2d(args)
    if args.flips != "none":
        from ._progress import command_progress

        with command_progress(args, COMMAND):
            from ..errors import ConfigError

            raise ConfigError(f"--flips {args.flips}: applies to 2D images; a flipped CBCT slice swaps the jaw's "
                              "sides, which a tooth model's classes name")
    return _run_cohort(args) if _is_cohort(args) else _run_one(args)


def _run_2d(args) -> int:
    import time

    from ._progress import command_progress

    with command_progress(args, COMMAND):
        from ..offline import import_ultralytics

        import_ultralytics()
        from ..infer.image_2d import segment_2d

        if args.model is None:
            from ..errors import ConfigError

            raise ConfigError("a 2D image needs --model: a one-class lite model (the default model segments teeth "
                              "in CBCT volumes)")
        t0 = time.perf_counter()
        mask = segment_2d(args.input[0], args.output, model=args.model, flips=args.flips, refine=args.refine,
                          threshold=args.threshold, precision=args.precision, device=args.device, force=args.force)
    if args.progress != "json":
        print(f"{int(mask.sum())} of {mask.size} pixels ({mask.mean():.1%}); flips {args.flips}"
              f"{', refined' if args.refine else ''}; {time.perf_counter() - t0:.1f} s; wrote {args.output}")
    return 0


def _options(args):
    from ..infer import SegmentOptions

    return SegmentOptions(batch=args.batch, threshold=args.threshold, min_island_mm3=args.min_island_mm3,
                          fill=not args.no_fill_holes, split=args.split_teeth, precision=args.precision,
                          slice_spacing=args.slice_spacing, spacing=args.spacing, refine=args.refine,
                          encoder=args.encoder)


def _run_cohort(args) -> int:
    import os

    from ..infer.cohort import Rank
    from ..infer.rank_supervisor import WORKER_ENV
    from ._progress import command_progress, error_message

    rank = Rank.from_env()
    if rank.world_size > 1 and WORKER_ENV not in os.environ:
        return _supervise_rank(args, rank)
    with command_progress(args, COMMAND) as progress:
        _check_cohort_args(args)
        options = _options(args)
        from ..offline import import_ultralytics

        import_ultralytics()
        from ..infer import segment_many
        from ..infer.cohort import summary_line

        summary = segment_many(args.input, args.output, model=args.model, options=options, device=args.device,
                               format=args.format or "seg.nrrd", force=args.force, progress=progress,
                               describe_error=lambda e: error_message(e, args))
    if args.progress != "json":
        for record in summary.records:
            if record.status == "failed":
                print(f"failed: {record.error}")
        print(summary_line(summary))
    return 1 if summary.failed else 0


def _supervise_rank(args, rank) -> int:
    """Under torchrun: this rank's process supervises a worker running the same command
    (``ldfsam.infer.rank_supervisor``), so that a worker that dies does not stop the other ranks."""
    import sys
    from pathlib import Path

    from ..infer.cohort_inputs import check_apart
    from ..infer.rank_supervisor import supervise
    from ._progress import command_progress

    with command_progress(args, COMMAND):
        _check_cohort_args(args)  # bad input: one error per rank, before any worker starts
        check_apart(args.input, Path(args.output))
    return supervise([sys.executable, "-m", "ldfsam", *args.argv], Path(args.output), rank.rank, rank.world_size)


def _run_one(args) -> int:
    from ._progress import command_progress

    with command_progress(args, COMMAND) as progress:
        if args.format:
            from ..errors import ConfigError

            raise ConfigError(f"--format {args.format}: applies to an output folder; the extension of the output "
                              "file chooses its format")
        from ..offline import import_ultralytics

        import_ultralytics()
        from ..infer import segment_volume

        result = segment_volume(args.input[0], args.output, model=args.model, device=args.device, batch=args.batch,
                                progress=progress, threshold=args.threshold, min_island_mm3=args.min_island_mm3,
                                fill=not args.no_fill_holes, split=args.split_teeth,
                                probabilities=args.probabilities, force=args.force, precision=args.precision,
                                slice_spacing=args.slice_spacing, spacing=args.spacing, refine=args.refine,
                                encoder=args.encoder)
    if args.progress != "json":
        t = result.timings
        print(f"teeth on {result.slices_with_teeth} of the {result.model_slices} slices the model ran on "
              f"({result.slices} in the volume); {len(result.segment_names)} "
              f"segment(s); {t['total']:.1f} s (model {t['predict']:.1f} s); wrote {args.output}")
    return 0
