"""The format of LDFSAM's files: safetensors tensors plus a JSON document in the header; never pickle.

Every LDFSAM file (model, prompt generator, training state, converted third-party weights) is a safetensors file
whose header metadata key ``"ldfsam"`` holds a JSON document. This module writes such files atomically
(``save_state``), reads them only after checking them (``read_header``, ``read_document``, ``load_state``,
``read_tensors``), so a foreign, truncated or corrupt file is a CheckpointError that names the file and the
problem, and holds what any reader of weights needs: the model document's checks (``read_checkpoint_meta``,
``read_checkpoint_configs``), a digest of tensors, the description of a state dict that does not fit, and strict
loading into a module.

It sits below the networks: it imports configurations, never a network module. Building a model from a file
is ``ldfsam.checkpoint``'s, above both.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple, Union

from .atomic import atomic_path
from .config import from_dict
from .data.config import PreprocessConfig
from .errors import CheckpointError, ConfigError
from .model.config import ModelConfig

# torch only where tensors are made or read: headers and documents are read without it (Slicer lists the installed
# models before torch is installed).
if TYPE_CHECKING:
    import torch

PathLike = Union[str, Path]
META_KEY = "ldfsam"
MODEL_FORMAT = "ldfsam-model"
MODEL_VERSION = 1
# A safetensors header is JSON of a few bytes per tensor; anything beyond this is not one.
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def save_state(path: PathLike, tensors: Dict[str, torch.Tensor], document: Dict[str, Any]) -> None:
    """Write ``tensors`` and the JSON ``document`` (header metadata key "ldfsam") to ``path`` atomically."""
    import torch
    from safetensors.torch import save_file

    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"save_state: not tensors: {bad[:5]}")
    # Contiguous private copies: safetensors refuses views and tensors that share storage.
    # Storage users counted once (a per-tensor scan of all tensors is quadratic: seconds for a training state).
    users: Dict[int, int] = {}
    for v in tensors.values():
        if v.numel():
            users[v.untyped_storage().data_ptr()] = users.get(v.untyped_storage().data_ptr(), 0) + 1
    flat = {k: v.detach().to("cpu").contiguous().clone()
            if v.numel() and users[v.untyped_storage().data_ptr()] > 1 else
            v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text = json.dumps(document, sort_keys=False)
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={META_KEY: text})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def read_header(path: Path) -> Tuple[Dict[str, Any], int]:
    """The safetensors header (dict) and the byte offset where tensor data begins, after checking both."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"is not a model file: only {size} bytes, too short for a safetensors header",
                                      path)
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER:
                raise CheckpointError("is not a safetensors model file (no valid header length at the start)", path)
            if 8 + n > size:
                raise CheckpointError(f"is truncated: its header claims {n} bytes but the file has {size}", path)
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError("no such file", path) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a model file", path) from None
    except OSError as e:
        raise CheckpointError(f"cannot be read: {e.strerror or e}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError("is not a safetensors model file (its header is not JSON); a corrupt or foreign file",
                              path) from None
    if not isinstance(header, dict):
        raise CheckpointError("has a corrupt safetensors header (not a mapping)", path)
    data_start = 8 + n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            expected = count * _DTYPE_BYTES.get(info["dtype"], 0)
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"has a corrupt safetensors header (entry {key!r})", path) from None
        if _DTYPE_BYTES.get(info["dtype"]) and stop - begin != expected:
            raise CheckpointError(f"has a corrupt safetensors header (tensor {key!r} size does not match its shape)",
                                  path)
        end = max(end, stop)
    if data_start + end > size:
        raise CheckpointError(f"is truncated: {size} bytes, but its tensors need {data_start + end} "
                              "(an interrupted copy or download?)", path)
    return header, data_start


def read_document(path: PathLike) -> Dict[str, Any]:
    """The JSON document of any LDFSAM safetensors file (model, prompt generator, training state); header only."""
    path = Path(path)
    header, _ = read_header(path)
    metadata = header.get("__metadata__") or {}
    text = metadata.get(META_KEY) if isinstance(metadata, dict) else None
    if text is None:
        raise CheckpointError("is a safetensors file but not an LDFSAM one (no 'ldfsam' document in its header)", path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"has a corrupt LDFSAM document in its header ({e})", path) from None
    if not isinstance(document, dict):
        raise CheckpointError("has a corrupt LDFSAM document in its header (not a mapping)", path)
    return document


