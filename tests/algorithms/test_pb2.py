"""Exact unit tests of PB2 (GP-UCB explore) on hand-built snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firepbt.algorithms import algorithm_from_config
from firepbt.algorithms.base import Continue, Exploit, Snapshot, WorkerView
from firepbt.algorithms.pb2 import PB2, numeric_keys, observations, to_unit
from firepbt.errors import ConfigError
from firepbt.space import Choice, Int, LogUniform, Space, Uniform

SPACE = Space(lr=LogUniform(1e-3, 1.0), opt=Choice(("sgd", "adam")))


def member(wid: int, lr: float, curve: tuple, step: int = 20, opt: str = "sgd") -> WorkerView:
    return WorkerView(id=wid, role="member", subpop=1, hparams={"lr": lr, "opt": opt},
                      step=step, checkpoint=100 + wid, curve=curve)


def snapshot(workers: list[WorkerView], ready: list[int], space: Space = SPACE) -> Snapshot:
    # interval 10; curves below have 2 points per interval (eval_every 5)
    return Snapshot(workers={w.id: w for w in workers}, ready=tuple(ready), tick=0,
                    space=space, interval=10, total_steps=100)


def test_to_unit_inverts_from_unit() -> None:
    for dist in (Uniform(-1.0, 3.0), LogUniform(1e-4, 1.0), Int(2, 9), Int(1, 64, log=True)):
        for u in (0.05, 0.3, 0.5, 0.9):
            v = dist.from_unit(u)
            assert dist.from_unit(to_unit(dist, v)) == pytest.approx(v)
    assert to_unit(LogUniform(1e-3, 1.0), 10**-1.5) == pytest.approx(0.5)
    assert numeric_keys(SPACE) == ["lr"]


def test_observations_are_one_row_per_complete_interval() -> None:
    # Member 0: 4 points at steps 5, 10, 15, 20 -> intervals ending at 10 and 20.
    # Member 1: 3 points since its overwrite (steps 10, 15, 20) -> only the one ending at 20.
    workers = [member(0, 1e-3, (0.0, 1.0, 1.5, 3.5)), member(1, 1.0, (2.0, 2.0, 2.25))]
    x, y = observations(snapshot(workers, [0]), 1, ["lr"])
    np.testing.assert_allclose(x, [[0.2, 0.0], [0.1, 0.0], [0.2, 1.0]])
    np.testing.assert_allclose(y, [2.0, 1.0, 0.25])


def test_invalid_points_are_skipped() -> None:
    workers = [member(0, 0.1, (math.nan, 1.0, None, 2.0))]
    x, y = observations(snapshot(workers, [0]), 1, ["lr"])
    assert len(y) == 0  # each interval has only one valid point


def rising_with_lr() -> list[WorkerView]:
    """8 members; a member's improvement per interval grows with log lr."""
    out = []
    for i, lr in enumerate(np.logspace(-3, -0.5, 8)):
        gain = 1.0 + math.log10(lr)  # -2 .. 0.5
        out.append(member(i, float(lr), (i * 0.1, i * 0.1 + gain, i * 0.1 + gain,
                                         i * 0.1 + 2 * gain)))
    return out


def test_ucb_picks_the_high_lr_region_for_the_exploiting_member() -> None:
    workers = rising_with_lr()
    # Fitness = latest value: member 0 (lowest lr) is the worst and exploits.
    for seed in range(5):
        alg = PB2(population=8, kappa=0.0)
        d = alg.decide(snapshot(workers, [0]), None, np.random.default_rng(seed))[0][0]
        assert isinstance(d, Exploit) and d.donor in (6, 7)
        assert d.ops["lr"] == "pb2" and d.new_hparams["opt"] in ("sgd", "adam")
        # kappa 0: the posterior mean's maximum, in the top of the observed range and above
        assert d.new_hparams["lr"] >= 10**-1.2
        assert SPACE.contains(d.new_hparams)


def test_too_little_data_falls_back_to_pbt_explore() -> None:
    workers = [member(0, 0.01, (0.0, 0.5)), member(1, 0.1, (1.0, 2.0))]
    d = PB2(population=2, min_data=4).decide(snapshot(workers, [0]), None,
                                             np.random.default_rng(0))[0][0]
    assert isinstance(d, Exploit) and d.ops["lr"] != "pb2"
    assert isinstance(PB2(population=8).decide(snapshot(rising_with_lr(), [7]), None,
                                               np.random.default_rng(0))[0][0], Continue)


def test_decisions_are_a_pure_function_of_snapshot_and_seed() -> None:
    snap = snapshot(rising_with_lr(), [0])
    a = PB2(population=8).decide(snap, None, np.random.default_rng(4))[0]
    b = PB2(population=8).decide(snap, None, np.random.default_rng(4))[0]
    assert a == b


def test_settings_are_validated_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="kappa=-1"):
        PB2(kappa=-1)
    with pytest.raises(ConfigError, match="max_data=2"):
        PB2(min_data=4, max_data=2)
    alg = PB2(population=6, kappa=2.0, candidates=64, init="iid")
    assert algorithm_from_config(alg.to_config()) == alg
