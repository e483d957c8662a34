"""``ldfsam info`` in a real subprocess: parameter counts of a preset and of a model file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ldfsam(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ldfsam", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_info_vit_b_prints_the_counts():
    out = _ldfsam("info", "vit_b")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    figures = {label: float(value) for label, value in
               re.findall(r"^\s+(total|trainable \(Phase 2\)|trainable \+ frozen YOLO|prompt branch \(YOLO \+ heads\))"
                          r"\s+([\d.]+) M", text, re.M)}
    # Paper: 274.5 M total and 190.1 M trainable (Table 3, which counts the frozen YOLO as trainable), prompt
    # branch ~3.3 M (section 4.5). docs/model.md explains every difference.
    assert abs(figures["total"] - 274.5) / 274.5 < 0.03, text
    assert abs(figures["trainable + frozen YOLO"] - 190.1) / 190.1 < 0.03, text
    assert abs(figures["prompt branch (YOLO + heads)"] - 3.3) / 3.3 < 0.03, text
    assert abs(figures["trainable + frozen YOLO"] - figures["trainable (Phase 2)"] - 3.01) < 0.02, text  # YOLOv8n
    assert "YOLOv8n" in text and "ViT width 768, depth 12" in text
    assert re.search(r"encoder adapters\s+180,504,576\s+180,504,576", text), text


def test_info_json_of_a_model_file(tmp_path):
    from _model_helpers import small_model

    from ldfsam.checkpoint import save_checkpoint
    from ldfsam.data.config import PreprocessConfig

    model = small_model("sparse")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, model.cfg, PreprocessConfig(), training={"epochs": 2})
    out = _ldfsam("info", str(path), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["total"] == sum(p.numel() for p in model.parameters())
    assert info["architecture"]["prompt_mode"] == "sparse"
    assert info["training"] == {"epochs": 2}
    assert info["parts"]["prompt_generator"]["trainable"] == 0


def test_info_errors(tmp_path):
    out = _ldfsam("info", "vit_q")
    assert out.returncode == 2 and "vit_q: no such file, and not a preset name" in out.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    out = _ldfsam("info", str(junk))
    assert out.returncode == 2 and str(junk) in out.stderr and "not a safetensors" in out.stderr


def test_info_of_a_prompt_generator_file(tmp_path, capsys):
    from ldfsam.cli import main
    from ldfsam.model.config import PromptGeneratorConfig
    from ldfsam.model.prompt_generator import PromptGenerator, save_prompt_generator

    gen = PromptGenerator(PromptGeneratorConfig(scale="n", num_classes=3, image_size=320))
    path = tmp_path / "student.safetensors"
    save_prompt_generator(path, gen, gen.cfg, training={"epochs": 4})
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == sum(p.numel() for p in gen.parameters())
    assert info["config"]["num_classes"] == 3 and info["training"] == {"epochs": 4}


def test_info_of_the_bundled_demo_model(tmp_path, capsys):
    """The demo model stores no encoder (it names LiteMedSAM's published weights as its base) and carries a
    saliency head: info counts both from the configuration, and refuses a base it does not know."""
    import torch

    from ldfsam.cli import main
    from ldfsam.file_format import read_document, read_tensors, save_state

    demo = REPO / "ldfsam" / "resources" / "demo" / "ldfsam_demo.safetensors"
    document = read_document(demo)
    assert document["base"]["name"] == "litemedsam"
    assert main(["info", str(demo), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"] == {"name": "litemedsam", "sha256": document["base"]["sha256"]}
    assert info["parts"]["image_encoder"]["total"] > 5_000_000  # LiteMedSAM's TinyViT, counted though not stored
    assert info["parts"]["saliency_head"]["total"] > 0
    assert info["total"] == sum(part["total"] for part in info["parts"].values())

    document["base"]["name"] = "someone-elses-encoder"
    tampered = tmp_path / "tampered.safetensors"
    save_state(tampered, read_tensors(demo, lambda key: torch.float32), document)
    assert main(["info", str(tampered)]) == 2
    err = capsys.readouterr().err
    assert str(tampered) in err and "base weights this ldfsam does not know" in err
