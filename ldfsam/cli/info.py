"""``ldfsam info MODEL|PRESET``: the architecture and its parameter counts (total, Phase 2 trainable, per part)."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict

COMMAND = "info"
HELP = "show a model's architecture and parameter counts (a preset name or a .safetensors model file)"
PRESETS = ("vit_b", "vit_l", "vit_h", "small", "lite")

PARTS = OrderedDict([
    ("image_encoder", "SAM image encoder (frozen)"),
    ("adapters", "encoder adapters"),
    ("prompt_encoder", "SAM prompt encoder"),
    ("mask_decoder", "SAM mask decoder"),
    ("prompt_generator", "prompt generator (YOLOv8)"),
    ("feature_prompts", "feature prompt encoder"),
    ("box_branch", "box branch (auto mode)"),
    ("saliency_head", "tooth saliency head (prior)"),
])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL|PRESET",
                        help=f"a model file (.safetensors) or a preset name ({', '.join(PRESETS)})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _part(name: str) -> str:
    return "adapters" if ".adapter." in name else name.split(".", 1)[0]


def summarize(model: Any) -> Dict[str, Any]:
    """Parameter counts of an LDFSAM model (real or built with ``shapes_only``) by part, total and trainable."""
    from ..model.trainable import configure_phase2

    trainable = set(configure_phase2(model))
    parts = {key: {"total": 0, "trainable": 0} for key in PARTS}
    for name, p in model.named_parameters():
        part = parts[_part(name)]
        part["total"] += p.numel()
        part["trainable"] += p.numel() if name in trainable else 0
    total = sum(v["total"] for v in parts.values())
    return {
        "parts": parts,
        "total": total,
        "trainable": sum(v["trainable"] for v in parts.values()),
        "prompt_branch": parts["prompt_generator"]["total"] + parts["feature_prompts"]["total"],
        "segmentation_network": total - parts["prompt_generator"]["total"] - parts["feature_prompts"]["total"],
        # The paper's Table 3 "trainable" adds the whole prompt branch, the frozen YOLO included (docs/model.md).
        "trainable_paper_convention": sum(v["trainable"] for v in parts.values())
        + parts["prompt_generator"]["total"] - parts["prompt_generator"]["trainable"],
    }


def _encoder_text(s: Any) -> str:
    if s.encoder == "tiny_vit":
        t = s.tiny_vit
        return (f"TinyViT (LiteMedSAM) stages {list(t.embed_dims)}, depths {list(t.depths)}, heads "
                f"{list(t.num_heads)}, windows {list(t.window_sizes)}; input {s.image_size} -> embedding "
                f"{s.prompt_embed_dim}×{s.grid}×{s.grid}; frozen, no adapters; pixels {s.pixel_norm}")
    return (f"ViT width {s.embed_dim}, depth {s.depth}, {s.num_heads} heads, {s.window_size}×{s.window_size} "
            f"windows, global blocks {list(s.global_attn_indexes)}; input {s.image_size} -> embedding "
            f"{s.prompt_embed_dim}×{s.grid}×{s.grid}; adapters {'on' if s.adapters else 'off'} "
            f"(ratio {s.adapter_mlp_ratio})")


def _architecture(cfg: Any, model: Any) -> Dict[str, Any]:
    s, g, f = cfg.sam, cfg.prompt_generator, cfg.feature_prompts
    return {
        "preset": s.preset,
        "sam": _encoder_text(s),
        "decoder": f"two-way transformer depth {s.decoder_depth}, {s.decoder_num_heads} heads, MLP "
                   f"{s.decoder_mlp_dim}; {len(cfg.class_names)} class mask token(s)",
        "prompt_generator": f"YOLOv8{g.scale}, {g.num_classes} class(es), input {g.image_size}, P3/P4/P5 channels "
                            f"{'/'.join(str(c) for c in model.prompt_generator.feature_channels)}",
        "feature_prompts": "none (box prompts)" if cfg.uses_boxes else
                           "none (no prompt)" if not cfg.uses_feature_prompts else
                           f"mix {f.mix_channels} channels, K={f.num_sparse_tokens} sparse tokens, hidden "
                           f"{f.sparse_hidden}",
        "prompt_mode": cfg.prompt_mode,
        "class_names": list(cfg.class_names),
    }


def _from_file(path: Path) -> Dict[str, Any]:
    from ..checkpoint import read_checkpoint_meta, read_header
    from ..config import from_dict
    from ..errors import CheckpointError, ConfigError
    from ..model.build import build_model
    from ..model.config import ModelConfig
    from ..model.pretrained import LITEMEDSAM

    meta = read_checkpoint_meta(path)
    try:
        cfg = from_dict(ModelConfig, meta.get("model"), "model")
        model = build_model(cfg, load_prompt_generator=False, shapes_only=True)
    except ConfigError as e:
        raise CheckpointError(f"has an invalid model configuration: {e}", path) from None
    header, _ = read_header(path)
    # A lite model whose encoder is LiteMedSAM's unchanged does not store it (checkpoint.save_checkpoint): those
    # tensors come from the verified installed weights when the model is loaded, so they are not looked for here.
    base = meta.get("base")
    if base is not None and (not isinstance(base, dict) or base.get("name") != LITEMEDSAM
                             or not isinstance(base.get("prefix"), str)):
        raise CheckpointError(f"refers to base weights this ldfsam does not know ({base!r})", path)
    # The counts come from the configuration; check them against the tensors actually stored.
    for name, p in model.named_parameters():
        if base is not None and name.startswith(base["prefix"]):
            continue
        entry = header.get(name)
        if entry is None or tuple(entry["shape"]) != tuple(p.shape):
            raise CheckpointError(f"its tensor {name} does not match its configuration "
                                  f"({None if entry is None else tuple(entry['shape'])} vs {tuple(p.shape)})", path)
    out = {"source": str(path), "cfg": cfg, "model": model, "training": meta.get("training", {}),
           "package_version": meta.get("package_version")}
    if base is not None:
        out["base"] = {"name": base["name"], "sha256": base.get("sha256")}
    return out


def collect(spec: str) -> Dict[str, Any]:
    """Architecture and counts for a preset name or a model file, as a JSON-ready dict."""
    from ..errors import InputError

    if spec not in PRESETS and not Path(spec).exists():  # answer before importing torch
        raise InputError(f"no such file, and not a preset name ({', '.join(PRESETS)})", spec)
    from ..model.build import build_model
    from ..model.presets import model_config

    if spec in PRESETS:
        cfg = model_config(spec)
        source: Dict[str, Any] = {"source": f"preset {spec}", "cfg": cfg,
                                  "model": build_model(cfg, shapes_only=True)}
    else:
        source = _from_file(Path(spec))
    from ..model.flops import gflops_per_part

    out = {"source": source["source"], "architecture": _architecture(source["cfg"], source["model"])}
    out.update(summarize(source["model"]))
    out["gflops"] = gflops_per_part(source["model"])
    for key in ("training", "package_version", "base"):
        if key in source:
            out[key] = source[key]
    return out


def _m(n: int) -> str:
    return f"{n / 1e6:9.2f} M"


def format_table(info: Dict[str, Any]) -> str:
    a = info["architecture"]
    lines = [f"LDFSAM, {info['source']}",
             f"  SAM encoder       {a['sam']}",
             f"  mask decoder      {a['decoder']}",
             f"  prompt generator  {a['prompt_generator']}",
             f"  feature prompts   {a['feature_prompts']}",
             f"  prompt mode       {a['prompt_mode']}; classes: {', '.join(a['class_names'])}"]
    if info.get("base"):
        lines.append(f"  image encoder     {info['base']['name']}'s published weights, not stored in the file "
                     f"(taken from the installed copy, SHA256 {info['base']['sha256']})")
    lines += ["", f"  {'parameters':<36}{'total':>14}{'trainable (Phase 2)':>22}"]
    for key, label in PARTS.items():
        part = info["parts"][key]
        lines.append(f"  {label:<36}{part['total']:>14,}{part['trainable']:>22,}")
    lines += [f"  {'total':<36}{info['total']:>14,}{info['trainable']:>22,}", ""]
    g = info["gflops"]
    lines.append("  GFLOPs per image   " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in g.items())
                 + f"; total {sum(g.values()):.2f}")
    lines += ["",
              f"  total                         {_m(info['total'])}",
              f"  trainable (Phase 2)           {_m(info['trainable'])}",
              f"  trainable + frozen YOLO       {_m(info['trainable_paper_convention'])}"
              "  (as the paper's Table 3 counts)",
              f"  prompt branch (YOLO + heads)  {_m(info['prompt_branch'])}",
              f"  segmentation network (SAM)    {_m(info['segmentation_network'])}"]
    if info.get("training"):
        lines += ["", f"  training: {json.dumps(info['training'], sort_keys=True)}"]
    return "\n".join(lines)


def prompt_generator_info(path: Path) -> Dict[str, Any]:
    """Summary of a Phase 1 prompt-generator file (YOLOv8 weights), from its header."""
    from ..checkpoint import read_document, read_header
    from ..model.prompt_generator import FORMAT

    document = read_document(path)
    header, _ = read_header(path)
    params = 0
    for key, entry in header.items():
        if key != "__metadata__" and not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            n = 1
            for d in entry["shape"]:
                n *= int(d)
            params += n
    return {"source": str(path), "format": FORMAT, "config": document.get("config", {}), "parameters": params,
            "training": document.get("training", {})}


def run(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if args.model not in PRESETS and path.is_file():
        from ..checkpoint import read_document
        from ..model.prompt_generator import FORMAT

        if read_document(path).get("format") == FORMAT:
            info = prompt_generator_info(path)
            c = info["config"]
            n = info["parameters"]
            text = (f"LDFSAM prompt generator, {path}\n  YOLOv8{c.get('scale')}, {c.get('num_classes')} class(es), "
                    f"input {c.get('image_size')}\n  parameters {n:,} ({_m(n).strip()})"
                    + (f"\n  training: {json.dumps(info['training'], sort_keys=True)}" if info["training"] else ""))
            print(json.dumps(info, indent=2) if args.json else text, flush=True)
            return 0
    info = collect(args.model)
    print(json.dumps(info, indent=2) if args.json else format_table(info), flush=True)
    return 0
