"""Memory planning: fit the batch to the memory available, or say plainly that the volume does not fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import InputError

# Working memory per slice in a batch (bytes): activations of the YOLO backbone, the encoder and the decoder at
# the default input sizes (256 SAM, 640 YOLO; 256 YOLO for small). About twice what psutil shows for a batch of 8
# on the CPU (vit_b: ~35 MB per slice), as a margin for allocator fragmentation.
# lite: TinyViT's first stage works at the full 256×256 input (MBConv expands 64 channels to 256 there), ~220 MB
# of peak resident memory per slice in float32 (a batch of 4: 912 MB above the model).
PER_SLICE_BYTES = {"vit_b": 80 << 20, "vit_l": 120 << 20, "vit_h": 160 << 20, "small": 40 << 20, "lite": 440 << 20}


@dataclass
class MemoryPlan:
    batch: int
    volume_bytes: int
    per_slice_bytes: int
    available_bytes: int
    reduced: bool


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def plan_memory(path, shape_zyx, preset: str, batch: int, model_bytes: int, probabilities: bool,
                memory_limit: Optional[int] = None, held_bytes: int = 0) -> MemoryPlan:
    """Choose a batch size that fits ``memory_limit`` (default: 80% of the available memory).

    The volume-sized arrays still to come (the label map, the clean-up's working copies inside the teeth's box,
    counted as if the box were the whole volume, and the probabilities when asked) must fit with the model at
    batch 1; otherwise the error names the file, what it needs and what is free. ``held_bytes`` (the model
    slices' grey values, already in memory) counts against ``memory_limit``; the available memory the system
    reports has them deducted already.
    """
    nz, ny, nx = shape_zyx
    voxels = nz * ny * nx
    # label map (1 byte) + the clean-up's component labels (4 bytes) and masks (up to 2 bytes), rounded up
    volume_bytes = voxels * 8 + (voxels * 4 if probabilities else 0)
    per_slice = PER_SLICE_BYTES.get(preset, PER_SLICE_BYTES["vit_b"]) + ny * nx * 12
    available = int(memory_limit) - held_bytes if memory_limit is not None else int(0.8 * available_memory())
    free_for_batches = available - volume_bytes - model_bytes
    if free_for_batches < per_slice:
        need = volume_bytes + model_bytes + per_slice
        raise InputError(f"volume of {nx}x{ny}x{nz} voxels needs about {need / 2**30:.1f} GB of memory to segment "
                         f"but only {max(available, 0) / 2**30:.1f} GB is available; free memory or crop the volume",
                         path)
    fit = int(free_for_batches // per_slice)
    chosen = max(1, min(batch, fit))
    return MemoryPlan(chosen, volume_bytes, per_slice, available, chosen < batch)
