"""SPD's anatomical prior at inference: a model's saliency head on the slice embeddings prompted segmentation has.

The head runs on the embedding SliceSAM already computed for a slice's view (no encoder pass of its own), once per
(slice, view): a click costs at most one head pass per newly decoded slice (``benchmarks/bench_prompted.py``).
The map comes back on the view's voxels, as SAM's logits do (``slice_sam``: the model image's unpadded part resized
onto the view).

A prior must share the prompted SAM's image encoder: both are of the ``lite`` preset, whose encoder is LiteMedSAM's
frozen TinyViT (the one the head was trained on).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .slice_sam import SliceSAM, View

# Maps kept per (slice, view): float32 on the view, a tooth's view is a few hundred kB.
MAX_MAPS = 1024


@dataclass
class Prior:
    """A trained saliency head and its threshold (``SaliencyConfig``), and where it came from."""

    head: torch.nn.Module
    threshold: float
    source: str = ""


def load_prior(prior: Any) -> Optional[Prior]:
    """None (no prior), a Prior, or a model (name, path, LoadedCheckpoint, LDFSAM) with a saliency head of the
    lite preset; ConfigError for a model without one."""
    if prior is None or isinstance(prior, Prior):
        return prior
    source = str(prior) if isinstance(prior, (str, bytes)) or hasattr(prior, "__fspath__") else type(prior).__name__
    if not hasattr(prior, "saliency_head"):
        from .pipeline import load_model

        prior = load_model(prior).model
    head = getattr(prior, "saliency_head", None)
    cfg = getattr(prior, "cfg", None)
    if head is None or cfg is None:
        raise ConfigError(f"the prior {source} has no saliency head (train one in Phase 2, or use a model that "
                          "has one: `ldfsam info --model NAME` shows it)")
    if cfg.sam.preset != "lite":
        raise ConfigError(f"the prior {source} is of the {cfg.sam.preset!r} preset; its saliency head reads another "
                          "encoder's embeddings than LiteMedSAM's (prompted segmentation): a lite model is needed")
    return Prior(head.float().eval(), float(cfg.saliency.threshold), source)


class SaliencyMaps:
    """The prior's maps on one SliceSAM's slices: ``map(z, view)`` -> probabilities on the view (vh×vw float32)."""

    def __init__(self, prior: Prior, sam: SliceSAM) -> None:
        self.prior, self.sam = prior, sam
        self.threshold = prior.threshold
        self.maps: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.passes = 0  # saliency-head passes so far (map cache misses)

    @torch.inference_mode()
    def map(self, z: int, view: Optional[View] = None) -> np.ndarray:
        view = tuple(view or self.sam.full_view())
        key = (z, view)
        hit = self.maps.get(key)
        if hit is not None:
            self.maps.move_to_end(key)
            return hit
        emb = self.sam.embedding(z, view)
        size = self.sam.size
        logits = F.interpolate(self.prior.head(emb.float()), size=(size, size), mode="bilinear", align_corners=False)
        y0, y1, x0, x1 = view
        _, h, w = self.sam._geometry(view)
        out = F.interpolate(logits[..., :h, :w], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        prob = torch.sigmoid(out[0, 0]).numpy()
        self.passes += 1
        self.maps[key] = prob
        while len(self.maps) > MAX_MAPS:
            self.maps.popitem(last=False)
        return prob

    def salient(self, z: int, view: Optional[View] = None) -> np.ndarray:
        """The map above the threshold (bool on the view)."""
        return self.map(z, view) >= self.threshold


def prior_option(value: Optional[str]) -> Optional[str]:
    """What ``--prior`` names: "none" (or "") no prior; "auto" (the default) the installed default model when its
    file has a saliency head, else none; anything else a model name or path (checked when it loads)."""
    if value is None or value.strip().lower() in ("", "none"):
        return None
    if value.strip().lower() != "auto":
        return value
    from ..checkpoint import read_checkpoint_configs
    from ..errors import LDFSAMError
    from ..models import resolve_model

    try:
        path = resolve_model(None)
        cfg, _, _ = read_checkpoint_configs(path)
    except LDFSAMError:
        return None
    return str(path) if cfg.saliency.enabled and cfg.sam.preset == "lite" else None
