"""The overhead benchmark's FIRE row runs FIRE on process workers in async mode."""

from __future__ import annotations

from firepbt.bench.overhead import measure


def test_fire_row_runs_evaluators_on_process_workers() -> None:
    r = measure(workers=8, algorithm="fire", population=8, eval_every=1)
    assert r["algorithm"] == "fire" and r["mode"] == "async"
    assert r["evaluations"] >= 1
    assert 0.0 < r["efficiency"] <= 1.0 and r["wall_s"] >= r["ideal_s"]
