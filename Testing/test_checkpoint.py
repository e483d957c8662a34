"""LDFSAM model files: bit-exact round trip, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from _model_helpers import small_model

from ldfsam.checkpoint import (
    load_checkpoint,
    load_state,
    read_checkpoint_meta,
    save_checkpoint,
    save_state,
)
from ldfsam.data.config import PreprocessConfig
from ldfsam.errors import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = small_model("dense+sparse", classes=("upper", "lower"))
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    pre = PreprocessConfig(class_names=["upper", "lower"], label_map={"1": 1, "2": 2}, fixed_window=(-500.0, 2500.0))
    save_checkpoint(path, model, model.cfg, pre, training={"epoch": 7, "val_dice": 0.81, "data": "/x/splits.json"})
    return path, model, pre


def test_round_trip_is_bit_exact(saved):
    path, model, pre = saved
    loaded = load_checkpoint(path)
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.model_cfg == model.cfg
    assert loaded.preprocess == pre
    assert loaded.meta["training"] == {"epoch": 7, "val_dice": 0.81, "data": "/x/splits.json"}
    assert loaded.meta["class_names"] == ["upper", "lower"]
    assert not loaded.model.training


def test_meta_reads_header_only(saved):
    path, model, _ = saved
    meta = read_checkpoint_meta(path)
    assert meta["format"] == "ldfsam-model" and meta["version"] == 1
    assert meta["model"]["sam"]["preset"] == "small"
    assert meta["preprocess"]["fixed_window"] == [-500.0, 2500.0]
    import ldfsam

    assert meta["package_version"] == ldfsam.__version__
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    # Header only: the bytes this process reads (the kernel's count) grow by the header, not by the tensors.
    io_stats = Path("/proc/self/io")
    if io_stats.is_file():
        def bytes_read() -> int:
            return int(next(line for line in io_stats.read_text().splitlines() if line.startswith("rchar")).split()[1])

        before = bytes_read()
        read_checkpoint_meta(path)
        # (reading /proc/self/io itself counts a few hundred bytes)
        assert bytes_read() - before < 8 + n + 16384 < len(raw) // 10
    # The header's offsets are checked against the file's size (still without reading the tensors): a file cut
    # right after its header is reported truncated.
    cut = path.with_name("header-only.safetensors")
    cut.write_bytes(raw[: 8 + n])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint_meta(cut)


def test_no_pickle_in_file(saved):
    # Every byte of the file is accounted for: the 8-byte header length, the JSON header, and the raw tensors it
    # declares, back to back, each equal to the model's tensor. No room is left for pickled objects.
    path, model, _ = saved
    raw = path.read_bytes()
    # Not torch.save's zip. (A bare pickle starts with 0x80, but so does a header length of 128 mod 256: the
    # accounting below, which leaves no byte unexplained, is what rules pickles out.)
    assert not raw.startswith(b"PK\x03\x04")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    assert "ldfsam" in header.pop("__metadata__")
    state = model.state_dict()
    assert header.keys() == state.keys()
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
              "BOOL": torch.bool}
    end = 0
    for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, stop = info["data_offsets"]
        assert start == end, key  # no gap before this tensor
        dtype = dtypes[info["dtype"]]
        count = 1
        for d in info["shape"]:
            count *= d
        assert stop - start == count * dtype.itemsize, key
        stored = torch.frombuffer(bytearray(raw[8 + n + start: 8 + n + stop]), dtype=dtype) if count else \
            torch.empty(0, dtype=dtype)
        assert torch.equal(stored.reshape(info["shape"]), state[key].cpu()), key
        end = stop
    assert 8 + n + end == len(raw)  # nothing after the last tensor


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value)


def test_file_that_is_no_checkpoint(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(CheckpointError, match="not a safetensors") as e:
        load_checkpoint(text)
    assert str(text) in str(e.value)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        load_checkpoint(tiny)
    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, pt)  # a zip/pickle file
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(pt)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_corrupt_header(saved, tmp_path):
    path, _, _ = saved
    raw = bytearray(path.read_bytes())
    raw[8:20] = b"!!!!!!!!!!!!"
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="header is not JSON"):
        load_checkpoint(bad)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an LDFSAM one"):
        load_checkpoint(foreign)
    other = tmp_path / "state.safetensors"
    save_state(other, {"step": torch.tensor(3)}, {"format": "ldfsam-train-state", "version": 1})
    with pytest.raises(CheckpointError, match="not an LDFSAM model file"):
        load_checkpoint(other)


def test_another_architecture(saved, tmp_path):
    """A file whose tensors do not fit the network its configuration describes (e.g. weights of another preset)."""
    path, model, _ = saved
    tensors, document = load_state(path)
    other = small_model("dense+sparse", classes=("tooth",)).state_dict()
    bad = tmp_path / "mixed.safetensors"
    save_state(bad, dict(other), document)
    with pytest.raises(CheckpointError, match="another shape") as e:
        load_checkpoint(bad)
    assert "mask_decoder" in str(e.value) and str(bad) in str(e.value)
    fewer = dict(tensors)
    fewer.pop("feature_prompts.alpha")
    bad2 = tmp_path / "fewer.safetensors"
    save_state(bad2, fewer, document)
    with pytest.raises(CheckpointError, match="missing .*feature_prompts.alpha"):
        load_checkpoint(bad2)


def test_save_is_atomic(saved, tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file intact and no partial file behind."""
    import safetensors.torch

    path, model, pre = saved
    target = tmp_path / "m.safetensors"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError):
        save_checkpoint(target, model, model.cfg, pre)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_state_round_trip(tmp_path):
    tensors = {"opt.0.exp_avg": torch.randn(4, 3), "step": torch.tensor(12, dtype=torch.int64),
               "half": torch.randn(5).half()}
    doc = {"format": "ldfsam-train-state", "version": 1, "structure": {"groups": [{"lr": 1e-4}]}}
    save_state(tmp_path / "s.safetensors", tensors, doc)
    back, doc2 = load_state(tmp_path / "s.safetensors")
    assert doc2 == doc
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)


def test_loading_builds_without_initialising(saved):
    """A model about to receive a file's weights is built on the meta device with ``torch.nn.init`` off: no
    random numbers are drawn, torch's compiler stack is never imported (1-2 s of every load), and the init
    functions are back afterwards."""
    import subprocess
    import sys

    path = saved[0]
    code = (
        "import sys, torch\n"
        "from ldfsam.checkpoint import load_checkpoint\n"
        f"load_checkpoint({str(path)!r})\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'\n"
        "from ldfsam.model.meta_init import _INIT_FUNCTIONS\n"
        "import torch.nn.init as init\n"
        "assert all(getattr(init, n).__module__ == 'torch.nn.init' for n in _INIT_FUNCTIONS)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
