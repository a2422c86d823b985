"""FIRE PBT (Dalibard & Jaderberg 2021) as pure decision logic (spec ``fire-pbt.md``).

Members are split into sub-populations P1..Pn that each run PBT inside themselves: P1 ranks by
the task metric, Pk (k >= 2) by the FIRE fitness measured by evaluators. An evaluator trains the
weights of a parent in Pk with the frozen hyperparameters of the best member of P(k-1) and, when
its learning curve beats that child's curve by a sign test, the child takes its weights.

Within one ``decide`` call the steps run in a fixed order, so that a seeded synchronous run is
reproducible: judge ready evaluators, exploit/explore ready members, stop evaluators whose
parent or child was overwritten, assign free evaluators.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, cast

import numpy as np

from firepbt.algorithms import curves, register
from firepbt.algorithms.base import (
    EVALUATOR,
    MEMBER,
    Algorithm,
    Annotate,
    Continue,
    Decision,
    Effect,
    Exploit,
    Overwrite,
    Replace,
    Role,
    Snapshot,
    Start,
    Stop,
    WorkerView,
    fitness_of,
    json_number,
    require,
    require_init,
)
from firepbt.algorithms.pbt import PBT
from firepbt.space import ExploreConfig, explore
from firepbt.states import ACTIVE, IDLE

SMOOTHERS = ("gp", "ema")
FITNESS_SCORES = ("improvement", "time_to_climb")
TRANSFER_TO = ("child", "worst")
PARENT_ORDERS = ("least_recent", "fittest")
# Default split of the worker budget (spec section 3): evaluators take ~28 %, the members
# share the rest evenly (8 + 8 + 6 for 22 workers).
EVALUATOR_SHARE = 0.28
# Evaluator record key: its child was drawn at random because P(k-1) had no fitness yet.
RANDOM_CHILD = "random_child"


# --- FIRE's bookkeeping: typed records kept in the workers' annotations ---------------------


@dataclass(frozen=True)
class EvaluatorRecord:
    """What an evaluator evaluates: ``parent``'s weights with ``child``'s hyperparameters.

    ``*_overwrites`` are the parent's and child's weight versions when it started (the fence
    of stop 3); ``start_step`` the step its curve begins at; ``started_tick`` the decision
    round it started in; ``random_child``: the child was drawn at random (P(k-1) had no
    fitness yet), so that later level-k evaluators share it. Stored as the evaluator's
    annotations (JSON, the keys below) and written into its ``stop_evaluator`` events.
    """

    parent: int
    child: int
    parent_overwrites: int
    child_overwrites: int
    start_step: int
    started_tick: int
    random_child: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {RANDOM_CHILD: True} if self.random_child else {}
        out.update(parent=self.parent, child=self.child,
                   parent_overwrites=self.parent_overwrites,
                   child_overwrites=self.child_overwrites, start_step=self.start_step,
                   started_tick=self.started_tick)
        return out

    @staticmethod
    def from_json(info: Mapping[str, Any]) -> EvaluatorRecord:
        return EvaluatorRecord(
            int(info["parent"]), int(info["child"]), int(info["parent_overwrites"]),
            int(info["child_overwrites"]), int(info["start_step"]), int(info["started_tick"]),
            info.get(RANDOM_CHILD) is True,
        )

    @staticmethod
    def of(w: WorkerView) -> EvaluatorRecord:
        return EvaluatorRecord.from_json(w.info)


@dataclass(frozen=True)
class MemberRecord:
    """FIRE's view of a member of P2..Pn: its FIRE fitness (None: none, or stale since its
    weights changed) and the decision round it was last chosen as a parent (-1: never)."""

    fire_fitness: float | None = None
    last_evaluated: int = -1

    @staticmethod
    def from_json(info: Mapping[str, Any]) -> MemberRecord:
        fitness = info.get("fire_fitness")
        return MemberRecord(None if fitness is None else float(fitness),
                            int(info.get("last_evaluated", -1)))

    @staticmethod
    def of(w: WorkerView) -> MemberRecord:
        return MemberRecord.from_json(w.info)

    @staticmethod
    def fitness_json(value: float | None) -> dict[str, Any]:
        """The annotation that sets a member's FIRE fitness."""
        return {"fire_fitness": json_number(value)}

    @staticmethod
    def evaluated_json(tick: int) -> dict[str, Any]:
        """The annotation that records a member was chosen as a parent in round ``tick``."""
        return {"last_evaluated": tick}


# --- FIRE's decisions: each names the generic effects that carry it out ----------------------


