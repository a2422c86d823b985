"""FIRE's controller cost per handled result (``firepbt bench decision-cost``)."""

from __future__ import annotations

from firepbt.algorithms import PBT
from firepbt.algorithms.fire import FirePBT
from firepbt.bench.decision_cost import decision_cost


def test_decision_cost_counts_handled_results() -> None:
    row = decision_cost(PBT(population=4), intervals=2, repeats=1)
    assert row["results"] >= 4 * 2 and row["us_per_result"] > 0


def test_decision_cost_runs_fresh_copies_so_the_smoothing_cache_starts_empty() -> None:
    alg = FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema")
    row = decision_cost(alg, intervals=4, repeats=2)
    assert row["evaluator_starts"] > 0
    # The caller's instance never ran: a repeat cannot be answered from its cache.
    assert (alg._smoother.hits, alg._smoother.misses) == (0, 0)
