"""Average two demo models' weights (a "model soup"): ``(1 - w) · A + w · B`` for every trained tensor.

    python scripts/average_demo_models.py A.safetensors B.safetensors --weight 0.5 --out C.safetensors

A and B must be the same network trained from a common start (``scripts/train_demo_model.py --from``), so that
their weights lie in one basin and the average is a model between them: e.g. a model fine-tuned on phantoms only
and the same model fine-tuned further with pseudo-labelled real CT (``--pseudo-volumes``), the weight setting how
much of the second's caution on real scans the average keeps. The configuration, preprocessing and encoder (not
stored: LiteMedSAM's, by reference, the same in both) are A's; the file records both parents and the weight.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def average(a: Path, b: Path, weight: float):
    """(model, configuration, preprocessing, how many tensors differed) of ``(1 - weight) · a + weight · b``."""
    from ldfsam.checkpoint import load_checkpoint

    if not 0.0 <= weight <= 1.0:
        raise SystemExit(f"--weight {weight}: must be between 0 and 1")
    first, second = load_checkpoint(a), load_checkpoint(b)
    if first.model_cfg != second.model_cfg or first.preprocess != second.preprocess:
        raise SystemExit(f"{a} and {b}: different configurations; only the same network can be averaged")
    theirs = second.model.state_dict()
    differing = 0
    with torch.no_grad():
        for key, value in first.model.state_dict().items():
            if not value.is_floating_point():
                continue  # integer buffers are counters (the lite family's frozen encoder is equal in both)
            differing += int(not torch.equal(value, theirs[key]))
            value.lerp_(theirs[key].to(value.dtype), weight)
    return first.model, first.model_cfg, first.preprocess, differing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--weight", type=float, required=True, help="the weight of B (0: A, 1: B)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from ldfsam.checkpoint import read_checkpoint_meta, save_checkpoint

    model, cfg, pre, differing = average(args.a, args.b, args.weight)
    parents = {}
    for name, path in (("a", args.a), ("b", args.b)):
        parents[name] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                         "training": read_checkpoint_meta(path).get("training", {})}
    training = {"script": "scripts/average_demo_models.py", "weight_of_b": args.weight, **parents}
    for name, module in model.named_children():
        if name != "image_encoder":  # float16 as train_demo_model stores them; the encoder is referred to
            module.half()
    save_checkpoint(args.out, model, cfg, pre, training=training)
    print(json.dumps({"model": str(args.out), "averaged_tensors": differing, "weight_of_b": args.weight}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
