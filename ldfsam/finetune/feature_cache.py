"""Phase 2 on cached embeddings with a frozen prompt generator: each image's YOLO features are computed once.

The prompt generator is frozen in Phase 2 (no trainable parameter, BatchNorm statistics fixed) and Phase 2 applies
no random augmentation to its input, so an image's P3/P4/P5 are the same in every step of every epoch, and in every
prompt mode trained on the same detector. Where the image embeddings are cached too (``embedding_cache.py``), a
step would otherwise spend its time on the frozen detector's forward pass, repeated for nothing. The features are
kept in ``$LDFSAM_HOME/cache/yolo-features/<generator>/<image>.safetensors``:

- ``<generator>``: SHA256 of the prompt generator's tensors (names, shapes, values) and its input size;
- ``<image>``: SHA256 of the exact YOLO input (the 3×Y×Y float image after the dataset's resizing).

Stored in float32 (0.46 MB per image for a YOLOv8n at 256), so a step on cached features computes what a step with
the forward pass computes, to the float rounding of a batched convolution (``Testing/test_finetune_feature_cache.py``).
Written atomically; a damaged file is computed again. ``FinetuneConfig.feature_cache = "off"`` runs the detector in
every step.

With both caches an item needs nothing of its image any more: its mask and the other small fields are kept in
memory (binary masks as booleans, 64 KB per 256×256 item) and the item is made of the two cache files and them, so
the data loader no longer reads and resizes every image twice in every epoch only to drop the results (what this
and the frozen forward pass cost a step: docs/training.md, "Where a step's time goes").
"""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .embedding_cache import TensorFileCache, image_key

LEVELS = ("p3", "p4", "p5")


