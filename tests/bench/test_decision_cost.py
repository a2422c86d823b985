"""FIRE's controller cost per handled result (``firepbt bench decision-cost``)."""

from __future__ import annotations

import numpy as np

from firepbt.algorithms import PBT
from firepbt.algorithms.fire import FirePBT
from firepbt.bench.decision_cost import decision_cost


def test_decision_cost_counts_handled_results() -> None:
    row = decision_cost(PBT(population=4), intervals=2, repeats=1)
    assert row["results"] >= 4 * 2 and row["us_per_result"] > 0
    assert row["cpu_us_per_result"] > 0


def test_repeats_cannot_share_the_smoothing_cache() -> None:
    alg = FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema")
    one = decision_cost(alg, intervals=4, repeats=1)
    two = decision_cost(alg, intervals=4, repeats=2)
    assert one["evaluator_starts"] == two["evaluator_starts"] > 0
    # The memos live in each controller's FireState (init_state), never on the algorithm.
    assert not hasattr(alg, "_smoother")
    assert alg.init_state(alg.topology(), np.random.default_rng(0)).smoother.misses == 0