def load_state(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a file written by :func:`save_state`: (tensors on CPU, JSON document)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    document = read_document(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot be read as safetensors: {e}", path) from None
    return tensors, document


def check_document(document: Dict[str, Any], path: PathLike, fmt: str, version: int, what: str) -> None:
    """Refuse a document of another format than ``fmt`` (a file of another kind) or of another ``version``;
    ``what`` names the kind of file in the message ("model", "prompt generator")."""
    if document.get("format") != fmt:
        raise CheckpointError(f"is not an LDFSAM {what} file (format {document.get('format')!r}, expected "
                              f"{fmt!r})", path)
    if document.get("version") != version:
        raise CheckpointError(f"{what} format version {document.get('version')!r} is not supported (this ldfsam "
                              f"reads version {version}); a newer ldfsam wrote it?", path)


def read_checkpoint_meta(path: PathLike) -> Dict[str, Any]:
    """The JSON document of an LDFSAM model file, from its header only (no tensors are read)."""
    document = read_document(path)
    check_document(document, path, MODEL_FORMAT, MODEL_VERSION, "model")
    return document


def read_checkpoint_configs(path: PathLike) -> Tuple[ModelConfig, PreprocessConfig, Dict[str, Any]]:
    """(ModelConfig, PreprocessConfig, the whole document) of a model file, from its header alone."""
    meta = read_checkpoint_meta(path)  # also checks the header and that the file is complete
    try:
        return (from_dict(ModelConfig, meta.get("model"), "model"),
                from_dict(PreprocessConfig, meta.get("preprocess"), "preprocess"), meta)
    except ConfigError as e:
        raise CheckpointError(f"has an invalid configuration: {e}", path) from None


def read_tensors(path: Path, float_dtype: Callable[[str], torch.dtype]) -> Dict[str, torch.Tensor]:
    """Every tensor of a checked safetensors file, floating ones converted to ``float_dtype(key)`` one at a time.

    Plain reads, no memory map: mapped file pages would count against the process for as long as it runs.
    """
    import torch

    torch_dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                    "BOOL": torch.bool}
    header, data_start = read_header(path)
    tensors: Dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as f:
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                dtype = torch_dtypes.get(info["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {key!r} has unsupported dtype {info['dtype']}")
                begin, end = info["data_offsets"]
                f.seek(data_start + begin)
                buf = bytearray(end - begin)
                if f.readinto(buf) != len(buf):
                    raise ValueError(f"tensor {key!r} is cut short")
                t = (torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)).reshape(info["shape"])
                tensors[key] = t.to(float_dtype(key)) if t.is_floating_point() else t
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot be read as safetensors: {e}", path) from None
    return tensors


def tensors_digest(state: Dict[str, torch.Tensor]) -> str:
    """SHA256 over every tensor's name, dtype, shape and bytes, in name order: what a converted third-party file
    records, and checks on every load."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_mismatch(expected: Dict[str, Tuple[int, ...]], state: Dict[str, torch.Tensor]) -> str:
    """How ``state`` differs from the tensor names and shapes ``expected`` ("" when it fits): missing, unexpected
    and reshaped tensors, each counted with a first example."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    details = []
    if missing:
        details.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        details.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    if wrong:
        details.append(f"{len(wrong)} of another shape, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} instead of "
                       f"{tuple(expected[wrong[0]])}")
    return "; ".join(details)


def load_strict(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: PathLike, what: str,
                assign: bool = False) -> None:
    """Load ``state_dict`` into ``module`` strictly; any missing, unexpected or reshaped tensor is a
    CheckpointError naming ``source`` and describing the mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) of another shape (e.g. {k}: file {tuple(state_dict[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"weights do not fit {what}: " + "; ".join(parts), source)
    module.load_state_dict(state_dict, strict=True, assign=assign)
    if assign:
        left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if left:  # a non-persistent tensor built on the meta device: a programming error, not a bad file
            raise RuntimeError(f"tensors left unmaterialised after loading {source}: {left[:5]}")