@dataclass(frozen=True)
class StartEvaluator(Decision):
    """Evaluator ``worker`` trains ``parent``'s weights with ``child``'s hparams (frozen)."""

    parent: int
    parent_checkpoint: int
    child: int
    hparams: Mapping[str, Any]
    record: EvaluatorRecord
    subpop: int

    def effects(self) -> Sequence[Effect]:
        return (
            Start(self.worker, self.parent_checkpoint, self.parent, self.hparams, self.subpop,
                  "start_evaluator", self.record.to_json(), {"child": self.child}),
            Annotate(self.parent, MemberRecord.evaluated_json(self.record.started_tick)),
        )


@dataclass(frozen=True)
class StopEvaluator(Decision):
    """Free an evaluator.

    ``reason``: no_overlap | p_value | overwritten | superseded | success | end | failed.
    """

    reason: str
    p_value: float | None = None
    delta: float | None = None

    def effects(self) -> Sequence[Effect]:
        info = {"reason": self.reason, "p_value": json_number(self.p_value),
                "delta": json_number(self.delta)}
        return (Stop(self.worker, "stop_evaluator", info),)


@dataclass(frozen=True)
class Transfer(Decision):
    """FIRE success: ``child`` takes the evaluator's weights and curve, keeps its hparams.

    ``worker`` is the evaluator; it stops after the transfer.
    """

    parent: int
    child: int
    checkpoint: int
    p_value: float
    delta: float
    # transfer_to="worst": the member judged against (``child`` is then the overwritten
    # member, which also takes the evaluator's hyperparameters).
    compared: int | None = None
    hparams: Mapping[str, Any] | None = None

    def effects(self) -> Sequence[Effect]:
        info: dict[str, Any] = {"evaluator": self.worker, "p_value": self.p_value,
                                "delta": self.delta}
        if self.compared is not None:
            info["compared"] = self.compared
        return (
            Overwrite(self.child, self.checkpoint, self.parent, "transfer", self.hparams, info,
                      curve_from=self.worker),
            *StopEvaluator(self.worker, "success", self.p_value, self.delta).effects(),
        )


@dataclass(frozen=True)
class SetFitness(Decision):
    """Record the FIRE fitness of a member of P2..Pn (None clears it)."""

    value: float | None
    settles: ClassVar[bool] = False

    def effects(self) -> Sequence[Effect]:
        return (Annotate(self.worker, MemberRecord.fitness_json(self.value)),)


@dataclass
class FireState:
    """FIRE's state between decisions: memos of smoothed curves, pair scores and evaluator
    records.

    Pure caches (an evaluator's curve grows by a few points per event while FIRE re-scores all
    of a sub-population's curves, so most look-ups hit): they are not saved, and a resumed run
    starts them empty (``FirePBT.load_state``). FIRE's bookkeeping of who evaluates whom lives
    in the workers' annotations (:class:`EvaluatorRecord`, :class:`MemberRecord`).
    """

    smoother: curves.CachedSmoother
    pairs: curves.PairMemo
    # evaluator -> (the annotation it was parsed from, its record); see ``_Round.record``
    records: dict[int, tuple[Mapping[str, Any], EvaluatorRecord]] = field(default_factory=dict)


