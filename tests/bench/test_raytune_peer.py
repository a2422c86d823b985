"""The overhead bench's Ray Tune PBT peer runs (a tiny workload), when Ray Tune is here."""

from __future__ import annotations

import os

import pytest

# Ray reads these once, at import (as tests/executors/conftest.py sets them for its tests).
for _key, _value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_key, _value)

from firepbt.bench.raytune_peer import available  # noqa: E402 - after Ray's settings

WHY = available()


@pytest.mark.skipif(WHY is not None, reason=f"Ray Tune peer not installed: {WHY}")
def test_ray_tune_pbt_runs_the_sleep_workload() -> None:
    from firepbt.bench.raytune_peer import measure_raytune

    r = measure_raytune(2, 20, 10, 0.01, budget_s=120)
    assert r["finished"] and r["trial_errors"] == 0, r
    assert r["ideal_s"] == 0.2 and r["wall_s"] >= r["ideal_s"]
    assert 0.0 < r["efficiency"] <= 1.0


def test_without_ray_tune_the_reason_names_the_extra() -> None:
    if WHY is None:
        pytest.skip("Ray Tune is installed here")
    assert "pip install 'firepbt[raytune]'" in WHY
