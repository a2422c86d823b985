"""Population Based Training (Jaderberg et al. 2017) as pure decision logic."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms import register
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
    require_init,
)
from firepbt.space import ExploreConfig, explore

EXPLOIT_RULES = ("truncation", "tournament", "ttest")
RANK_AT = ("equal_step", "latest")


@register
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
        rank_at: "equal_step" (default; Decision, fire-pbt.md section 12 and docs/design.md)
            ranks the truncation and tournament rules on every member's task fitness at one
            common step, read from the curves: the ready member's step, or the step of the
            peer furthest behind when a peer lags by at most one interval (asynchronous
            runs with fewer workers than members are staggered by up to an interval; ranked
            on their latest values, a member that has just trained looks better than peers
            that have not yet trained, and exploits almost never happen). Peers lagging by
            more than one interval are compared on their latest values. When every ranked
            member is at the ready member's step (synchronous rounds) it is exactly "latest":
            each member's newest fitness.
        init: "lhs" (default; Decision, fire-pbt.md section 12) draws the starting
            hyperparameters of the whole population as one scrambled Latin hypercube, "iid"
            draws each member from the prior (``Algorithm.initial_hparams``). Inside FIRE the
            FIRE setting is used.
    """

    name: ClassVar[str] = "pbt"
    population: int = 8
    exploit: str = "truncation"
    quantile: float = 0.25
    ttest_p: float = 0.05
    fitness_window: int = 1
    burn_in: int = 0
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    rank_at: str = "equal_step"
    init: str = "lhs"

    def __post_init__(self) -> None:
        require_init(self.init)
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
        require(
            self.rank_at in RANK_AT,
            f"rank_at={self.rank_at!r}: must be one of {', '.join(RANK_AT)}",
        )
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

    def decide(
        self, snapshot: Snapshot, state: Any, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        decisions = [
            self.decide_member(snapshot, snapshot.workers[wid], rng, k=1) for wid in snapshot.ready
        ]
        return decisions, state

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
        n_all = len(table.ids)
        if fitness is None and self.rank_at == "equal_step" and self.exploit != "ttest":
            table = equal_step_table(snapshot, table, member, self.fitness_window)
        n = len(table.ids)
        if n < 2 or not table.contains(member.id):
            return None
        if self.exploit == "truncation":
            n_q = min(max(1, math.floor(self.quantile * n)), n // 2)
            # Members left out of an equal-step table (no point yet) are unknown: the member
            # must be in the bottom quantile by its rank *fraction* among the ranked ones,
            # measured against the whole sub-population's cut. With every member ranked this
            # is the plain rule; early in an asynchronous run, when only a few members have
            # reported, it stops the worse of two from always copying the better.
            n_q_all = min(max(1, math.floor(self.quantile * n_all)), n_all // 2)
            position = table.position(member.id)
            if position < n - n_q or position * n_all < (n_all - n_q_all) * n:
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
        from scipy import stats  # here: importing the algorithms stays light for readers

        p = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
        return bool(p < self.ttest_p)


def infer_eval_every(snapshot: Snapshot, hint: WorkerView | None = None) -> int | None:
    """Steps between curve points: the snapshot's ``eval_every``, else read from the curves
    (None: no curve to read it from).

    A curve holds the points since the worker's weights were last overwritten, so
    ``(step - base) / len(curve)`` is the spacing, where ``base`` is the step of that overwrite:
    an evaluator's ``start_step``, 0 for a member never overwritten. For an overwritten member
    ``step / len(curve)`` is larger than the spacing, so the minimum over the workers is exact
    as soon as one member was never overwritten or one evaluator has points. A ``hint`` member
    never overwritten (``overwrites == 0``) gives the exact spacing at once.
    """
    if snapshot.eval_every is not None:  # the controller's setting: no pass over the workers
        return snapshot.eval_every
    if hint is not None and hint.overwrites == 0 and hint.curve and hint.step > 0:
        return max(1, round(hint.step / len(hint.curve)))
    best: float | None = None
    for w in snapshot.workers.values():
        n = len(w.curve)
        if n == 0 or w.step <= 0:
            continue
        base = int(w.info.get("start_step", 0)) if w.role != MEMBER else 0
        if w.step - base <= 0:
            continue
        spacing = (w.step - base) / n
        if best is None or spacing < best:
            best = spacing
    return None if best is None else max(1, round(best))


def fitness_at(w: WorkerView, step: int, eval_every: int, window: int = 1) -> float | None:
    """Task fitness of ``w`` at ``step`` <= ``w.step``: the mean of the ``window`` valid curve
    points ending at the newest point recorded at or before ``step``.

    A curve that does not reach back to ``step`` (the weights were overwritten after it) gives
    its oldest points. None when no valid point remains.
    """
    n = len(w.curve)
    if n == 0:
        return None
    back = -(-(w.step - step) // eval_every) if step < w.step else 0  # ceil
    end = max(n - back, 1)
    if window == 1:
        v = w.curve[end - 1]
        return None if v is None or math.isnan(v) else float(v)
    vals = [v for v in w.curve[max(0, end - window) : end] if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return float(np.mean(vals))


def equal_step_table(
    snapshot: Snapshot, table: FitnessTable, member: WorkerView, window: int = 1
) -> FitnessTable:
    """``table`` re-read at one common step for ``member``'s decision (``PBT.rank_at``).

    The common step T is ``member.step``, lowered to the step of the ranked peer furthest
    behind among those at most one interval behind. Every ranked worker whose step differs
    from T gets its fitness at T from its curve (:func:`fitness_at`); peers more than one
    interval behind keep their latest value. Members with no curve point yet (their weights
    were just overwritten and they are training) are left out. When none is left out and every
    valid entry is already at ``member.step`` the table is returned unchanged (synchronous
    rounds: no work, no change).
    """
    views = snapshot.workers
    steps, points = table.steps, table.points
    if steps is None or points is None:  # a table built without them
        ranked = [views[int(i)] for i in table.ids]
        steps = np.array([w.step for w in ranked], dtype=np.int64)
        points = np.array([len(w.curve) for w in ranked], dtype=np.int64)
    # A member whose weights were just overwritten has no point yet: it has no value at any
    # step, so it takes no part (ranked invalid, it would fill the bottom places).
    pending = (points == 0) & (table.ids != member.id)
    if pending.any():
        keep = ~pending
        steps, points = steps[keep], points[keep]
        table = FitnessTable(table.ids[keep], table.values[keep], steps, points)
    valid = ~np.isnan(table.values)
    s = member.step
    if not valid.any() or bool((steps[valid] == s).all()):
        return table
    near = valid & (steps >= s - snapshot.interval)
    t = min(s, int(steps[near].min())) if near.any() else s
    e = infer_eval_every(snapshot, member)
    if e is None:
        return table
    values = table.values.copy()
    for j in np.flatnonzero(near & (steps != t)):
        w = views[int(table.ids[j])]
        if window == 1:  # inline fitness_at: the newest point at or before t
            back = -(-(w.step - t) // e) if t < w.step else 0
            v = w.curve[max(len(w.curve) - back, 1) - 1]
            values[j] = np.nan if v is None or math.isnan(v) else v
        else:
            f = fitness_at(w, t, e, window)
            values[j] = np.nan if f is None else f
    return FitnessTable(table.ids, values, steps, points)


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
