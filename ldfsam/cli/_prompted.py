"""``ldfsam segment INPUT -o OUTPUT --prompts PROMPTS.json``: the prompted path of the segment command."""

from __future__ import annotations


def run_prompted(args) -> int:
    import sys

    from ..errors import ConfigError, LDFSAMError
    from ..progress import Progress

    if not args.prompts:
        raise ConfigError("--base-segmentation is only used with --prompts")
    inputs = args.input if isinstance(args.input, list) else [args.input]
    if len(inputs) != 1 or inputs[0].startswith("@"):
        raise ConfigError("--prompts segments one volume: give one INPUT (its prompts are in that volume's space)")
    volume = inputs[0]
    if args.split_teeth or args.probabilities:
        flag = "--split-teeth" if args.split_teeth else "--probabilities"
        raise ConfigError(f"{flag} belongs to automatic segmentation; it cannot be combined with --prompts")
    progress = Progress(args.progress)
    if args.progress == "json":
        stdout, sys.stdout = sys.stdout, sys.stderr
        progress.stream = stdout
    try:
        from ..infer.prompted import segment_with_prompts
        from ..infer.saliency_prior import prior_option

        model = args.model if args.model else None
        result = segment_with_prompts(volume, args.output, args.prompts, model=model,
                                      base_segmentation=args.base_segmentation, force=args.force,
                                      progress=progress, precision=args.precision,
                                      spacing=getattr(args, "spacing", None),
                                      prior=prior_option(getattr(args, "prior", "auto")))
    except LDFSAMError as e:
        if args.progress == "json":
            progress.error("segment", str(e))
        raise
    finally:
        progress.close()
        if args.progress == "json":
            sys.stdout = stdout
    if args.progress != "json":
        parts = [f"{name}: {len(r.slices)} slices" for name, r in result.structures.items()]
        print(f"{'; '.join(parts)}; {result.timings['total']:.1f} s; wrote {args.output}")
        for name, r in result.structures.items():  # what SPD's prior did not take as given (--prior)
            for d in r.validation:
                if d["action"] != "kept":
                    what = "box" if d["point"] is None else f"points[{d['point']}]"
                    print(f"{name}: {what} {d['action']}: {d['reason']}")
    return 0
