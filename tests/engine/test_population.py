"""Population: records, the one learning curve per worker, views and fitness tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firepbt.engine.population import Population
from firepbt.space import LogUniform, Space
from firepbt.store import MemoryStore
from firepbt.store.base import WorkerRecord

SPACE = Space(lr=LogUniform(1e-3, 1.0))


def population() -> Population:
    workers = {i: WorkerRecord(i, "member", 1 + i // 2, {"lr": 0.1}, 0, None) for i in range(4)}
    workers[4] = WorkerRecord(4, "evaluator", 0, {}, 0, None, status="idle")
    return Population(workers, {})


def test_views_and_tables_follow_every_change() -> None:
    pop = population()
    pop.extend(0, [0.1, 0.3], step=10, checkpoint=7)
    pop.extend(1, [0.2, None], step=10, checkpoint=8)
    view = pop.views[0]
    assert (view.step, view.checkpoint, view.curve, view.last_metric()) == (10, 7, (0.1, 0.3), 0.3)
    assert pop.views[1].last_metric() == 0.2  # the newest valid point
    table = pop.snapshot((0,), 0, SPACE, 10, 100).tables[1]  # type: ignore[index]
    assert list(table.ids) == [0, 1] and list(table.values) == [0.3, 0.2]
    # Steps and curve lengths too, for ranking at a common step without reading every view.
    assert list(table.steps) == [10, 10] and list(table.points) == [2, 2]  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.values[0] = 1.0  # read-only: the algorithm cannot change the controller's table
    pop.update(1, status="failed")
    # A failed member keeps its slot with NaN fitness: it ranks last, never donates.
    assert math.isnan(pop.snapshot((), 0, SPACE, 10, 100).tables[1].values[1])  # type: ignore
    assert pop.best_per_subpop() == {1: 0.3}


def test_an_overwrite_bumps_the_version_and_starts_a_fresh_curve() -> None:
    pop = population()
    pop.extend(2, [0.5], step=10, checkpoint=9)
    pop.overwrite(2, 7, 20, {"lr": 0.2}, [])
    w = pop.workers[2]
    assert (w.checkpoint, w.step, w.hparams, w.overwrites) == (7, 20, {"lr": 0.2}, 1)
    assert pop.curves[2] == [] and pop.views[2].curve == () and pop.views[2].overwrites == 1
    table = pop.snapshot((), 0, SPACE, 10, 100).tables[2]  # type: ignore[index]
    assert np.isnan(table.values[0])
    assert (table.steps[0], table.points[0]) == (20, 0)  # type: ignore[index]


def test_open_members_are_counted_without_a_pass_over_the_population() -> None:
    pop = population()
    assert pop.open_members == 4 and not pop.members_done
    for wid in range(4):
        pop.update(wid, status="done" if wid % 2 else "failed")
    assert pop.members_done and pop.progress(100) == (0, 400)
    pop.update(1, status="active")  # a done member that takes a transfer trains again
    assert pop.open_members == 1
    assert pop.idle_evaluators() == [4] and pop.active_evaluators() == []


def test_persist_writes_only_the_changed_workers_and_their_curves() -> None:
    store = MemoryStore()
    pop = population()
    pop.dirty.clear()
    pop.extend(3, [0.4], step=10, checkpoint=5)
    pop.note(0, failures=1)  # bookkeeping only: persisted, no view change
    with store.transaction():
        pop.persist(store)
    assert [w.id for w in store.workers()] == [0, 3] and not pop.dirty
    assert store.get_state("curve/3") == [0.4] and store.get_state("curve/0") == []
    assert pop.views[0].status == "active" and store.workers()[0].failures == 1
