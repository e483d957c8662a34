"""What segmenting a volume imports: scipy.ndimage (about 0.7 s of a 2-core machine's start) only where a step
needs it (splitting teeth, tooth numbers, prompted segmentation), not for the default automatic run."""

from __future__ import annotations

import subprocess
import sys

# The modules `ldfsam segment` and `ldfsam demo` import on the automatic path, from the command line to writing.
SEGMENT_PATH = ["ldfsam.cli", "ldfsam.infer", "ldfsam.infer.pipeline", "ldfsam.infer.cleanup", "ldfsam.infer.result",
                "ldfsam.infer.outputs", "ldfsam.infer.predictor", "ldfsam.infer.volume_prediction",
                "ldfsam.infer.adaptive_slices", "ldfsam.infer.model_loading", "ldfsam.infer.encoder_choice",
                "ldfsam.checkpoint", "ldfsam.model.ldfsam", "ldfsam.model.tiny_vit_student", "ldfsam.data.volume"]


def test_the_automatic_path_does_not_import_scipy_ndimage():
    code = ("import importlib, sys\n"
            f"for name in {SEGMENT_PATH!r}:\n"
            "    importlib.import_module(name)\n"
            "from ldfsam.infer.postprocess import remove_islands, fill_holes\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_splitting_teeth_still_finds_scipy():
    import numpy as np

    from ldfsam.infer.postprocess import split_teeth

    mask = np.zeros((6, 12, 20), bool)
    mask[1:5, 2:10, 2:8] = True
    mask[1:5, 2:10, 12:18] = True
    labels, n = split_teeth(mask, (1.0, 1.0, 1.0))
    assert n == 2 and set(np.unique(labels)) == {0, 1, 2}
