"""Carrying out the algorithm's decisions: each comes down to generic effects
(``firepbt.algorithms.effects``), applied to the population, the work queue and the store.

Everything here runs inside the controller's store transaction of the result that led to it;
each effect that changes weights or status records its lineage event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from firepbt.algorithms.base import Algorithm
from firepbt.algorithms.effects import (
    Annotate,
    Continue,
    Decision,
    Effect,
    GiveUp,
    Overwrite,
    Start,
    Stop,
)
from firepbt.engine.population import Population
from firepbt.engine.retention import Retention
from firepbt.engine.segments import Segments
from firepbt.executors.base import Executor
from firepbt.faults import crash_point
from firepbt.states import ACTIVE, DONE, FAILED, IDLE, MEMBER
from firepbt.store.base import EventRecord, Store

log = logging.getLogger("firepbt")


class Effects:
    """Applies decisions; also schedules a worker's next segment (or its end).

    Args:
        steps: the run's length; interval: steps per segment.
    """

    def __init__(self, *, store: Store, population: Population, segments: Segments,
                 executor: Executor, retention: Retention, algorithm: Algorithm, steps: int,
                 interval: int, clock: Callable[[], float]) -> None:
        self.store, self.population, self.segments = store, population, segments
        self.executor, self.retention, self.algorithm = executor, retention, algorithm
        self.steps, self.interval, self.clock = steps, interval, clock

    def apply(self, decision: Decision) -> None:
        for effect in decision.effects():
            self.carry_out(effect)

    def carry_out(self, d: Effect) -> None:
        pop = self.population
        w = pop.workers[d.worker]
        if isinstance(d, Continue):
            if w.status == ACTIVE and not self.segments.busy(w.id):
                self.schedule(w.id)
        elif isinstance(d, Overwrite):
            rec = self.store.checkpoint(d.checkpoint)
            if self.retention.gone(rec):
                # A pinned version should never be gone; if it is, skip rather than load garbage.
                log.warning("worker %d: %s of worker %d's checkpoint %d skipped: it is gone",
                            w.id, d.kind, d.donor, d.checkpoint)
                self.event(f"{d.kind}_skipped", w.id, w.step, donor=d.donor,
                           donor_checkpoint=d.checkpoint,
                           info={"why": "donor checkpoint missing"})
                self.carry_out(Continue(w.id))
                return
            crash_point(f"{d.kind}.copy")
            # Work in flight trains weights that are gone now: it is void.
            self.segments.cancel(w.id)
            self.executor.cancel(w.id)
            step = rec.step
            hparams = w.hparams if d.hparams is None else d.hparams
            curve = [] if d.curve_from is None else list(pop.curves[d.curve_from])
            pop.overwrite(w.id, d.checkpoint, step, hparams, curve)
            self.event(d.kind, w.id, step, donor=d.donor, donor_checkpoint=d.checkpoint,
                       old_hparams=w.hparams, new_hparams=hparams, info=dict(d.info))
            if w.status in (ACTIVE, DONE):  # a failed worker stays failed
                if w.status != ACTIVE:
                    pop.update(w.id, status=ACTIVE)
                self.schedule(w.id)
        elif isinstance(d, Start):
            step = self.store.checkpoint(d.checkpoint).step
            crash_point(f"{w.role}.start")
            # Joins its donor's sub-population with the algorithm's bookkeeping; the
            # overwrite below refreshes what is derived.
            pop.workers[w.id] = replace(w, status=ACTIVE, hparams=dict(d.hparams),
                                        subpop=d.subpop, info=dict(d.annotations))
            pop.overwrite(w.id, d.checkpoint, step, d.hparams, [])
            self.event(d.kind, w.id, step, donor=d.donor, donor_checkpoint=d.checkpoint,
                       new_hparams=d.hparams, info=dict(d.info))
            self.schedule(w.id)
        elif isinstance(d, Stop):
            self.segments.cancel(w.id)
            pop.update(w.id, status=IDLE)
            self.event(d.kind, w.id, w.step, info={**d.info, **w.info})
        elif isinstance(d, Annotate):
            pop.update(w.id, info={**w.info, **d.info})
        elif isinstance(d, GiveUp):
            pop.update(w.id, status=FAILED)
            self.event("failed", w.id, w.step, info={"error": d.error})
        else:  # pragma: no cover - a new effect without a handler is a bug
            raise TypeError(f"unknown effect {d!r}")

    def schedule(self, wid: int) -> None:
        """Create the next segment of ``wid``; at the run's last step it ends instead."""
        w = self.population.workers[wid]
        if w.step >= self.steps:
            if w.role == MEMBER:
                self.population.update(wid, status=DONE)
            else:
                # An evaluator trains in its parent's steps and never past the run's end: a
                # transfer of its weights would give a member more steps than the budget.
                self.retire(wid, "end")
            return
        self.segments.create(w, min(w.step + self.interval, self.steps))

    def retire(self, wid: int, reason: str) -> None:
        """A worker that is not a member stops; how is the algorithm's decision."""
        for d in self.algorithm.retire(self.population.views[wid], reason):
            self.apply(d)

    def retire_evaluators(self) -> None:
        """Every member is done: the evaluators still running stop."""
        for e in self.population.active_evaluators():
            self.retire(e, "end")

    def event(self, kind: str, worker: int, step: int, **kw: Any) -> None:
        self.store.add_event(EventRecord(0, kind, worker, step, self.clock(), **kw))
