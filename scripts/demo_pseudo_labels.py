"""Pseudo-labelled real CT slices for the demo model's Phase 2 (``scripts/train_demo_model.py --pseudo-volumes``).

Knowledge distillation from a teacher model's automatic output: each volume is segmented by the teacher
(``ldfsam.infer.segment_image``, its own encoder, the whole automatic pipeline with its clean-up), and its slices
become training slices whose mask is what the teacher marked, empty where it marked nothing. A model trained on
another encoder's embeddings (the half-resolution student) so learns what the teacher rejects on real scans
(skull base, nasal floor, spine), which phantoms do not show. The labels are a model's output, not ground truth:
what they teach is to agree with the teacher.

A volume known to hold no teeth (e.g. a head CT's cranium) may be given as a negative instead: all its slices are
background, whatever the teacher would mark there (the bundled demo model takes parts of the frontal bone for
tooth). A volume is given as ``PATH`` or ``PATH:Z0-Z1`` (array slices Z0..Z1 inclusive, e.g. the part of a scan that
is not used to judge the result).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

_SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<z0>\d+)-(?P<z1>\d+))?$")


def parse_volume_spec(spec: str) -> Tuple[Path, Optional[Tuple[int, int]]]:
    """``PATH`` or ``PATH:Z0-Z1`` -> (path, (z0, z1) or None); raises SystemExit naming a bad spec."""
    m = _SPEC.match(spec)
    if m is None:
        raise SystemExit(f"{spec}: give PATH or PATH:Z0-Z1")
    z = None if m["z0"] is None else (int(m["z0"]), int(m["z1"]))
    if z is not None and z[0] > z[1]:
        raise SystemExit(f"{spec}: the first slice must not be after the last")
    return Path(m["path"]), z


def read_volume(spec: str) -> sitk.Image:
    """The volume of ``spec``, its slice range cut out (array axis 0, the image's z)."""
    path, z = parse_volume_spec(spec)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    image = sitk.ReadImage(str(path))
    if z is None:
        return image
    if z[1] >= image.GetSize()[2]:
        raise SystemExit(f"{spec}: the volume has {image.GetSize()[2]} slices")
    return image[:, :, z[0]:z[1] + 1]


def pseudo_label_slices(specs: List[str], teacher, size: int, pre, log: Callable[[str], None], options=None):
    """Slices of the volumes ``specs`` with the teacher's automatic output as masks: (uint8 N×size×size images,
    bool N×size×size masks, one record per volume). ``teacher``: a loaded model (``ldfsam.infer.load_model``), or
    None for negatives (every mask empty); ``pre``: the trained model's preprocessing (the teacher must share it);
    ``options``: how the teacher segments (default: ``SegmentOptions(encoder="full")``, its own encoder)."""
    from ldfsam.data.synthetic import prepare_slices
    from ldfsam.infer.pipeline import segment_image
    from ldfsam.infer.segment_options import SegmentOptions

    images, masks, records = [], [], []
    for spec in specs:
        image = read_volume(spec)
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        if teacher is None:
            labels = np.zeros(array.shape, np.uint8)
        else:
            result = segment_image(image, teacher, options=options or SegmentOptions(encoder="full"), device="cpu",
                                   name=spec)
            labels = (np.asarray(result.labels) > 0).astype(np.uint8)
        sx, sy, sz = image.GetSpacing()
        part = prepare_slices(array, labels, (sz, sy, sx), size, pre, min_pixels=1)
        images.append(part.images)
        masks.append(part.masks)
        marked = [int(z) for z in range(labels.shape[0]) if labels[z].any()]
        records.append({"volume": spec, "slices": int(labels.shape[0]), "negative": teacher is None,
                        "marked_voxels": int(labels.sum()), "marked_slices": marked})
        said = f"{len(marked)} of {labels.shape[0]} slices marked, {int(labels.sum())} voxels"
        log(f"pseudo-labels: {spec}: {'negative, no tooth' if teacher is None else said}")
    return np.concatenate(images), np.concatenate(masks), records
