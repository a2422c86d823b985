"""Scenarios 13 and 14: fuzzed configurations and spaces; perturbation validity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firepbt import PBT, run
from firepbt.controller import RunConfig
from firepbt.errors import ConfigError
from firepbt.space import Int, LogUniform, Space, Uniform, explore

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                st.text(max_size=3))


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@settings(max_examples=300, deadline=None)
@given(steps=ANY, interval=ANY, eval_every=ANY, max_failures=ANY, mode=st.sampled_from(
    ["async", "sync", "both", ""]))
def test_run_settings_are_rejected_iff_invalid_naming_value_and_rule(
    steps: Any, interval: Any, eval_every: Any, max_failures: Any, mode: str
) -> None:
    """#13: every invalid setting rejected with its name and value; no valid one rejected."""
    valid = (_int(steps) and steps >= 1 and _int(interval) and 1 <= interval <= steps
             and (eval_every is None or _int(eval_every) and 1 <= eval_every <= interval)
             and _int(max_failures) and max_failures >= 1 and mode in ("async", "sync"))
    try:
        RunConfig(steps=steps, interval=interval, eval_every=eval_every,
                  max_failures=max_failures, mode=mode)
    except ConfigError as exc:
        assert not valid, f"valid settings rejected: {exc}"
        assert "=" in str(exc) and "must" in str(exc)  # names the key=value and the rule
    else:
        assert valid


@settings(max_examples=300, deadline=None)
@given(low=st.floats(allow_nan=True), high=st.floats(allow_nan=True))
def test_bounds_are_rejected_iff_invalid(low: float, high: float) -> None:
    finite = math.isfinite(low) and math.isfinite(high)
    for cls, valid in ((Uniform, finite and low < high),
                       (LogUniform, finite and 0 < low < high)):
        try:
            cls(low, high)
        except ConfigError as exc:
            assert not valid, f"{cls.__name__}({low}, {high}) rejected: {exc}"
            assert cls.__name__ in str(exc)
        else:
            assert valid


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(-3, 2), initial_h0=st.floats(-1, 2))
def test_invalid_run_is_rejected_before_any_store_or_worker_exists(
    steps: int, initial_h0: float, tmp_path: Path
) -> None:
    store = tmp_path / f"x{steps}_{initial_h0}.db"
    bad_initial = not 0 <= initial_h0 <= 1
    if steps >= 1 and not bad_initial:
        return
    try:
        run("quadratic", algorithm=PBT(population=2), steps=steps, interval=1,
            initial=[{"h0": initial_h0, "h1": 0.0}], store=str(store), executor="process")
    except ConfigError as exc:
        assert "steps=" in str(exc) or "initial[0]" in str(exc)
    else:
        raise AssertionError("invalid run accepted")
    assert not store.exists()  # nothing was created, no worker was started


def test_ten_thousand_explores_stay_in_bounds_and_ints_always_move() -> None:
    """#14: in bounds; ints can always move; log-space perturbation is multiplicative."""
    space = Space(lr=LogUniform(1e-5, 1.0), m=Uniform(0.0, 1.0), n=Int(0, 1), k=Int(1, 64))
    rng = np.random.default_rng(0)
    hp = space.sample(rng)
    moved_n = 0
    for _ in range(10_000):
        new, _ops = explore(space, hp, rng)
        space.validate(new)
        moved_n += new["n"] != hp["n"]
        ratio = new["lr"] / hp["lr"]
        assert ratio > 0  # stays positive: perturbed in log space, never additively below 0
        hp = new
    assert moved_n > 1000  # a two-valued int is never stuck at either end
