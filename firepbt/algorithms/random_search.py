"""Random search: the same members and compute as PBT, hyperparameters fixed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms import register
from firepbt.algorithms.base import (
    MEMBER,
    Algorithm,
    Continue,
    Decision,
    Role,
    Snapshot,
    fitness_of,
    require,
    require_init,
)


@register
@dataclass(frozen=True)
class RandomSearch(Algorithm):
    """Each member keeps the hyperparameters sampled at start; nothing is ever copied.

    ``init``: "lhs" (default) draws the population as one scrambled Latin hypercube, "iid"
    draws each member from the prior (``Algorithm.initial_hparams``).
    """

    name: ClassVar[str] = "random"
    population: int = 8
    init: str = "lhs"

    def __post_init__(self) -> None:
        require_init(self.init)
        require(
            isinstance(self.population, int) and self.population >= 1,
            f"population={self.population!r}: must be an integer >= 1",
        )

    def topology(self) -> list[Role]:
        return [Role(MEMBER, 1)] * self.population

    def decide(
        self, snapshot: Snapshot, state: Any, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        return [Continue(w, fitness_of(snapshot.workers[w])) for w in snapshot.ready], state

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "population": self.population, "init": self.init}