@register
@dataclass(frozen=True)
class FirePBT(Algorithm):
    """FIRE PBT: sub-populations linked by evaluators that measure improvement rates.

    Args:
        population: total worker budget, members plus evaluators. With neither
            ``subpop_sizes`` nor ``evaluators`` given it is split as: evaluators
            ``round(0.28 W)``, the rest shared evenly by the ``n_subpops`` sub-populations
            (lower-numbered ones take the remainder).
        subpop_sizes: explicit member counts |P1|..|Pn|; n becomes ``len(subpop_sizes)``.
        evaluators: explicit evaluator count. When only one of ``subpop_sizes`` and
            ``evaluators`` is given, the other gets the rest of ``population``; when both are
            given they must add up to ``population``.
        n_subpops: n, used by the default split.
        pbt: exploit/explore settings used inside every sub-population (a dict from
            ``to_config`` is accepted).
        p_stat: significance level of the sign test.
        max_eval_intervals: an evaluator's budget, in ready intervals (>= 1).
        warmup_intervals: a parent can be evaluated once it has trained this many intervals.
        smoother: ``"gp"`` (Gaussian process) or ``"ema"``; used only to align curves.
        fitness: ``"improvement"`` (Δ) or ``"time_to_climb"``, for the FIRE fitness and the
            success rule.
        min_points: valid curve points both curves need before an evaluator is judged, and that
            an evaluator's curve needs before its parent gets a FIRE fitness.
        gp_refit_growth: with the GP smoother, refit the kernel hyperparameters only when a
            curve has grown by this factor (1 = on every call; see ``curves.GPSmoother``).
        init: "lhs" (default; Decision, fire-pbt.md section 12): each sub-population's
            starting hyperparameters are one scrambled Latin hypercube over the space; "iid":
            every member drawn from the prior. (``pbt.init`` is not used inside FIRE.)
        gp_fit: how the GP smoother fits its kernel: "grid" (default; closed-form marginal
            likelihood over a grid, eigendecompositions memoised per curve length) or
            "sklearn" (scikit-learn's optimiser; see ``curves.GPSmoother``).
        parent_factor: the perturbation factor of explore inside the parent sub-populations
            P2..Pn (robustness Decision, docs/design.md): 2.0 (default) perturbs by x2 or /2
            there (with ``pbt.explore.perturbation == "ray"``: ``ray_factors`` become
            ``(f, 1 / f)``); None: the same explore as P1 (``pbt.explore``, x1.2 or /1.2). A
            parent's hyperparameters are never judged directly (its FIRE fitness measures its
            weights under the child's hyperparameters), so nothing pulls them towards a better
            value but explore itself; a wider step lets a parent sub-population leave a
            too-low starting plateau within a few exploits (NQM mean loss 0.0116 -> 0.0098 over
            20 seeds, toys unchanged; docs/results.md, "Issue #11: robustness Decisions").
        transfer_to: which member of P(k-1) a successful evaluator's weights overwrite
            (robustness Decision, docs/design.md): ``"child"`` (default; the spec's rule) the
            child it was judged against, which keeps its hyperparameters; ``"worst"`` the
            member of P(k-1) with the worst fitness (not overwritten in the same round), which
            takes the evaluator's weights *and* its hyperparameters (the child's, frozen at
            the start), so that the child, usually P(k-1)'s best, keeps its own weights.
        parent_order: how free evaluators pick among parents evaluated equally recently
            (robustness Decision, docs/design.md; the spec's rule, least recently evaluated
            first, always comes first): ``"least_recent"`` (default) the lower id;
            ``"fittest"`` the parent with the better task fitness. It matters early on, when
            no parent has been evaluated and every one ties.
    """

    name: ClassVar[str] = "fire"
    population: int = 22
    subpop_sizes: tuple[int, ...] | None = None
    evaluators: int | None = None
    n_subpops: int = 2
    pbt: PBT = field(default_factory=PBT)
    p_stat: float = 0.01
    max_eval_intervals: float = 3.0
    warmup_intervals: float = 1.0
    smoother: str = "gp"
    fitness: str = "improvement"
    min_points: int = 3
    gp_refit_growth: float = 1.0
    init: str = "lhs"
    gp_fit: str = "grid"
    parent_factor: float | None = 2.0
    transfer_to: str = "child"
    parent_order: str = "least_recent"

    def __post_init__(self) -> None:
        require_init(self.init)
        if isinstance(self.pbt, Mapping):
            object.__setattr__(self, "pbt", _pbt_from_config(self.pbt))
        require(isinstance(self.pbt, PBT), f"pbt={self.pbt!r}: must be a PBT (or its config)")
        if self.subpop_sizes is not None:
            require(
                isinstance(self.subpop_sizes, Sequence)
                and all(_is_int(s) for s in self.subpop_sizes),
                f"subpop_sizes={self.subpop_sizes!r}: must be a sequence of integers",
            )
            # JSON round trips turn the tuple into a list; n follows the explicit sizes.
            object.__setattr__(self, "subpop_sizes", tuple(self.subpop_sizes))
            object.__setattr__(self, "n_subpops", len(self.subpop_sizes))
        require(
            _is_int(self.population) and self.population >= 1,
            f"population={self.population!r}: must be an integer >= 1",
        )
        require(
            _is_int(self.n_subpops) and self.n_subpops >= 2,
            f"n_subpops={self.n_subpops!r}: FIRE needs n >= 2 sub-populations",
        )
        require(
            self.evaluators is None or _is_int(self.evaluators),
            f"evaluators={self.evaluators!r}: must be an integer",
        )
        sizes, n_eval = self._split()
        for k, size in enumerate(sizes, start=1):
            require(
                size >= 2,
                f"subpop_sizes={sizes}: sub-population P{k} has {size} member(s); each needs "
                ">= 2 to exploit inside itself",
            )
        require(
            n_eval >= 1,
            f"evaluators={n_eval} (population={self.population}, subpop_sizes={sizes}): "
            "FIRE needs at least 1 evaluator",
        )
        require(
            isinstance(self.p_stat, int | float) and 0.0 < self.p_stat < 1.0,
            f"p_stat={self.p_stat!r}: must lie in (0, 1)",
        )
        require(
            isinstance(self.max_eval_intervals, int | float)
            and math.isfinite(self.max_eval_intervals)
            and self.max_eval_intervals >= 1.0,
            f"max_eval_intervals={self.max_eval_intervals!r}: max_eval_steps must be at least "
            "1 interval (an evaluator is judged only at its ready points)",
        )
        require(
            isinstance(self.warmup_intervals, int | float)
            and math.isfinite(self.warmup_intervals)
            and self.warmup_intervals >= 0.0,
            f"warmup_intervals={self.warmup_intervals!r}: must be a number >= 0",
        )
        require(
            self.smoother in SMOOTHERS,
            f"smoother={self.smoother!r}: must be one of {', '.join(SMOOTHERS)}",
        )
        require(
            self.fitness in FITNESS_SCORES,
            f"fitness={self.fitness!r}: must be one of {', '.join(FITNESS_SCORES)}",
        )
        require(
            _is_int(self.min_points) and self.min_points >= 1,
            f"min_points={self.min_points!r}: must be an integer >= 1",
        )
        require(
            isinstance(self.gp_refit_growth, int | float)
            and math.isfinite(self.gp_refit_growth) and self.gp_refit_growth >= 1.0,
            f"gp_refit_growth={self.gp_refit_growth!r}: must be a number >= 1",
        )
        require(
            self.gp_fit in curves.GP_FITS,
            f"gp_fit={self.gp_fit!r}: must be one of {', '.join(curves.GP_FITS)}",
        )
        require(
            self.transfer_to in TRANSFER_TO,
            f"transfer_to={self.transfer_to!r}: must be one of {', '.join(TRANSFER_TO)}",
        )
        require(
            self.parent_order in PARENT_ORDERS,
            f"parent_order={self.parent_order!r}: must be one of {', '.join(PARENT_ORDERS)}",
        )
        if self.parent_factor is not None:
            require(
                isinstance(self.parent_factor, int | float)
                and not isinstance(self.parent_factor, bool)
                and math.isfinite(self.parent_factor) and self.parent_factor > 1.0,
                f"parent_factor={self.parent_factor!r}: must be a number > 1 (or None)",
            )

    # -- configuration ------------------------------------------------------------------------

    def _split(self) -> tuple[tuple[int, ...], int]:
        """Resolve (|P1|..|Pn|, evaluator count) from the settings."""
        if self.subpop_sizes is not None:
            sizes = self.subpop_sizes
            if self.evaluators is None:
                return sizes, self.population - sum(sizes)
            require(
                sum(sizes) + self.evaluators == self.population,
                f"population={self.population}: subpop_sizes={sizes} plus "
                f"evaluators={self.evaluators} make {sum(sizes) + self.evaluators}; they must "
                "add up to population (or leave one of them out)",
            )
            return sizes, self.evaluators
        n_eval = (
            self.evaluators
            if self.evaluators is not None
            else math.floor(EVALUATOR_SHARE * self.population + 0.5)
        )
        members = self.population - n_eval
        base, extra = divmod(max(members, 0), self.n_subpops)
        return tuple(base + (1 if k < extra else 0) for k in range(self.n_subpops)), n_eval

    @property
    def sizes(self) -> tuple[int, ...]:
        """Resolved member counts |P1|..|Pn|."""
        return self._split()[0]

    @property
    def n_evaluators(self) -> int:
        """Resolved evaluator count."""
        return self._split()[1]

    def max_eval_steps(self, interval: int) -> int:
        """An evaluator's training budget in steps (at least one interval)."""
        return math.ceil(self.max_eval_intervals * interval)

    def warmup_steps(self, interval: int) -> int:
        """Steps a parent must have trained before it can be evaluated."""
        return math.ceil(self.warmup_intervals * interval)

    def topology(self) -> list[Role]:
        """P1 members, P2 members, ..., then the evaluators (sub-population 0 until assigned)."""
        roles = [Role(MEMBER, k) for k, size in enumerate(self.sizes, start=1) for _ in range(size)]
        return roles + [Role(EVALUATOR, 0)] * self.n_evaluators

    def validate(self, interval: int, eval_every: int, total_steps: int) -> None:
        """Refuse run settings under which FIRE cannot work (ConfigError)."""
        points = interval // eval_every
        need = curves.min_points_to_pass(self.p_stat)
        fix = (f"use eval_every <= {interval // need}" if interval >= need else
               f"use interval >= {need} (with eval_every = 1, or interval / eval_every >= {need})")
        require(
            points >= need,
            f"eval_every={eval_every} with interval={interval} records {points} curve points "
            f"per interval, but the sign test at p_stat={self.p_stat} needs >= {need} aligned "
            f"points: the sign test can never pass; {fix}",
        )
        warmup = self.warmup_steps(interval)
        require(
            warmup < total_steps,
            f"warmup_intervals={self.warmup_intervals} ({warmup} steps) with steps="
            f"{total_steps}: evaluators would never start; warm-up must end before the run",
        )

    def explore_config(self) -> ExploreConfig:
        return self.pbt.explore

    @functools.cached_property
    def parent_pbt(self) -> PBT:
        """The exploit/explore settings used inside P2..Pn: ``pbt`` with ``parent_factor``."""
        if self.parent_factor is None:
            return self.pbt
        f = float(self.parent_factor)
        explore_cfg = dataclasses.replace(self.pbt.explore, factor=f, ray_factors=(f, 1.0 / f))
        return dataclasses.replace(self.pbt, explore=explore_cfg)

    def retire(self, worker: WorkerView, reason: str) -> list[Decision]:
        return [StopEvaluator(worker.id, reason)]

    def replace(
        self, snapshot: Snapshot, state: Any, worker: int, error: str, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        """A persistently failed member restarts from a peer of its sub-population: in P1 the
        best by task fitness (the default), in P2..Pn the best by FIRE fitness, which is what
        ranks those sub-populations (the task fitness only where no peer has a FIRE fitness
        yet). Its own FIRE fitness described the lost weights and is cleared."""
        me = snapshot.workers[worker]
        if me.subpop == 1:
            return super().replace(snapshot, state, worker, error, rng)
        peers = [
            (value, p) for p in snapshot.subpop(me.subpop)
            if p.id != worker and p.checkpoint is not None and p.status in (ACTIVE, "done")
            and (value := MemberRecord.of(p).fire_fitness) is not None and math.isfinite(value)
        ]
        if not peers:
            decisions, state = super().replace(snapshot, state, worker, error, rng)
        else:
            _, donor = max(peers, key=lambda vp: (vp[0], -vp[1].id))
            new_hp, ops = explore(snapshot.space, donor.hparams, rng, self.parent_pbt.explore)
            assert donor.checkpoint is not None
            decisions = [Replace(worker, donor.id, donor.checkpoint, new_hp, ops, error)]
        return [SetFitness(worker, None), *decisions], state

    def to_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        cfg["pbt"] = {k: v for k, v in self.pbt.to_config().items() if k != "name"}
        if self.subpop_sizes is not None:
            cfg["subpop_sizes"] = list(self.subpop_sizes)
        return {"name": self.name, **cfg}

    # -- state ---------------------------------------------------------------------------------

    def init_state(self, topology: Sequence[Role], rng: np.random.Generator) -> FireState:
        """Empty memos (nothing is drawn from ``rng``)."""
        base: curves.Smoother
        base = (
            curves.GPSmoother(refit_growth=self.gp_refit_growth, fit=self.gp_fit)
            if self.smoother == "gp"
            else curves.EMASmoother()
        )
        return FireState(curves.CachedSmoother(base), curves.PairMemo())

    def save_state(self, state: FireState) -> dict[str, Any]:
        return {}  # memos only: rebuilt from the curves on demand

    def load_state(self, data: Any) -> FireState:
        return self.init_state(self.topology(), np.random.default_rng(0))

    # -- decisions ----------------------------------------------------------------------------

    def decide(
        self, snapshot: Snapshot, state: FireState | None, rng: np.random.Generator
    ) -> tuple[list[Decision], FireState]:
        """Judge evaluators, exploit/explore members, stop stale evaluators, assign free ones."""
        if state is None:
            state = self.init_state(self.topology(), rng)
        views = snapshot.workers
        ready = [views[i] for i in snapshot.ready]
        round_ = _Round(state, all_evaluators=sorted(
            (w for w in views.values() if w.role == EVALUATOR), key=lambda w: w.id))
        self._judge(
            snapshot, [w for w in ready if w.role == EVALUATOR and w.status == ACTIVE], round_
        )
        self._exploit(snapshot, [w for w in ready if w.role == MEMBER], rng, round_)
        self._fence(snapshot, round_)
        free = [w.id for w in ready if w.role == EVALUATOR and w.status == IDLE]
        free += [e for e, d in round_.evaluators.items() if isinstance(d, StopEvaluator | Transfer)]
        starts = self._assign(snapshot, sorted(set(free)), rng, round_)
        # Application order matters to the controller: an evaluator is stopped before it is
        # restarted, and a parent is overwritten before an evaluator records its version.
        decisions = [
            *round_.fitness,
            *round_.evaluators.values(),
            *round_.members,
            *round_.cleared,
            *starts,
        ]
        return decisions, state

    def _judge(self, snapshot: Snapshot, ready: list[WorkerView], round_: _Round) -> None:
        """Stops 1-3 and successes of the ready evaluators; one success per child."""
        views = snapshot.workers
        max_steps = self.max_eval_steps(snapshot.interval)
        successes: dict[int, list[tuple[WorkerView, curves.Judgement]]] = {}
        for e in ready:
            rec = round_.record(e)
            parent, child = views[rec.parent], views[rec.child]
            if _overwritten_since_start(rec, parent, child):
                round_.evaluators[e.id] = StopEvaluator(e.id, "overwritten")
                continue
            verdict = curves.judge(
                e.curve,
                child.curve,
                e.step - rec.start_step,
                max_steps,
                self.p_stat,
                round_.state.smoother,
                self.min_points,
                self._score,
            )
            if verdict.outcome == curves.SUCCESS:
                successes.setdefault(child.id, []).append((e, verdict))
            elif verdict.outcome == curves.STOP_NO_OVERLAP:
                round_.evaluators[e.id] = StopEvaluator(
                    e.id, "no_overlap", verdict.p_value, verdict.delta
                )
            elif verdict.outcome == curves.STOP_P_VALUE:
                round_.evaluators[e.id] = StopEvaluator(
                    e.id, "p_value", verdict.p_value, verdict.delta
                )
            else:
                round_.evaluators[e.id] = Continue(e.id)
        for child_id, wins in sorted(successes.items()):
            # Largest Δ against the child's curve wins; the lowest id breaks ties, so the outcome
            # does not depend on the order in which evaluators became ready.
            wins.sort(key=lambda ev: (-ev[1].delta, ev[0].id))
            (best, verdict), losers = wins[0], wins[1:]
            assert best.checkpoint is not None and verdict.p_value is not None
            target = child_id
            if self.transfer_to == "worst":
                target = self._worst_member(snapshot, views[child_id].subpop, round_, child_id)
            moved = target != child_id
            round_.evaluators[best.id] = Transfer(
                best.id,
                round_.record(best).parent,
                target,
                best.checkpoint,
                verdict.p_value,
                verdict.delta,
                child_id if moved else None,
                dict(best.hparams) if moved else None,
            )
            round_.overwritten[target] = (best.checkpoint, best.step)
            for e, lost in losers:
                round_.evaluators[e.id] = StopEvaluator(
                    e.id, "superseded", lost.p_value, lost.delta
                )

    def _exploit(
        self,
        snapshot: Snapshot,
        ready: list[WorkerView],
        rng: np.random.Generator,
        round_: _Round,
    ) -> None:
        """PBT inside each sub-population: task fitness in P1, FIRE fitness in Pk >= 2."""
        fire: dict[int, dict[int, float]] = {}
        for m in ready:
            if m.id in round_.overwritten:
                # It has just taken an evaluator's weights; its ranking fitness is stale.
                round_.members.append(Continue(m.id))
                continue
            k = m.subpop
            if k == 1:
                decision = self.pbt.decide_member(snapshot, m, rng, k=1)
            else:
                if k not in fire:
                    fire[k] = self._fire_fitness(snapshot, k, round_)
                    # Only values that change: an annotation is a store write, and most
                    # members' fitness is unchanged between two events.
                    round_.fitness += [
                        SetFitness(w, v) for w, v in sorted(fire[k].items())
                        if MemberRecord.of(snapshot.workers[w]).fire_fitness != v
                    ]
                fitness = fire[k]
                if m.id not in fitness:
                    round_.members.append(Continue(m.id))
                    continue
                ranked: dict[int, float | None] = dict(fitness)
                decision = self.parent_pbt.decide_member(snapshot, m, rng, k, fitness=ranked)
            round_.members.append(decision)
            if isinstance(decision, Exploit):
                donor = snapshot.workers[decision.donor]
                round_.overwritten[m.id] = (decision.donor_checkpoint, donor.step)
        # A FIRE fitness describes weights that are now gone: clear it so that an overwritten
        # member is not picked as a child on a stale value.
        round_.cleared = [
            SetFitness(w, None)
            for w in sorted(round_.overwritten)
            if snapshot.workers[w].subpop >= 2
            and (MemberRecord.of(snapshot.workers[w]).fire_fitness is not None
                 or any(w in values for values in fire.values()))  # set just above
        ]

    def _fire_fitness(self, snapshot: Snapshot, k: int, round_: _Round) -> dict[int, float]:
        """FIRE fitness of the members of Pk whose evaluator's curve still describes them."""
        views = snapshot.workers
        evaluated: dict[int, tuple[float | None, ...]] = {}
        for e in round_.all_evaluators:
            if e.subpop != k or e.status != ACTIVE:
                continue
            rec = round_.record(e)
            parent = views[rec.parent]
            if parent.overwrites != rec.parent_overwrites or parent.id in round_.overwritten:
                continue
            # An evaluator that has barely started carries no information yet.
            if curves.valid_points(e.curve).size >= self.min_points:
                evaluated[parent.id] = e.curve
        return curves.fire_fitness(
            evaluated, round_.state.smoother, self._score, round_.state.pairs
        )

    def _fence(self, snapshot: Snapshot, round_: _Round) -> None:
        """Stop 3 for every active evaluator whose parent or child lost its weights."""
        views = snapshot.workers
        for e in round_.all_evaluators:
            if e.status != ACTIVE:
                continue
            current = round_.evaluators.get(e.id)
            if current is not None and not isinstance(current, Continue):
                continue
            rec = round_.record(e)
            parent, child = views[rec.parent], views[rec.child]
            if (
                _overwritten_since_start(rec, parent, child)
                or parent.id in round_.overwritten
                or child.id in round_.overwritten
            ):
                round_.evaluators[e.id] = StopEvaluator(e.id, "overwritten")

    def _assign(
        self,
        snapshot: Snapshot,
        free: list[int],
        rng: np.random.Generator,
        round_: _Round,
    ) -> list[Decision]:
        """Start free evaluators on the least recently evaluated parents (spec section 5)."""
        if not free:
            return []
        views = snapshot.workers
        busy = {
            round_.record(e).parent
            for e in round_.all_evaluators
            if e.status == ACTIVE
            and isinstance(round_.evaluators.get(e.id, Continue(e.id)), Continue)
        }
        warmup = self.warmup_steps(snapshot.interval)
        parents = [
            w
            for w in views.values()
            if w.role == MEMBER
            and w.subpop >= 2
            and w.status == ACTIVE
            and w.id not in busy
            and w.checkpoint is not None
            and w.step >= warmup
            and w.step < snapshot.total_steps
        ]

        def fitter_first(w: WorkerView) -> float:
            if self.parent_order == "least_recent":
                return 0.0
            value = fitness_of(w, self.pbt.fitness_window)
            return -value if value is not None and math.isfinite(value) else math.inf

        parents.sort(
            key=lambda w: (
                w.id in round_.overwritten,  # just overwritten goes last
                MemberRecord.of(w).last_evaluated,
                fitter_first(w),
                w.id,
            )
        )
        starts: list[Decision] = []
        shared: dict[int, int] = {}  # level k -> the child chosen without any fitness
        best: dict[int, int | None] = {}  # level k -> the best child (nothing below changes it)
        pool = list(free)
        for parent in parents:
            if not pool:
                break
            k = parent.subpop
            if k not in best:
                best[k] = self._best_child(snapshot, k - 1, round_)
            child = best[k]
            random_child = False
            if child is None:
                if k not in shared:
                    shared[k] = self._shared_child(snapshot, k, rng, round_)
                child = shared[k]
                # Marked so that later level-k evaluators can find and share this very child.
                random_child = True
            if child < 0:
                continue  # P(k-1) has no member that could take weights
            evaluator = pool.pop(0)
            # The versions the parent and child have once this round's decisions are applied
            # (they come before the starts): a parent overwritten now is one version further.
            # The child never is (overwritten members are no candidates).
            overwritten = round_.overwritten.get(parent.id)
            checkpoint, step = overwritten or (parent.checkpoint, parent.step)
            assert checkpoint is not None
            record = EvaluatorRecord(
                parent.id, child, parent.overwrites + (overwritten is not None),
                views[child].overwrites, step,
                # The controller counts this round once the decisions are made.
                snapshot.tick + 1, random_child,
            )
            starts.append(
                StartEvaluator(evaluator, parent.id, checkpoint, child,
                               dict(views[child].hparams), record, parent.subpop)
            )
        return starts

    def _child_candidates(self, snapshot: Snapshot, k: int, round_: _Round) -> list[WorkerView]:
        return [
            w for w in snapshot.subpop(k) if w.status == ACTIVE and w.id not in round_.overwritten
        ]

    def _best_child(self, snapshot: Snapshot, k: int, round_: _Round) -> int | None:
        """The member of Pk with the best latest fitness (FIRE fitness for k >= 2), or None."""
        best: tuple[float, int] | None = None
        for w in self._child_candidates(snapshot, k, round_):
            value = (fitness_of(w, self.pbt.fitness_window) if k == 1
                     else MemberRecord.of(w).fire_fitness)
            if value is None or not math.isfinite(value):
                continue
            if best is None or value > best[0]:  # ids ascend, so ties keep the lower id
                best = (float(value), w.id)
        return None if best is None else best[1]

    def _worst_member(self, snapshot: Snapshot, k: int, round_: _Round, child: int) -> int:
        """The member of Pk with the worst latest fitness (task fitness in P1, FIRE fitness
        above), not overwritten in this call; invalid fitness counts as worst, the higher id
        breaks ties. ``child`` when there is no other candidate."""
        worst: tuple[float, int] | None = None
        for w in self._child_candidates(snapshot, k, round_):
            value = (fitness_of(w, self.pbt.fitness_window) if k == 1
                     else MemberRecord.of(w).fire_fitness)
            rank = float(value) if value is not None and math.isfinite(value) else -math.inf
            if worst is None or rank <= worst[0]:
                worst = (rank, w.id)
        return child if worst is None else worst[1]

    def _shared_child(
        self, snapshot: Snapshot, k: int, rng: np.random.Generator, round_: _Round
    ) -> int:
        """The child shared by all level-k evaluators while P(k-1) has no fitness (-1: none)."""
        candidates = self._child_candidates(snapshot, k - 1, round_)
        ids = {w.id for w in candidates}
        # Reuse the random child of a running level-k evaluator so that all curves stay
        # comparable; an evaluator whose child was the best by fitness is no such child.
        for e in round_.all_evaluators:
            if e.subpop != k or e.status != ACTIVE:
                continue
            rec = round_.record(e)
            if rec.random_child and rec.child in ids:
                return rec.child
        if not candidates:
            return -1
        return candidates[int(rng.integers(len(candidates)))].id

    @property
    def _score(self) -> curves.ScoreName:
        return cast(curves.ScoreName, self.fitness)


@dataclass
class _Round:
    """What one ``decide`` call has decided so far."""

    state: FireState
    evaluators: dict[int, Decision] = field(default_factory=dict)
    members: list[Decision] = field(default_factory=list)
    fitness: list[Decision] = field(default_factory=list)
    cleared: list[Decision] = field(default_factory=list)
    # member -> (checkpoint, its step): where its weights come from after this call (exploit
    # or transfer)
    overwritten: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Every evaluator in id order: the snapshot does not change during one call, and each step
    # below would otherwise scan all workers.
    all_evaluators: list[WorkerView] = field(default_factory=list)

    def record(self, e: WorkerView) -> EvaluatorRecord:
        """``EvaluatorRecord.of(e)``, parsed once per annotation. A view's ``info`` is replaced,
        never changed, when its worker changes, so the memo keeps the object each record was
        parsed from and most look-ups hit, across calls too (parsing every evaluator's record
        at every decision was 5 % of FIRE's controller time at 100 workers)."""
        hit = self.state.records.get(e.id)
        if hit is None or hit[0] is not e.info:
            hit = self.state.records[e.id] = (e.info, EvaluatorRecord.of(e))
        return hit[1]


def _overwritten_since_start(
    rec: EvaluatorRecord, parent: WorkerView, child: WorkerView
) -> bool:
    """Stop 3's version fence: did the parent's or child's weights change since it began?"""
    return parent.overwrites != rec.parent_overwrites or child.overwrites != rec.child_overwrites


def _pbt_from_config(cfg: Mapping[str, Any]) -> PBT:
    from firepbt.algorithms import algorithm_from_config

    rebuilt = algorithm_from_config({**cfg, "name": "pbt"})
    assert isinstance(rebuilt, PBT)
    return rebuilt


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
