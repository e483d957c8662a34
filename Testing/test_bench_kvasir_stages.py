"""bench_kvasir's stage clock: the whole run's time is the sum of measured stages, also over resumed invocations."""

from __future__ import annotations

import json
import time

from _scripts import load_script


def _bench():
    return load_script("benchmarks/bench_kvasir.py")


def test_stages_are_timed_written_and_summed(tmp_path):
    bench = _bench()
    path = tmp_path / "results.json"
    results = {"machine": {}}
    clock = bench.StageClock(results, {}, path)
    with clock.stage("b010 box: training") as info:
        time.sleep(0.2)
        info["train_s"] = 0.1
    # Written after every stage, so an interrupted invocation leaves its finished stages behind.
    on_disk = json.loads(path.read_text())["stages"]["b010 box: training"]
    assert 0.2 <= on_disk["wall_s"] < 5 and on_disk["train_s"] == 0.1 and "cpu_s" in on_disk
    with clock.stage("b010 box: evaluation", before_s=100.0):  # resumed: training seconds logged earlier count
        pass
    assert 100.0 <= results["stages"]["b010 box: evaluation"]["wall_s"] < 105
    table = clock.table()
    total = sum(r["wall_s"] for r in results["stages"].values())
    assert f"**{total:.0f}**" in table and table.count("\n") == 4


def test_a_reused_stage_keeps_the_earlier_invocations_record(tmp_path):
    bench = _bench()
    earlier = {"b100 Phase 1": {"wall_s": 694.0, "cpu_s": 970.0, "load_average_1min_at_end": 4.1}}
    results = {}
    clock = bench.StageClock(results, earlier, tmp_path / "results.json")
    with clock.stage("b100 Phase 1") as info:
        info["reused"] = True  # the student was found: nothing redone
    with clock.stage("b010 Phase 1") as info:
        info["reused"] = True  # found, but no earlier record: this invocation's (short) time is what is known
    assert results["stages"]["b100 Phase 1"]["wall_s"] == 694.0
    assert results["stages"]["b100 Phase 1"]["earlier_invocation"] is True
    fresh = results["stages"]["b010 Phase 1"]
    assert fresh["wall_s"] < 5 and "earlier_invocation" not in fresh
    assert "(earlier invocation)" in clock.table()


def test_epochs_give_a_small_budget_enough_steps():
    rule = _bench().epochs_for_steps
    assert rule(720, 6, 60) == 6  # 45 steps an epoch: 270 steps, the epochs asked for
    assert rule(72, 6, 60) == 12  # 5 steps an epoch (the last batch partial): 6 epochs would be 30 steps
    assert rule(36, 6, 60) == 20
    assert rule(72, 6, 0) == 6 and rule(72, 20, 60) == 20  # rule off; more epochs asked for are kept
    assert rule(1, 1, 60) == 60
    assert rule(72, 6, 120) == 24 and rule(720, 6, 120) == 6  # 120 steps: measured at 10 %, not the default
    assert _bench().PHASE1_BATCH == 16
    # Phase 2 (batch 8): 216 steps are 24 epochs of the 72 images, and leave the full budget's 8 epochs (720 steps)
    assert rule(72, 8, 216, 8) == 24 and rule(720, 8, 216, 8) == 8 and rule(73, 8, 216, 8) == 22
