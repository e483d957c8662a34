"""Phase 2 with a wholly frozen image encoder (the ``lite`` preset): every training image is encoded once.

An image encoder without trainable parameters gives the same embedding for the same input in every epoch, so
the run encodes each item once, before training, and the epochs cost only the prompt generator, the prompt heads
and the mask decoder. Embeddings are kept in ``$LDFSAM_HOME/cache/embeddings/<encoder>/<image>.safetensors``:

- ``<encoder>``: SHA256 of the encoder's tensors, its input size and its pixel normalisation, so new weights or
  another preprocessing of the model never meet old embeddings;
- ``<image>``: SHA256 of the exact encoder input (the 3×S×S float image after the dataset's resizing), so an
  image is looked up by its content: runs on the same data share the cache (e.g. the prompt modes of a benchmark),
  a changed file is encoded anew.

Stored as float16 (2 MB per 256×64×64 embedding; about 1e-3 relative error, far below the decoder's sensitivity:
``Testing/test_finetune_embedding_cache.py`` checks the masks). Written atomically: an interrupted run leaves
whole files or none. The cache is exact only because Phase 2 applies no random augmentation to the SAM input;
an augmentation of that input would have to be cached per variant (a deterministic flip as its own image) or
turn the cache off (``FinetuneConfig.embedding_cache = "off"``).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from ..home import ldfsam_home

STORE_DTYPE = torch.float16


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """SHA256 of the image encoder's tensors (names, shapes, values), input size and pixel normalisation."""
    digest = hashlib.sha256()
    s = model.cfg.sam
    digest.update(f"{s.encoder}|{s.image_size}|{s.pixel_norm}".encode())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def image_key(sam_image: torch.Tensor) -> str:
    """SHA256 of one encoder input (3×S×S float32)."""
    t = sam_image.detach().to(torch.float32).cpu().contiguous()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in model.image_encoder.parameters())


class TensorFileCache:
    """Named tensors per image, one safetensors file per image key, in a folder per fingerprint and precision
    (``$LDFSAM_HOME/cache/<kind>/<fingerprint>``): what the embedding and the feature caches share."""

    kind = ""

    def __init__(self, fingerprint: str, root: Optional[Path] = None, precision: str = "fp32"):
        # Tensors computed in bf16/fp16 differ from fp32 ones by rounding: each precision has its own folder.
        suffix = "" if precision == "fp32" else f"-{precision}"
        self.dir = Path(root or ldfsam_home() / "cache" / self.kind) / f"{fingerprint[:32]}{suffix}"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def _load(self, key: str) -> Optional[Dict[str, torch.Tensor]]:
        """The file's tensors, or None when absent or unreadable (they are then computed again)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))
        except Exception:  # noqa: BLE001 - a damaged cache file is a miss, never an error
            return None

    def _save(self, key: str, tensors: Dict[str, torch.Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(key)) as tmp:
            save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp))


class EmbeddingCache(TensorFileCache):
    """The embeddings of one encoder, one file per image."""

    kind = "embeddings"

    def get(self, key: str) -> Optional[torch.Tensor]:
        """The embedding D×G×G (float32), or None when absent or unreadable (it is then computed again)."""
        tensors = self._load(key)
        return None if tensors is None or "embedding" not in tensors else tensors["embedding"].float()

    def put(self, key: str, embedding: torch.Tensor) -> None:
        self._save(key, {"embedding": embedding.to(STORE_DTYPE)})

    def embedding_of(self, sam_image: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The embedding D×G×G of ``sam_image`` (3×S×S): the cached one, or ``compute()``'s, kept."""
        key = image_key(sam_image)
        embedding = self.get(key)
        if embedding is None:
            embedding = compute()
            self.put(key, embedding)
        return embedding


