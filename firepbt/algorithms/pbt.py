"""Population Based Training (Jaderberg et al. 2017) as pure decision logic."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from firepbt.algorithms.base import (
    MEMBER,
    Algorithm,
    Continue,
    Decision,
    Exploit,
    FitnessTable,
    Role,
    Snapshot,
    WorkerView,
    fitness_of,
    require,
)
from firepbt.space import ExploreConfig, explore

EXPLOIT_RULES = ("truncation", "tournament", "ttest")


@dataclass(frozen=True)
class PBT(Algorithm):
    """Greedy PBT: exploit a better member, explore its hyperparameters.

    Args:
        population: number of members.
        exploit: "truncation" (bottom ``quantile`` copies a random member of the top
            ``quantile``), "tournament" (copy one random member if it is better) or "ttest"
            (copy one random member if its recent values are better by a one-sided Welch t-test).
        quantile: truncation fraction q in [0, 0.5]; 0 disables exploit.
        ttest_p: significance level of the t-test rule.
        fitness_window: fitness = mean of the last this many curve points (t-test: the sample).
        burn_in: no exploit before a member has trained this many steps.
        explore: explore settings (resample probability, perturbation factors, ...).
    """

    name: ClassVar[str] = "pbt"
    population: int = 8
    exploit: str = "truncation"
    quantile: float = 0.25
    ttest_p: float = 0.05
    fitness_window: int = 1
    burn_in: int = 0
    explore: ExploreConfig = field(default_factory=ExploreConfig)

    def __post_init__(self) -> None:
        require(
            isinstance(self.population, int) and self.population >= 1,
            f"population={self.population!r}: must be an integer >= 1",
        )
        require(
            self.exploit in EXPLOIT_RULES,
            f"exploit={self.exploit!r}: must be one of {', '.join(EXPLOIT_RULES)}",
        )
        require(
            0.0 <= self.quantile <= 0.5, f"quantile={self.quantile!r}: must lie in [0, 0.5]"
        )
        require(0.0 < self.ttest_p < 1.0, f"ttest_p={self.ttest_p!r}: must lie in (0, 1)")
        require(
            self.fitness_window >= 1, f"fitness_window={self.fitness_window!r}: must be >= 1"
        )
        require(self.burn_in >= 0, f"burn_in={self.burn_in!r}: must be >= 0")
        if self.exploit == "ttest":
            require(
                self.fitness_window >= 2,
                f"fitness_window={self.fitness_window!r}: the ttest rule needs >= 2 points",
            )

    def topology(self) -> list[Role]:
        return [Role(MEMBER, 1)] * self.population

    def to_config(self) -> dict[str, Any]:
        cfg = asdict(self)
        cfg["explore"] = explore_to_config(self.explore)
        return {"name": self.name, **cfg}

    def explore_config(self) -> ExploreConfig:
        return self.explore

    def decide(self, snapshot: Snapshot, rng: np.random.Generator) -> list[Decision]:
        return [
            self.decide_member(snapshot, snapshot.workers[wid], rng, k=1) for wid in snapshot.ready
        ]

    def decide_member(
        self,
        snapshot: Snapshot,
        member: WorkerView,
        rng: np.random.Generator,
        k: int,
        fitness: dict[int, float | None] | None = None,
    ) -> Decision:
        """One member's exploit/explore decision inside sub-population ``k``.

        ``fitness`` overrides the task fitness (FIRE's parent sub-populations pass theirs).
        """
        own = self._fitness(member) if fitness is None else fitness.get(member.id)
        if member.step < self.burn_in or self.quantile == 0.0 and self.exploit == "truncation":
            return Continue(member.id, own)
        donor_id = self._choose_donor(snapshot, member, rng, k, fitness)
        if donor_id is None:
            return Continue(member.id, own)
        donor = snapshot.workers[donor_id]
        assert donor.checkpoint is not None
        new_hparams, ops = explore(snapshot.space, donor.hparams, rng, self.explore)
        donor_fit = self._fitness(donor) if fitness is None else fitness.get(donor_id)
        return Exploit(member.id, donor_id, donor.checkpoint, new_hparams, ops, own, donor_fit)

    def _fitness(self, w: WorkerView) -> float | None:
        return fitness_of(w, self.fitness_window)

    def _choose_donor(
        self,
        snapshot: Snapshot,
        member: WorkerView,
        rng: np.random.Generator,
        k: int,
        fitness: dict[int, float | None] | None,
    ) -> int | None:
        if fitness is None and self.fitness_window == 1:
            table = snapshot.table(k)
        else:
            peers = [w for w in snapshot.subpop(k) if w.status == "active"]
            fit = fitness if fitness is not None else {w.id: self._fitness(w) for w in peers}
            ids = [w.id for w in peers if w.id in fit]
            table = FitnessTable.build(ids, [fit[i] for i in ids])
        n = len(table.ids)
        if n < 2 or not table.contains(member.id):
            return None
        if self.exploit == "truncation":
            n_q = min(max(1, math.floor(self.quantile * n)), n // 2)
            if table.position(member.id) < n - n_q:
                return None
            # Members with a valid fitness have finished a segment, so each has a checkpoint.
            top = table.top(n_q)
            if len(top) == 0 or member.id in top:
                return None
            donors = [int(i) for i in top if _can_donate(snapshot, int(i))]
            if not donors:
                return None
            return donors[int(rng.integers(len(donors)))]
        # tournament and ttest: one random peer
        others = [int(i) for i in table.ids if i != member.id]
        rival = others[int(rng.integers(len(others)))]
        rival_view = snapshot.workers[rival]
        if not _can_donate(snapshot, rival):
            return None
        idx = {int(i): j for j, i in enumerate(table.ids)}
        mine, theirs = table.values[idx[member.id]], table.values[idx[rival]]
        if math.isnan(theirs):
            return None
        if self.exploit == "tournament":
            return rival if (math.isnan(mine) or theirs > mine) else None
        return rival if self._ttest_better(rival_view, member) else None

    def _ttest_better(self, rival: WorkerView, member: WorkerView) -> bool:
        def sample(w: WorkerView) -> list[float]:
            recent = w.curve[-self.fitness_window :]
            return [v for v in recent if v is not None and not math.isnan(v)]

        a, b = sample(rival), sample(member)
        if len(a) < 2:
            return False
        if len(b) < 2:
            return True  # the member has no valid recent values: any valid rival is better
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            return a[0] > b[0]
        p = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
        return bool(p < self.ttest_p)


def _can_donate(snapshot: Snapshot, worker: int) -> bool:
    """Whether ``worker``'s checkpoint can be copied: it exists and has steps left to train.

    A member at its last ready point that copied a finished donor would end holding weights
    it never trained, reported with explored hyperparameters that were never used (fire-pbt.md
    section 12: the answer's hyperparameters are those its last segment trained with).
    """
    view = snapshot.workers[worker]
    return view.checkpoint is not None and view.step < snapshot.total_steps


def explore_to_config(cfg: ExploreConfig) -> dict[str, Any]:
    """ExploreConfig as JSON (a custom function cannot be stored: it is refused)."""
    d = asdict(cfg)
    if d.get("custom") is not None:
        d["custom"] = f"{cfg.custom.__module__}:{cfg.custom.__qualname__}"  # type: ignore[union-attr]
    d["ray_factors"] = list(d["ray_factors"])
    return d
