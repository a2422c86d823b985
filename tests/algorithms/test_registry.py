"""The algorithm registry: adding an algorithm is one file (a registered class) plus tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from firepbt.algorithms import PBT, REGISTRY, algorithm_from_config, register
from firepbt.algorithms.base import Algorithm, Continue, Decision, Role, Snapshot
from firepbt.errors import ConfigError


@dataclass(frozen=True)
class Steady(Algorithm):
    """Never changes anything (an algorithm in a few lines)."""

    name: ClassVar[str] = "steady-test"
    population: int = 2

    def topology(self) -> list[Role]:
        return [Role("member", 1)] * self.population

    def decide(self, snapshot: Snapshot, state: Any,
               rng: np.random.Generator) -> tuple[list[Decision], Any]:
        return [Continue(w) for w in snapshot.ready], state

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "population": self.population}


def test_a_registered_algorithm_is_rebuilt_from_its_stored_config() -> None:
    register(Steady)
    try:
        assert algorithm_from_config(Steady(population=3).to_config()) == Steady(population=3)
        register(Steady)  # registering the same class again is harmless
    finally:
        del REGISTRY[Steady.name]


def test_every_builtin_is_found_by_name_and_round_trips() -> None:
    for cfg in ({"name": "pbt"}, {"name": "random"}, {"name": "pb2"}, {"name": "fire"}):
        alg = algorithm_from_config(cfg)
        assert alg.name == cfg["name"] and algorithm_from_config(alg.to_config()) == alg


def test_unknown_names_and_name_clashes_are_refused_naming_the_value() -> None:
    with pytest.raises(ConfigError, match=r"algorithm 'nope': unknown; expected one of .*pbt"):
        algorithm_from_config({"name": "nope"})

    @dataclass(frozen=True)
    class Impostor(PBT):
        name: ClassVar[str] = "pbt"

    with pytest.raises(ConfigError, match="algorithm name 'pbt': already registered"):
        register(Impostor)
