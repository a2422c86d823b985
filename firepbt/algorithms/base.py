"""What algorithms see (snapshots) and what they return (decisions).

Algorithms are pure, with explicit state (Optax style): ``init_state(topology, rng) ->
state`` and ``decide(snapshot, state, rng) -> (decisions, state)``. They never touch the store,
files, clocks or the controller. The controller builds the snapshot, calls ``decide``, carries the
decisions out (recording each as a lineage event) and commits the new state in the same store
transaction as the decisions and the random generator.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms.effects import (  # noqa: F401 - re-exported for algorithms
    Annotate,
    Continue,
    Decision,
    Effect,
    GiveUp,
    Overwrite,
    Start,
    Stop,
    json_number,
)
from firepbt.errors import ConfigError
from firepbt.space import ExploreConfig, Space, explore
from firepbt.states import EVALUATOR, MEMBER  # noqa: F401 - re-exported for algorithms


@dataclass(frozen=True)
class WorkerView:
    """A read-only view of one member or evaluator at decision time."""

    id: int
    role: str
    subpop: int
    hparams: Mapping[str, Any]
    step: int
    checkpoint: int | None
    curve: tuple[float | None, ...] = ()  # metric since its weights were last overwritten
    overwrites: int = 0  # bumps whenever its weights are replaced (a version fence)
    status: str = "active"  # active | idle | failed | done
    info: Mapping[str, Any] = field(default_factory=dict)  # algorithm-owned bookkeeping

    def last_metric(self) -> float | None:
        """The newest valid curve point, or None."""
        for v in reversed(self.curve):
            if v is not None and not math.isnan(v):
                return v
        return None


@dataclass(frozen=True)
class Snapshot:
    """The population as the algorithm sees it.

    ``ready`` lists the workers at a ready point now, in the order decisions are applied.
    ``tick`` counts decision rounds (a logical clock for "least recently evaluated").
    """

    workers: Mapping[int, WorkerView]
    ready: tuple[int, ...]
    tick: int
    space: Space
    interval: int
    total_steps: int
    # Optional per-sub-population fitness tables the controller keeps up to date incrementally,
    # so that ranking a large population costs a few vectorised operations, not a Python loop.
    tables: Mapping[int, FitnessTable] | None = None
    # Steps between curve points, when the controller knows it (else read from the curves).
    eval_every: int | None = None

    def table(self, k: int) -> FitnessTable:
        """Latest task fitness of the active members of sub-population ``k``."""
        if self.tables is not None and k in self.tables:
            return self.tables[k]
        members = [w for w in self.subpop(k) if w.status == "active"]
        return FitnessTable.build(
            [w.id for w in members], [fitness_of(w) for w in members]
        )

    def subpop(self, k: int, role: str = MEMBER) -> list[WorkerView]:
        """Workers of sub-population ``k`` with ``role``, ordered by id."""
        return sorted(
            (w for w in self.workers.values() if w.role == role and w.subpop == k),
            key=lambda w: w.id,
        )


@dataclass(frozen=True)
class FitnessTable:
    """Ids (ascending) and fitness values (NaN = invalid) of one sub-population.

    ``steps`` and ``points`` (optional, aligned with ``ids``): each member's step and number of
    curve points, kept by the controller so that ranking at a common step
    (:func:`firepbt.algorithms.pbt.equal_step_table`) reads arrays instead of every view.
    """

    ids: np.ndarray
    values: np.ndarray
    steps: np.ndarray | None = None
    points: np.ndarray | None = None

    @staticmethod
    def build(ids: Sequence[int], fitness: Sequence[float | None]) -> FitnessTable:
        vals = np.array([np.nan if f is None else f for f in fitness], dtype=float)
        return FitnessTable(np.asarray(ids, dtype=np.int64), vals)

    def _keys(self) -> np.ndarray:
        # Invalid fitness ranks below everything, -inf included.
        return np.where(np.isnan(self.values), -np.inf, self.values)

    def position(self, worker: int) -> int:
        """0-based rank of ``worker`` (0 = best); ties broken by id, invalid last."""
        idx = int(np.searchsorted(self.ids, worker))
        keys = self._keys()
        v = keys[idx]
        invalid = np.isnan(self.values)
        if invalid[idx]:
            # Among the invalid ones, order by id.
            return int(np.count_nonzero(~invalid)) + int(np.count_nonzero(invalid[:idx]))
        valid = ~invalid
        # A valid -inf shares its key with the invalid ones, which still rank below it.
        better = np.count_nonzero(valid & (keys > v)) + np.count_nonzero(
            valid[:idx] & (keys[:idx] == v)
        )
        return int(better)

    def top(self, n: int) -> np.ndarray:
        """The ``n`` best ids with a valid fitness, best first."""
        valid = ~np.isnan(self.values)
        n = min(n, int(np.count_nonzero(valid)))
        if n <= 0:
            return self.ids[:0]
        keys = self._keys()
        # O(N): the n-th best value, then everything above it plus ties in id order (only
        # valid ones: a valid -inf shares its key with the invalid).
        cut = np.partition(keys, len(keys) - n)[len(keys) - n]
        above = np.flatnonzero(keys > cut)
        ties = np.flatnonzero((keys == cut) & valid)[: n - len(above)]
        chosen = np.concatenate([above, ties])
        order = np.lexsort((self.ids[chosen], -keys[chosen]))
        return self.ids[chosen[order]]

    def contains(self, worker: int) -> bool:
        idx = int(np.searchsorted(self.ids, worker))
        return idx < len(self.ids) and int(self.ids[idx]) == worker


# --- decisions ----------------------------------------------------------------------------
# The generic effects live in ``effects``; below, the decisions PBT-style algorithms share.


@dataclass(frozen=True)
class Exploit(Decision):
    """Continue from the donor's immutable checkpoint with explored hyperparameters."""

    donor: int
    donor_checkpoint: int
    new_hparams: Mapping[str, Any]
    ops: Mapping[str, str]
    fitness: float | None = None
    donor_fitness: float | None = None

    def effects(self) -> Sequence[Effect]:
        info = {"ops": dict(self.ops), "fitness": json_number(self.fitness),
                "donor_fitness": json_number(self.donor_fitness)}
        return (Overwrite(self.worker, self.donor_checkpoint, self.donor, "exploit",
                          self.new_hparams, info),)


