"""The FIRE-vs-PBT comparison harness on tiny configurations."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from firepbt.algorithms import PBT
from firepbt.algorithms.fire import FirePBT
from firepbt.bench import compare
from firepbt.bench.compare import (
    SETUPS,
    cosine,
    decision_cost,
    describe,
    fire_better_p,
    median_run,
    step_decay,
)
from firepbt.errors import ConfigError

TINY = {
    "plain": replace(SETUPS["plain"], steps=60, population=8),
    "deceptive": replace(SETUPS["deceptive"], steps=60, population=8),
    "nqm": replace(SETUPS["nqm"], steps=200, population=8),
}
STATS = {"values", "n", "mean", "std", "median", "min", "max"}


@pytest.fixture(scope="module")
def toys() -> dict:
    return compare.main("toys", seeds=2, processes=1, setups=TINY, cost_workers=0)


@pytest.fixture(scope="module")
def nqm() -> dict:
    return compare.main("nqm", seeds=1, processes=1, setups=TINY, cost_workers=0)


def test_toys_report_every_method_for_both_toys(toys: dict) -> None:
    assert {k: toys[k] for k in ("bench", "preset", "seeds", "plots", "decision_cost")} == {
        "bench": "toys", "preset": "quick", "seeds": 2, "plots": [], "decision_cost": None,
    }
    assert set(toys["tasks"]) == {"deceptive", "plain"}
    for table in toys["tasks"].values():
        assert table["seeds"] == [0, 1] and table["metric"] == "objective"
        assert table["worker_steps_per_run"] == 8 * 60
        assert set(table["methods"]) == {"fire", "pbt", "pb2", "random"}
        for d in table["methods"].values():
            assert set(d) == STATS and d["n"] == 2
            assert all(math.isfinite(v) and v <= 1.2 for v in d["values"])  # Q <= 1.2
        assert set(table["p_fire_better"]) == {"pbt", "pb2", "random"}
        assert all(0.0 < p <= 1.0 for p in table["p_fire_better"].values())
        fire = table["fire"]
        assert len(fire["transfers"]) == len(fire["lineage_transfers"]) == 2
        assert 0.0 <= fire["evaluator_budget_used"] <= 1.0


def test_nqm_adds_tuned_hand_schedules_and_reports_a_loss(nqm: dict) -> None:
    table = nqm["tasks"]["nqm"]
    assert table["metric"] == "loss" and not table["higher_is_better"]
    assert set(table["methods"]) == {"fire", "pbt", "pb2", "random", "step", "cosine"}
    for name in ("step", "cosine"):
        hand = table["methods"][name]
        assert hand["peak"] in compare.PEAK_GRID
        # The chosen peak is the best of the grid on the tuning seeds.
        assert hand["tuning"][f"{hand['peak']:.4g}"] == min(hand["tuning"].values())
        assert hand["tuning_worker_steps"] == len(compare.PEAK_GRID) * 3 * 200
    # A loss relative to the start: positive and below the starting 1.0.
    assert all(0.0 < d["values"][0] < 1.0 for d in table["methods"].values())


def test_reported_values_are_the_runs_best_metric() -> None:
    out = compare.run_one(TINY["nqm"], "pbt", seed=3)
    assert out["value"] == -out["metric"] > 0.0
    assert out["schedule"][0][0] == 0 and out["schedule"][-1][1] == 200
    assert out["transfers"] == out["evaluator_steps"] == out["lineage_transfers"] == 0


def test_mann_whitney_is_small_when_fire_is_better() -> None:
    # Complete separation of 3 vs 3: the exact one-sided p-value is 1 / C(6, 3) = 0.05.
    assert fire_better_p([3, 4, 5], [0, 1, 2], higher_is_better=True) == pytest.approx(0.05)
    assert fire_better_p([0, 1, 2], [3, 4, 5], higher_is_better=False) == pytest.approx(0.05)
    assert fire_better_p([0, 1, 2], [3, 4, 5], higher_is_better=True) == pytest.approx(1.0)
    assert fire_better_p([3, 4, 5], [0, 1, 2], higher_is_better=False) == pytest.approx(1.0)


def test_describe_and_median_run() -> None:
    d = describe([4.0, 1.0, 3.0, 2.0])
    assert (d["mean"], d["median"], d["min"], d["max"], d["n"]) == (2.5, 2.5, 1.0, 4.0, 4)
    assert d["std"] == pytest.approx(math.sqrt(5 / 3))
    runs = [{"value": v, "seed": s} for s, v in enumerate([0.3, 0.1, 0.2, 0.4])]
    assert median_run(runs)["seed"] == 2  # the lower median, 0.2


def test_hand_schedules() -> None:
    step = step_decay(0.8, 100)
    assert [step(t) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.8, 0.8, 0.08, 0.08, 0.008, 0.008]
    )
    cos = cosine(0.8, 100)
    assert (cos(0), cos(50)) == pytest.approx((0.8, 0.4))


def test_decision_cost_counts_handled_results() -> None:
    row = decision_cost(PBT(population=4), intervals=2, repeats=1)
    assert row["results"] >= 4 * 2 and row["us_per_result"] > 0


def test_decision_cost_runs_fresh_copies_so_the_smoothing_cache_starts_empty() -> None:
    alg = FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema")
    row = decision_cost(alg, intervals=4, repeats=2)
    assert row["evaluator_starts"] > 0
    # The caller's instance never ran: a repeat cannot be answered from its cache.
    assert (alg._smoother.hits, alg._smoother.misses) == (0, 0)


def test_plot_is_written(tmp_path: Path) -> None:
    runs = {"pbt": [{"value": 1.0, "seed": 0, "schedule": [[0, 30, 1.0], [30, 60, 0.5]]}]}
    path = compare.plot_schedules(
        TINY["deceptive"], runs, tmp_path / "d.png", {"linear target": lambda t: 1 - t / 60}
    )
    assert path.is_file() and path.stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"name": "mnist"}, "mnist"), ({"preset": "huge"}, "preset"),
                         ({"seeds": 0}, "seeds")],
)
def test_bad_arguments_name_the_value(kwargs: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        compare.main(**{"name": "toys", **kwargs})


def test_variant_table_compares_rows_with_the_reference() -> None:
    variants = {
        "sync-inprocess": compare.Variant("sync-inprocess"),
        "async-inprocess": compare.Variant(
            "async-inprocess", mode="async", workers=2, algorithm=FirePBT(population=8)),
    }
    table = compare.compare_variants(TINY["nqm"], variants, [0, 1], processes=1)
    assert set(table["rows"]) == set(variants) and table["reference"] == "sync-inprocess"
    for row in table["rows"].values():
        assert row["n"] == 2 and len(row["exploits"]) == len(row["transfers"]) == 2
    p = table["p_reference_better"]["async-inprocess"]
    q = table["p_better_than_reference"]["async-inprocess"]
    assert 0.0 < p <= 1.0 and 0.0 < q <= 1.0
    assert "async-inprocess" in compare.format_variants(table)
