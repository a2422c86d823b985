"""Effects: each generic effect on a real in-memory store, population and work queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from firepbt.algorithms import PBT
from firepbt.algorithms.effects import Annotate, Continue, GiveUp, Overwrite, Start, Stop
from firepbt.engine.effects import Effects
from firepbt.engine.lease import Lease
from firepbt.engine.population import Population
from firepbt.engine.retention import Retention
from firepbt.engine.segments import Segments
from firepbt.executors.simulated import SimulatedExecutor
from firepbt.storage import open_storage
from firepbt.store import MemoryStore
from firepbt.store.base import CheckpointRecord, WorkerRecord


@pytest.fixture
def fx(tmp_path: Path) -> Effects:
    store = MemoryStore()
    lease = Lease(store)
    workers = {
        0: WorkerRecord(0, "member", 1, {"lr": 0.1}, 10, 1),
        1: WorkerRecord(1, "member", 1, {"lr": 0.2}, 10, 2, status="done"),
        2: WorkerRecord(2, "evaluator", 0, {}, 0, None, status="idle"),
        3: WorkerRecord(3, "member", 1, {"lr": 0.3}, 10, 3, status="failed"),
    }
    with store.transaction():
        for cid, (writer, step) in {1: (0, 10), 2: (1, 10), 3: (3, 10), 5: (1, 20)}.items():
            store.add_checkpoint(CheckpointRecord(cid, writer, step, f"c{cid}", "x", {}, None,
                                                  0.0, deleted=cid == 2))
    population = Population(workers, {0: [0.5], 1: [0.7, 0.9], 2: [], 3: []})
    return Effects(
        store=store, population=population, segments=Segments(store, {}),
        executor=SimulatedExecutor(capacity=2),
        retention=Retention(store, open_storage(tmp_path / "c"), 2, False, lease.holder),
        algorithm=PBT(population=3), steps=30, interval=10, clock=lambda: 0.0,
    )


def apply(fx: Effects, *effects: object) -> None:
    with fx.store.transaction():
        for e in effects:
            fx.apply(e)  # type: ignore[arg-type]


def test_an_overwrite_points_at_the_donor_version_with_its_event(fx: Effects) -> None:
    apply(fx, Overwrite(0, 5, donor=1, kind="exploit", hparams={"lr": 0.4}, info={"ops": {}}))
    w = fx.population.workers[0]
    assert (w.checkpoint, w.step, w.hparams, w.overwrites) == (5, 20, {"lr": 0.4}, 1)
    assert fx.population.curves[0] == []  # a fresh curve for the new weights
    (e,) = fx.store.events(kind="exploit")
    assert (e.worker, e.step, e.donor, e.donor_checkpoint, e.old_hparams, e.new_hparams,
            e.info) == (0, 20, 1, 5, {"lr": 0.1}, {"lr": 0.4}, {"ops": {}})
    (seg,) = fx.store.segments(worker=0)
    assert (seg.from_checkpoint, seg.start_step, seg.end_step) == (5, 20, 30)


def test_an_overwrite_can_keep_hparams_take_a_curve_and_wake_a_done_member(fx: Effects) -> None:
    apply(fx, Overwrite(1, 1, donor=0, kind="transfer", curve_from=0))
    w = fx.population.workers[1]
    assert (w.status, w.hparams, fx.population.curves[1]) == ("active", {"lr": 0.2}, [0.5])
    assert fx.segments.busy(1) and fx.population.open_members == 2
    apply(fx, Overwrite(3, 1, donor=0, kind="transfer"))
    assert fx.population.workers[3].status == "failed" and not fx.segments.busy(3)


def test_an_overwrite_from_a_collected_version_is_skipped(fx: Effects) -> None:
    apply(fx, Overwrite(0, 2, donor=1, kind="exploit", hparams={"lr": 0.4}))
    (e,) = fx.store.events(kind="exploit_skipped")
    assert (e.donor_checkpoint, e.info) == (2, {"why": "donor checkpoint missing"})
    w = fx.population.workers[0]
    assert (w.checkpoint, w.hparams, w.overwrites) == (1, {"lr": 0.1}, 0)
    assert fx.segments.busy(0)  # it continues with its own weights


def test_start_then_stop_an_idle_worker(fx: Effects) -> None:
    apply(fx, Start(2, 5, donor=1, hparams={"lr": 0.9}, subpop=1, kind="start_evaluator",
                    annotations={"parent": 1}, info={"child": 0}))
    w = fx.population.workers[2]
    assert (w.status, w.subpop, w.step, w.checkpoint, w.info) == ("active", 1, 20, 5,
                                                                  {"parent": 1})
    (seg,) = fx.store.segments(worker=2)
    apply(fx, Stop(2, "stop_evaluator", {"reason": "p_value"}))
    assert fx.population.workers[2].status == "idle"
    assert fx.store.segment(seg.id).status == "cancelled" and not fx.segments.busy(2)
    (e,) = fx.store.events(kind="stop_evaluator")
    assert e.info == {"reason": "p_value", "parent": 1}  # the annotations follow


def test_annotations_merge_and_a_give_up_fails_the_member(fx: Effects) -> None:
    apply(fx, Annotate(0, {"a": 1}), Annotate(0, {"b": 2}), GiveUp(0, "boom"))
    w = fx.population.workers[0]
    assert (w.info, w.status) == ({"a": 1, "b": 2}, "failed")
    assert [(e.kind, e.info) for e in fx.store.events()] == [("failed", {"error": "boom"})]
    apply(fx, Continue(0))  # nothing to continue
    assert not fx.segments.busy(0)


def test_at_the_last_step_a_member_is_done_and_others_are_retired(fx: Effects) -> None:
    apply(fx, Overwrite(0, 5, donor=1, kind="exploit"))
    fx.population.update(0, step=30)
    fx.population.update(2, status="active", step=30)
    with fx.store.transaction():
        fx.segments.cancel(0)
        fx.schedule(0)
        fx.schedule(2)
    assert fx.population.workers[0].status == "done"
    (e,) = fx.store.events(kind="stop")  # PBT's default retirement
    assert (e.worker, e.info) == (2, {"reason": "end"})
