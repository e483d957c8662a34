"""Case-level splits by the paper's protocol, nested budgets, and the splits file."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from ldfsam.data.splits import budget_subset, make_splits, read_splits, write_split_ids, write_splits
from ldfsam.errors import ConfigError

IDS = [f"case_{i:03d}" for i in range(129)]  # the paper's 3D CBCT Tooth set: 129 volumes, 26 for testing


def test_follows_the_protocol():
    s = make_splits(list(reversed(IDS)), test_count=26)
    order = sorted(IDS)
    random.Random(2025).shuffle(order)
    assert s.test == order[:26]
    assert s.val == order[26:26 + 10]  # 10% of the 103 remaining, rounded
    assert s.train == order[36:]
    assert len(s.train) == 93
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    assert sorted(s.train + s.val + s.test) == sorted(IDS)


def test_identical_across_runs():
    code = ("import json; from ldfsam.data.splits import make_splits; "
            f"print(json.dumps(make_splits({IDS!r}, test_fraction=0.2).to_json()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert json.loads(runs[0])["test"] == make_splits(IDS, test_fraction=0.2).test


def test_budgets_are_nested():
    s = make_splits(IDS, test_count=26)
    b10, b20, b50, b100 = (s.budget(f) for f in (0.1, 0.2, 0.5, 1.0))
    assert len(b10) == 10 and len(b20) == 19 and len(b50) == 47 and b100 == s.train
    assert set(b10) < set(b20) < set(b50) < set(b100)
    assert b20[:len(b10)] == b10
    with pytest.raises(ConfigError):
        budget_subset(s.train, 0.0)
    assert budget_subset(["a"], 0.1) == ["a"]  # at least one case


def test_small_sets_keep_a_validation_case():
    s = make_splits(["a", "b", "c", "d", "e", "f"], test_fraction=0.2)
    assert len(s.test) == 1 and len(s.val) == 1 and len(s.train) == 4
    assert make_splits(["a"], test_fraction=0.0).train == ["a"]


def test_file_round_trip_and_checks(tmp_path):
    s = make_splits(IDS, test_fraction=0.2)
    p = tmp_path / "splits.json"
    write_splits(s, p)
    back = read_splits(p)
    assert (back.train, back.val, back.test, back.seed) == (s.train, s.val, s.test, 2025)
    data = json.loads(p.read_text())
    assert data["budgets"]["10%"] == s.budget(0.1)
    data["val"].append(data["train"][0])
    p.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="in both train and val"):
        read_splits(p)
    p.write_text("{}")
    with pytest.raises(ConfigError, match="not an ldfsam splits file"):
        read_splits(p)
    with pytest.raises(ConfigError, match="no such"):
        read_splits(tmp_path / "missing.json")


def test_bad_parameters():
    with pytest.raises(ConfigError):
        make_splits(IDS, test_fraction=1.0)
    with pytest.raises(ConfigError):
        make_splits(IDS, test_count=129)
    with pytest.raises(ConfigError):
        make_splits(["a", "a"])
    with pytest.raises(ConfigError, match="not among"):
        make_splits(IDS, test_ids=["zzz"])
    fixed = make_splits(IDS, test_ids=IDS[:5])
    assert sorted(fixed.test) == IDS[:5]


def test_run_folders_and_the_ids_they_used_read_back(tmp_path):
    # What a fine-tuning run writes (the ids it used) carries the format header and reads back as splits.
    write_split_ids({"train": ["a", "b"], "val": ["c"], "test": ["d"]}, tmp_path / "phase2" / "splits.json",
                    used_by="finetune", budget=0.5)
    doc = json.loads((tmp_path / "phase2" / "splits.json").read_text())
    assert doc["format"] == "ldfsam-splits" and doc["budget"] == 0.5
    assert read_splits(tmp_path / "phase2").test == ["d"]
    # A run folder: its own splits.json comes first, then its prepared data's, then Phase 2's.
    assert read_splits(tmp_path).train == ["a", "b"]
    write_splits(make_splits([f"c{i}" for i in range(10)]), tmp_path / "prepared" / "splits.json")
    assert len(read_splits(tmp_path).train) == 7
    with pytest.raises(ConfigError, match="no such splits file"):
        read_splits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without a splits file") as e:
        read_splits(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