@dataclass(frozen=True)
class Replace(Decision):
    """Restart failed member ``worker`` from ``donor``'s checkpoint with explored hparams."""

    donor: int
    donor_checkpoint: int
    new_hparams: Mapping[str, Any]
    ops: Mapping[str, str]
    error: str

    def effects(self) -> Sequence[Effect]:
        return (Overwrite(self.worker, self.donor_checkpoint, self.donor, "replace",
                          self.new_hparams, {"ops": dict(self.ops), "error": self.error}),)


# --- algorithm base ------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """One worker the algorithm wants: its role and sub-population."""

    role: str
    subpop: int


class Algorithm(ABC):
    """A population-training algorithm: topology plus a pure ``decide`` over explicit state.

    The state is whatever ``init_state`` returns (not ``init``: that name is the starting-point
    setting of every stored algorithm config); ``save_state`` turns it into JSON (committed
    with every decision) and ``load_state`` back (on resume). The default state is ``None``.
    """

    name: ClassVar[str]

    @abstractmethod
    def topology(self) -> list[Role]:
        """The workers to create, in id order."""

    def init_state(self, topology: Sequence[Role], rng: np.random.Generator) -> Any:
        """The state before the first decision (default: none).

        Called once when the experiment is created, after the starting hyperparameters are
        drawn; a resumed run loads the committed state instead.
        """
        return None

    @abstractmethod
    def decide(
        self, snapshot: Snapshot, state: Any, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        """Decisions for the ready workers (and idle evaluators), and the new state."""

    def save_state(self, state: Any) -> Any:
        """The state as JSON (default: the state itself, which must then be JSON)."""
        return state

    def load_state(self, data: Any) -> Any:
        """The inverse of ``save_state``."""
        return data

    def replace(
        self, snapshot: Snapshot, state: Any, worker: int, error: str, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        """Decisions for member ``worker`` that failed persistently (its last error: ``error``).

        Default: restart it from the peer of its sub-population with the best latest task
        fitness, with that peer's hyperparameters explored (a ``Replace``); with no such peer it
        stays failed (``GiveUp``). Algorithms that rank a sub-population by something other
        than the task metric override this.
        """
        me = snapshot.workers[worker]
        peers = [
            p for p in snapshot.subpop(me.subpop)
            if p.id != worker and p.checkpoint is not None and p.status in ("active", "done")
            and p.last_metric() is not None
        ]
        if not peers:
            return [GiveUp(worker, error)], state
        donor = max(peers, key=lambda p: (p.last_metric(), -p.id))
        new_hp, ops = explore(snapshot.space, donor.hparams, rng, self.explore_config())
        assert donor.checkpoint is not None
        return [Replace(worker, donor.id, donor.checkpoint, new_hp, ops, error)], state

    def retire(self, worker: WorkerView, reason: str) -> list[Decision]:
        """Decisions that stop a worker that is not a member, at the run's end (``reason``
        "end": no member trains any more, or it reached the last step) or after it failed
        persistently ("failed"). Default: it stops and goes idle (event ``stop``)."""
        return [Stop(worker.id, "stop", {"reason": reason})]

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able settings; ``algorithm_from_config`` rebuilds an equal algorithm."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Algorithm:
        """Rebuild from ``to_config()`` without its ``name`` (explore already converted)."""
        return cls(**cfg)

    def explore_config(self) -> ExploreConfig:
        """The explore settings (algorithms with explore override)."""
        return ExploreConfig()

    def validate(self, interval: int, eval_every: int, total_steps: int) -> None:  # noqa: B027
        """Check settings that depend on the run (raise ConfigError); default: nothing."""

    def initial_hparams(self, space: Space, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Starting hyperparameters of the members of :meth:`topology`, in id order.

        With the algorithm's ``init`` setting (default ``"lhs"``; Decision, fire-pbt.md
        section 12) each sub-population gets one scrambled Latin hypercube over ``space``
        (:meth:`Space.sample_lhs`), drawn in sub-population order; ``"iid"`` draws every
        member independently from the prior (:meth:`Space.sample`, in id order).
        """
        members = [r for r in self.topology() if r.role == MEMBER]
        if getattr(self, "init", "lhs") == "iid":
            return [space.sample(rng) for _ in members]
        sizes: dict[int, int] = {}
        for r in members:
            sizes[r.subpop] = sizes.get(r.subpop, 0) + 1
        designs = {k: iter(space.sample_lhs(sizes[k], rng)) for k in sorted(sizes)}
        return [next(designs[r.subpop]) for r in members]


INITS = ("lhs", "iid")


def require_init(init: Any) -> None:
    """Validate an algorithm's ``init`` setting."""
    require(init in INITS, f"init={init!r}: must be one of {', '.join(INITS)}")


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``ok`` - keeps validation one line per rule."""
    if not ok:
        raise ConfigError(message)


def fitness_of(w: WorkerView, window: int = 1) -> float | None:
    """Task fitness: mean of the last ``window`` valid curve points; None when invalid."""
    vals = [v for v in w.curve[-window:] if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return float(np.mean(vals))
