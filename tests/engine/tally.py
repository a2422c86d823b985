"""A toy algorithm with persisted state, in one file: what adding an algorithm takes.

``Tally`` never changes weights. Its state counts decision rounds and how often each member
was ready, and every decision annotates the member with its count, so a state that restarted
on resume would show in the workers' annotations and in the final state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms import register
from firepbt.algorithms.base import (
    MEMBER,
    Algorithm,
    Annotate,
    Continue,
    Decision,
    Role,
    Snapshot,
)


@register
@dataclass(frozen=True)
class Tally(Algorithm):
    name: ClassVar[str] = "tally"
    population: int = 3

    def topology(self) -> list[Role]:
        return [Role(MEMBER, 1)] * self.population

    def init_state(self, topology: Any, rng: np.random.Generator) -> dict[str, Any]:
        return {"rounds": 0, "ready": {}}

    def decide(self, snapshot: Snapshot, state: dict[str, Any],
               rng: np.random.Generator) -> tuple[list[Decision], dict[str, Any]]:
        ready = dict(state["ready"])  # never mutate the state passed in (Optax style)
        decisions: list[Decision] = []
        for wid in snapshot.ready:
            ready[str(wid)] = ready.get(str(wid), 0) + 1  # JSON keys are strings
            decisions += [Annotate(wid, {"tally": ready[str(wid)]}), Continue(wid)]
        return decisions, {"rounds": state["rounds"] + 1, "ready": ready}

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "population": self.population}
