"""Phase 1 configuration: paper defaults, JSON round trip, command-line overrides, rejected values."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ldfsam.cli import distill as cli
from ldfsam.config import load_json, save_json
from ldfsam.distill.config import DistillConfig, LDConfig
from ldfsam.errors import ConfigError


def test_paper_defaults():
    cfg = DistillConfig().validate()
    # Pretrained weights where installed: the teacher's scale follows them ("auto": s, else the paper's x).
    assert (cfg.teacher_scale, cfg.student_scale) == ("auto", "n")
    assert (cfg.teacher_init, cfg.student_init, cfg.pretrained_bn) == ("auto", "auto", "frozen")
    assert (cfg.ld.scheme, cfg.ld.temperature, cfg.ld.lambda_main, cfg.ld.lambda_vlr) == ("ld_main_vlr", 10.0, 1.0,
                                                                                             1.0)
    assert (cfg.ld.vlr_gamma, cfg.ld.anchor_scale, cfg.ld.atss_topk) == (0.25, 8.0, 9)
    r = cfg.student
    assert (r.optimizer, r.lr0, r.momentum, r.weight_decay, r.imgsz) == ("SGD", 0.01, 0.937, 0.0005, 640)
    assert r.warmup_epochs > 0


def test_json_round_trip_and_unknown_keys(tmp_path):
    cfg = DistillConfig(teacher_scale="s", ld=LDConfig(scheme="kd", temperature=4.0))
    save_json(cfg, tmp_path / "d.json")
    assert load_json(DistillConfig, tmp_path / "d.json") == cfg
    (tmp_path / "bad.json").write_text('{"ld": {"scheme": "fancy"}}')
    with pytest.raises(ConfigError, match="fancy"):
        load_json(DistillConfig, tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text('{"ld": {"temprature": 3}}')
    with pytest.raises(ConfigError, match="temprature"):
        load_json(DistillConfig, tmp_path / "typo.json")


@pytest.mark.parametrize("change, message", [
    ({"ld": LDConfig(vlr_gamma=0.0)}, "vlr_gamma"),
    ({"ld": LDConfig(temperature=0.0)}, "temperature"),
    ({"ld": LDConfig(lambda_vlr=-1.0)}, "lambda"),
    ({"teacher_scale": "x", "student": dataclasses.replace(DistillConfig().student, imgsz=320)}, "must match"),
    ({"student": dataclasses.replace(DistillConfig().student, device="0,1")}, "one device"),
    ({"teacher": dataclasses.replace(DistillConfig().teacher, epochs=0)}, "epochs"),
])
def test_rejected_values(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(DistillConfig(), **change).validate()


def test_command_line_overrides_config_file(tmp_path):
    save_json(DistillConfig(teacher_scale="m", ld=LDConfig(temperature=4.0)), tmp_path / "d.json")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["data.yaml", "-o", "run", "--config", str(tmp_path / "d.json"), "--epochs", "5",
                              "--student-epochs", "7", "--imgsz", "320", "--scheme", "ld_main", "--lambda-main", "2"])
    cfg = cli.build_config(args)
    assert cfg.teacher_scale == "m" and cfg.ld.temperature == 4.0  # from the file
    assert (cfg.teacher.epochs, cfg.student.epochs) == (5, 7)
    assert cfg.teacher.imgsz == cfg.student.imgsz == 320
    assert (cfg.ld.scheme, cfg.ld.lambda_main) == ("ld_main", 2.0)