def generator_fingerprint(model: torch.nn.Module) -> str:
    """SHA256 of the prompt generator's tensors (names, shapes, values) and its input size."""
    digest = hashlib.sha256(f"yolo|{model.cfg.prompt_generator.image_size}".encode())
    for name, tensor in sorted(model.prompt_generator.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def features_cacheable(model: torch.nn.Module) -> bool:
    """True when a step never needs the YOLO image: the prompt generator is frozen, or the prompt mode makes no
    YOLO pass at all (``none``: its items then carry no features, ``yolo_features`` is empty)."""
    return (model.cfg.prompt_mode == "none"
            or not any(p.requires_grad for p in model.prompt_generator.parameters()))


class FeatureCache(TensorFileCache):
    """The P3/P4/P5 of one prompt generator, one file per image (features computed under bf16/fp16 autocast, as
    such a run's steps compute them, have their own folder)."""

    kind = "yolo-features"

    def get(self, key: str) -> Optional[Tuple[torch.Tensor, ...]]:
        """(P3, P4, P5) of one image (C×H×W each, float32), or None when absent or unreadable."""
        tensors = self._load(key)
        if tensors is None or any(name not in tensors for name in LEVELS):
            return None
        return tuple(tensors[name] for name in LEVELS)

    def put(self, key: str, features: Tuple[torch.Tensor, ...]) -> None:
        self._save(key, {name: f.float() for name, f in zip(LEVELS, features)})


IMAGES = ("sam_image", "yolo_image", "embedding")


class _Binary:
    """A float tensor of 0s and 1s kept as booleans (a mask: 4× smaller), given back as it was."""

    def __init__(self, tensor: torch.Tensor):
        self.bits, self.dtype = tensor.bool(), tensor.dtype

    def get(self) -> torch.Tensor:
        return self.bits.to(self.dtype)


def _compact(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if torch.equal(value, value.bool().to(value.dtype)):
            return _Binary(value)
    return value


class ItemNotes:
    """What the feature cache needs of each item (its YOLO input's key, its small fields), noted while another pass
    reads the items anyway (``encode_dataset``'s ``on_item``), so that the images are not read a second time."""

    def __init__(self) -> None:
        self.keys: Dict[int, str] = {}
        self.fields: Dict[int, Dict[str, object]] = {}

    def __call__(self, index: int, item: Dict[str, object]) -> None:
        self.keys[index] = image_key(item["yolo_image"])
        self.fields[index] = {k: _compact(v) for k, v in item.items() if k not in IMAGES}

    def complete(self, total: int) -> bool:
        return len(self.keys) == total and set(self.keys) == set(range(total))


def _embedding_dataset(dataset: torch.utils.data.Dataset):
    from .embedding_cache import CachedEmbeddingDataset

    return dataset if isinstance(dataset, CachedEmbeddingDataset) else None


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Items carry ``yolo_features`` (the list P3, P4, P5) from the cache instead of ``yolo_image``.

    Over a :class:`CachedEmbeddingDataset` an item is its embedding and features read from the caches and its small
    fields (mask, valid, ids) kept in memory: the image itself is not read again."""

    def __init__(self, dataset: torch.utils.data.Dataset, cache: FeatureCache, keys: List[str],
                 fields: Optional[List[Dict[str, object]]] = None):
        self.dataset, self.cache, self.keys = dataset, cache, keys
        self.embeddings = _embedding_dataset(dataset) if fields is not None else None
        self.fields = fields

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if self.embeddings is not None:
            item = {k: v.get() if isinstance(v, _Binary) else v for k, v in self.fields[index].items()}
            path = self.embeddings.cache.path(self.embeddings.keys[index])
            item["embedding"] = self.embeddings.cache.get(self.embeddings.keys[index])
            if item["embedding"] is None:
                raise RuntimeError(f"embedding {path} vanished during the run")
        else:
            item = dict(self.dataset[index])
            item.pop("yolo_image")
        if not self.keys:  # prompt mode none: no features
            item["yolo_features"] = []
            return item
        features = self.cache.get(self.keys[index])
        if features is None:
            raise RuntimeError(f"YOLO features {self.cache.path(self.keys[index])} vanished during the run")
        item["yolo_features"] = list(features)
        return item


@torch.no_grad()
def cache_features(model: torch.nn.Module, dataset: torch.utils.data.Dataset, cache: FeatureCache,
                   batch_size: int = 8, on_progress: Optional[Callable[[int, int, int], None]] = None,
                   precision: str = "fp32", notes: Optional[ItemNotes] = None) -> CachedFeatureDataset:
    """Look every item's features up, compute the missing ones in batches with the model's prompt generator (in
    eval mode and under the run's ``precision``, as Phase 2's steps run it), and return the dataset with features.
    ``on_progress(done, total, computed)`` is called after each item. In prompt mode ``none`` nothing is computed
    (the items carry an empty ``yolo_features``). ``notes``: the items' keys and fields noted by an earlier pass over
    ``dataset`` (then an image is read again only where its features are missing)."""
    from .precision import autocast

    needed = model.cfg.prompt_mode != "none"
    generator = model.prompt_generator
    was_training = generator.training
    generator.eval()
    keys: List[str] = []
    pending: List[torch.Tensor] = []
    pending_keys: List[str] = []
    computed = 0
    device = next(generator.parameters()).device

    def flush() -> None:
        nonlocal computed
        if not pending:
            return
        with autocast(precision, device):
            features = generator.features(torch.stack(pending).to(device))
        for i, key in enumerate(pending_keys):
            cache.put(key, tuple(f[i] for f in features))
        computed += len(pending)
        pending.clear()
        pending_keys.clear()

    total = len(dataset)
    embeddings = _embedding_dataset(dataset)
    inner = embeddings.dataset if embeddings is not None else dataset  # the images, without reading embeddings
    fields: List[Dict[str, object]] = []
    noted = notes is not None and embeddings is not None and notes.complete(total)
    try:
        for index in range(total):
            if noted:
                item, key = None, notes.keys[index]
                fields.append(notes.fields[index])
            else:
                item = inner[index]
                key = image_key(item["yolo_image"])
                if embeddings is not None:
                    fields.append({k: _compact(v) for k, v in item.items() if k not in IMAGES})
            if not needed:
                continue
            keys.append(key)
            if key not in pending_keys and cache.get(key) is None:
                image = (item if item is not None else inner[index])["yolo_image"]
                pending.append(image)
                pending_keys.append(key)
                if len(pending) >= batch_size:
                    flush()
            if on_progress is not None and index + 1 < total:
                on_progress(index + 1, total, computed)
        flush()
    finally:
        generator.train(was_training)
    if on_progress is not None:
        on_progress(total, total, computed)
    return CachedFeatureDataset(dataset, cache, keys, fields if embeddings is not None else None)
