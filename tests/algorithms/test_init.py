"""Initial hyperparameters: one Latin hypercube per sub-population, or i.i.d. draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firepbt.algorithms import PBT, RandomSearch, algorithm_from_config
from firepbt.algorithms.fire import FirePBT
from firepbt.errors import ConfigError
from firepbt.space import LogUniform, Space

SPACE = Space(lr=LogUniform(1e-3, 1.0), c=1.0)


def strata(points: list[dict], n: int) -> list[int]:
    return sorted(int(n * math.log10(p["lr"] * 1e3) / 3) for p in points)


@pytest.mark.parametrize("seed", range(5))
def test_fire_draws_one_hypercube_per_subpopulation(seed: int) -> None:
    alg = FirePBT(population=22)  # 8 + 8 members, 6 evaluators
    pts = alg.initial_hparams(SPACE, np.random.default_rng(seed))
    assert len(pts) == 16
    assert strata(pts[:8], 8) == list(range(8))  # P1 covers every eighth of log lr
    assert strata(pts[8:], 8) == list(range(8))  # and so does P2
    # So P2 always holds one lr in the top eighth, [10^-0.375, 1] ~ [0.42, 1].
    assert max(p["lr"] for p in pts[8:]) >= 10**-0.375


@pytest.mark.parametrize("alg", [PBT(population=6), RandomSearch(population=6)])
def test_pbt_and_random_search_draw_one_hypercube(alg: PBT | RandomSearch) -> None:
    pts = alg.initial_hparams(SPACE, np.random.default_rng(0))
    assert strata(pts, 6) == list(range(6)) and all(p["c"] == 1.0 for p in pts)


def test_iid_draws_members_from_the_prior_in_id_order() -> None:
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    pts = PBT(population=5, init="iid").initial_hparams(SPACE, rng_a)
    assert pts == [SPACE.sample(rng_b) for _ in range(5)]
    fire = FirePBT(population=11, init="iid")
    assert len(fire.initial_hparams(SPACE, np.random.default_rng(0))) == sum(fire.sizes)


def test_init_is_validated_and_round_trips() -> None:
    for make in (PBT, RandomSearch, FirePBT):
        with pytest.raises(ConfigError, match="init='grid'"):
            make(init="grid")
        alg = make(init="iid")
        assert algorithm_from_config(alg.to_config()) == alg