class CachedEmbeddingDataset(torch.utils.data.Dataset):
    """A Phase 2 dataset whose items carry ``embedding`` (D×G×G, from the cache) instead of ``sam_image``."""

    def __init__(self, dataset: torch.utils.data.Dataset, cache: EmbeddingCache, keys: List[str]):
        self.dataset, self.cache, self.keys = dataset, cache, keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item = dict(self.dataset[index])
        embedding = self.cache.get(self.keys[index])
        if embedding is None:
            raise RuntimeError(f"embedding {self.cache.path(self.keys[index])} vanished during the run")
        item.pop("sam_image")
        item["embedding"] = embedding
        return item


def inference_encoder(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_image`` for encoding only. A TinyViT is copied and prepared for inference (BatchNorm folded,
    channels-last: the same embeddings to float rounding, and faster; docs/model.md, "Encoder speed"); the model
    itself is left as it is (its state dict keeps LiteMedSAM's names)."""
    if model.cfg.sam.encoder != "tiny_vit":
        return model.encode_image
    from ..model.tiny_vit_inference import prepare_for_inference

    device = next(model.image_encoder.parameters()).device
    encoder = prepare_for_inference(copy.deepcopy(model.image_encoder), channels_last=device.type == "cpu")
    if model.cfg.sam.pixel_norm == "none":
        return encoder
    return lambda x: encoder((x - model.pixel_mean) / model.pixel_std)


@torch.no_grad()
def encode(model: torch.nn.Module, images: torch.Tensor, precision: str = "fp32",
           encoder: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Embeddings B×D×G×G (float32) of images B×3×S×S, under bf16/fp16 autocast when ``precision`` says so.
    ``encoder``: :func:`inference_encoder` of the model, made once per run (default: ``model.encode_image``)."""
    device = next(model.image_encoder.parameters()).device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return (encoder or model.encode_image)(images.to(device)).float()


def encode_dataset(model: torch.nn.Module, dataset: torch.utils.data.Dataset, cache: EmbeddingCache,
                   batch_size: int = 8, on_progress: Optional[Callable[[int, int, int], None]] = None,
                   precision: str = "fp32", on_item: Optional[Callable[[int, Dict[str, object]], None]] = None
                   ) -> CachedEmbeddingDataset:
    """Look every item up, encode the missing ones in batches (in ``precision``: the cache's), and return the
    dataset with embeddings. ``on_progress(done, total, encoded)`` is called after each item; ``on_item(index,
    item)`` with each item read (the feature cache takes what it needs from this pass instead of reading again)."""
    from ..heap import reuse_large_blocks

    reuse_large_blocks()
    model.eval()
    encoder = inference_encoder(model)
    keys: List[str] = []
    pending: List[torch.Tensor] = []
    pending_keys: List[str] = []
    encoded = 0

    def flush() -> None:
        nonlocal encoded
        if not pending:
            return
        embeddings = encode(model, torch.stack(pending), precision, encoder)
        for key, embedding in zip(pending_keys, embeddings):
            cache.put(key, embedding)
        encoded += len(pending)
        pending.clear()
        pending_keys.clear()

    total = len(dataset)
    for index in range(total):
        item = dataset[index]
        if on_item is not None:
            on_item(index, item)
        image = item["sam_image"]
        key = image_key(image)
        keys.append(key)
        if key not in pending_keys and cache.get(key) is None:
            pending.append(image)
            pending_keys.append(key)
            if len(pending) >= batch_size:
                flush()
        if on_progress is not None and index + 1 < total:
            on_progress(index + 1, total, encoded)
    flush()
    if on_progress is not None:
        on_progress(total, total, encoded)
    return CachedEmbeddingDataset(dataset, cache, keys)


class FromEmbeddings(torch.nn.Module):
    """LDFSAM from cached embeddings: ``forward(embedding B×D×G×G, yolo_image, boxes=None) -> logits``;
    ``yolo_image`` may be the prompt generator's cached features (P3, P4, P5) instead (feature_cache.py).

    A module (not a function) so that DistributedDataParallel can wrap it like the model itself.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, embedding: torch.Tensor, yolo_image: torch.Tensor,
                boxes: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        if isinstance(yolo_image, (tuple, list)):
            return self.model.decode(embedding, tuple(yolo_image), boxes)
        return self.model.decode(embedding, self.model.prompt_features(yolo_image), boxes)
