"""ultralytics through ldfsam.offline makes no network attempt: at import, model build, predict and training."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from ldfsam.offline import import_ultralytics, ultralytics_dir

    import_ultralytics()
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.checks import check_font

    root = Path(sys.argv[1])
    # A tiny detection data set: 4 images with one bright square each, YOLO labels.
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(2):
            im = np.zeros((64, 64, 3), np.uint8)
            im[16 + i * 8:40 + i * 8, 12:44] = 200
            Image.fromarray(im).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(f"0 0.4375 {0.4375 + i * 0.125} 0.5 0.375\\n")
    (root / "data.yaml").write_text(f"path: {root}\\ntrain: images/train\\nval: images/val\\nnames:\\n  0: tooth\\n")

    assert check_font("Arial.Unicode.ttf") is None or Path(check_font("Arial.Unicode.ttf")).exists()
    assert SETTINGS["sync"] is False and SETTINGS["tensorboard"] is False
    assert ultralytics_dir() in Path(SETTINGS.file).parents, SETTINGS.file

    trainer = DetectionTrainer(overrides=dict(
        model="yolov8n.yaml", data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=2, workers=0, device="cpu",
        project=str(root / "runs"), name="t", plots=True, amp=True, verbose=False, val=True, exist_ok=True))
    if sys.argv[2] == "train":
        trainer.train()
        last = root / "runs" / "t" / "weights" / "last.pt"
        assert last.is_file(), list((root / "runs").rglob("*"))
    else:
        # The start of train() without the epochs: the trainer's own set-up checks (AMP check, callbacks, loaders).
        trainer._setup_train()
        assert trainer.amp is not None and not bool(trainer.amp)  # CPU: no AMP, decided without a download
        from ultralytics.utils.plotting import Annotator

        Annotator(np.zeros((64, 64, 3), np.uint8), pil=True).text([2, 2], "font")  # plotting's font lookup

    model = YOLO("yolov8n.yaml")  # build from yaml, then predict on an array
    results = model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1

    try:
        YOLO("yolov8s.pt")  # a weights name that is not on disk: must fail at once, not download
    except Exception as e:
        assert "offline" in str(e) or "no such file" in str(e), e
    else:
        raise AssertionError("a missing weights file did not raise")
    print("OFFLINE-OK")
    """
)


def _run(code: str, tmp_path: Path, *args: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    netlog = tmp_path / "netlog.txt"
    env = dict(os.environ, LDFSAM_TEST_NETLOG=str(netlog), LDFSAM_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("YOLO_OFFLINE", None)
    env.pop("YOLO_CONFIG_DIR", None)
    env.update(extra_env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tmp_path)


def _check_offline(tmp_path: Path, mode: str) -> None:
    out = _run(TRAIN_SCRIPT, tmp_path, str(tmp_path / "ds"), mode)
    assert out.returncode == 0 and "OFFLINE-OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    netlog = tmp_path / "netlog.txt"
    assert not netlog.exists() or netlog.read_text() == "", netlog.read_text()
    assert (tmp_path / "home" / "ultralytics").is_dir()  # settings live under LDFSAM_HOME


def test_build_predict_and_trainer_setup_make_no_network_attempt(tmp_path):
    _check_offline(tmp_path, "setup")


@pytest.mark.slow
def test_one_epoch_of_training_makes_no_network_attempt(tmp_path):
    _check_offline(tmp_path, "train")


def test_guard_sees_plain_ultralytics_reaching_out(tmp_path):
    """Control: without ldfsam.offline, importing ultralytics probes the network, and the log records it."""
    code = "import ultralytics.utils as u; print(u.ONLINE)"
    out = _run(code, tmp_path, YOLO_CONFIG_DIR=str(tmp_path / "ul"))  # keep its settings out of the home folder
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "netlog.txt").read_text().strip() != ""


def test_importing_ultralytics_leaves_torchs_threads_alone():
    """ultralytics sets OMP_NUM_THREADS=1 when it is unset, which would pin torch to one thread; the project's
    import keeps torch's own default and takes the variable back."""

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH"))
                                        if p)
    probe = ("import os, torch; default = torch.get_num_threads()\n"
             "from ldfsam.offline import import_ultralytics; import_ultralytics()\n"
             "print(default, torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))")
    fresh = "from ldfsam.offline import import_ultralytics; import_ultralytics()\nimport torch, os\n" \
            "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
    default, after, var = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                         check=True).stdout.split()
    assert after == default and var == "None"
    threads, var = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, env=env,
                                  check=True).stdout.split()
    assert threads == default and var == "None"  # ultralytics imported before anything touched torch
