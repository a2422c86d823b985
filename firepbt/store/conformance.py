"""The store conformance suite: every backend must pass these tests.

Use it from a test module by providing a ``store_factory`` fixture and importing the tests::

    from firepbt.store.conformance import *  # noqa: F403

    @pytest.fixture
    def store_factory(tmp_path):
        return StoreFactory(lambda: SQLiteStore(tmp_path / "x.db"), persistent=True)

Each test checks one rule of the contract in :mod:`firepbt.store.base`. Tests about what other
connections see, or what survives reopening, run only for ``persistent`` backends (for which
every ``store_factory()`` call opens the same data). :func:`check_concurrent_writers` stresses a
persistent backend from several processes. Needs pytest (a development dependency).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest

from firepbt.errors import ConfigError, ExperimentLocked, LockLost, StoreError
from firepbt.store.base import (
    COMPLETED,
    EVALUATOR,
    MEMBER,
    PENDING,
    SEG_FAILED,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)

__all__ = [
    "StoreFactory",
    "check_concurrent_writers",
    "claim",
    "contend",
    "store",
    "test_checkpoint_filters_and_deleted",
    "test_checkpoints_are_append_only",
    "test_empty_store",
    "test_events_get_increasing_ids_and_filter",
    "test_experiment_created_once",
    "test_fenced_transaction_commits_while_the_lock_is_held",
    "test_fenced_transaction_of_a_replaced_holder_commits_nothing",
    "test_fenced_transaction_sees_a_takeover_by_another_connection",
    "test_a_read_in_a_fenced_block_never_returns_to_a_lost_holder",
    "test_fenced_transactions_in_a_row_keep_ids_and_duplicate_checks",
    "test_fenced_ids_stay_unique_when_another_connection_writes",
    "test_future_heartbeat_is_not_reported_as_a_negative_age",
    "test_failed_write_inside_transaction_keeps_the_rest",
    "test_live_lock_blocks_a_second_holder",
    "test_lock_acquire_refresh_release",
    "test_lock_is_shared_between_connections",
    "test_metrics_are_append_only_per_batch",
    "test_metrics_keep_extra_named_values",
    "test_metrics_ordered_and_filtered",
    "test_nested_transaction_raises",
    "test_next_id_is_monotonic_per_counter",
    "test_next_id_survives_reopen",
    "test_non_json_values_are_refused",
    "test_records_are_immutable",
    "test_records_round_trip",
    "test_records_survive_reopen",
    "test_segments_filtered_and_ordered",
    "test_stale_lock_is_taken_over",
    "test_state_get_put_default",
    "test_transaction_commits_all_writes",
    "test_transaction_invisible_until_commit",
    "test_transaction_rolls_back_every_write",
    "test_unknown_ids_raise_key_error",
    "test_upserts_replace_whole_records",
]


@dataclass(frozen=True)
class StoreFactory:
    """Opens stores of one backend.

    Attributes:
        open: Returns an open store. For a persistent backend every call opens the same data.
        persistent: Whether the data outlives the store object (reopen, other connections).
    """

    open: Callable[[], Store]
    persistent: bool

    def __call__(self) -> Store:
        return self.open()


@pytest.fixture
def store(store_factory: StoreFactory) -> Iterator[Store]:
    """A fresh store from the backend under test, closed afterwards."""
    s = store_factory()
    yield s
    s.close()


def _persistent_only(factory: StoreFactory) -> None:
    if not factory.persistent:
        pytest.skip("the backend keeps no data beyond the store object")


# -- sample records --------------------------------------------------------------------------


def _worker(i: int, **kw: object) -> WorkerRecord:
    base = WorkerRecord(
        id=i, role=MEMBER, subpop=1, hparams={"lr": 0.1 * i, "opt": {"b": [1, 2]}}, step=0,
        checkpoint=None, info={"note": f"w{i}"},
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _checkpoint(i: int, worker: int = 1, **kw: object) -> CheckpointRecord:
    base = CheckpointRecord(
        id=i, worker=worker, step=10 * i, path=f"ckpt/{i}", checksum=f"sha256:{i:04x}",
        hparams={"lr": 0.5}, parent=None if i == 1 else i - 1, created=1000.0 + i,
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _segment(i: int, worker: int = 1, **kw: object) -> SegmentRecord:
    base = SegmentRecord(
        id=i, worker=worker, epoch=0, start_step=0, end_step=100, from_checkpoint=None,
        hparams={"lr": 0.5},
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _metric(
    worker: int, segment: int, step: int, value: float | None = 1.0, **extra: float | None
) -> MetricRow:
    return MetricRow(worker=worker, segment=segment, step=step, value=value, time=float(step),
                     extra=extra)


def _event(kind: str = "exploit", worker: int = 1, **kw: object) -> EventRecord:
    base = EventRecord(
        id=0, kind=kind, worker=worker, step=5, time=7.5, donor=2, donor_checkpoint=3,
        old_hparams={"lr": 1.0}, new_hparams={"lr": 0.8}, info={"q": 0.25},
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _holder(pid: int, token: str) -> LockHolder:
    return LockHolder(pid=pid, host=f"host-{pid}", since=1_700_000_000.0, token=token)


# -- empty store, experiment, state, ids -----------------------------------------------------


def test_empty_store(store: Store) -> None:
    assert store.experiment() is None
    assert store.get_state("round") is None
    assert store.lock_holder() is None
    assert store.workers() == []
    assert store.checkpoints(include_deleted=True) == []
    assert store.segments() == []
    assert store.metrics() == []
    assert store.events() == []


def test_experiment_created_once(store: Store) -> None:
    config = {"algorithm": "fire", "population": 8, "space": {"lr": [1e-4, 1e-1]}}
    store.create_experiment(config)
    got = store.experiment()
    assert got == config
    assert got is not None
    got["population"] = 99  # a returned copy, not the store's state
    assert store.experiment() == config
    with pytest.raises(StoreError, match="already"):
        store.create_experiment({"algorithm": "pbt"})
    assert store.experiment() == config


def test_state_get_put_default(store: Store) -> None:
    assert store.get_state("rng", default={"seed": 0}) == {"seed": 0}
    store.put_state("rng", {"state": [1, 2, 3], "pos": 4})
    store.put_state("round", 1)
    store.put_state("round", 2)
    store.put_state("none", None)
    assert store.get_state("rng") == {"state": [1, 2, 3], "pos": 4}
    assert store.get_state("round", default=0) == 2
    assert store.get_state("none", default="x") is None  # set to None is not "never set"


def test_next_id_is_monotonic_per_counter(store: Store) -> None:
    assert [store.next_id("checkpoint") for _ in range(3)] == [1, 2, 3]
    assert store.next_id("segment") == 1
    assert store.next_id("checkpoint") == 4


def test_non_json_values_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="lr"):
        store.put_worker(_worker(1, hparams={"lr": object()}))
    with pytest.raises(StoreError, match="round"):
        store.put_state("round", {1, 2})
    assert store.workers() == []
    assert store.get_state("round") is None


# -- records ---------------------------------------------------------------------------------


def test_records_round_trip(store: Store) -> None:
    w = _worker(3, role=EVALUATOR, subpop=2, step=40, checkpoint=7, failures=1, overwrites=2)
    c = _checkpoint(7, worker=3)
    s = _segment(5, worker=3, status=SEG_FAILED, attempts=2, to_checkpoint=7, error="x")
    m = _metric(3, 5, 40, value=-1.5, loss=0.25)
    e = _event(worker=3, donor=None, donor_checkpoint=None, old_hparams=None, new_hparams=None)
    store.put_worker(w)
    store.add_checkpoint(c)
    store.put_segment(s)
    store.add_metrics([m])
    e_id = store.add_event(e)
    assert store.worker(3) == w
    assert store.checkpoint(7) == c
    assert store.segment(5) == s
    assert store.metrics() == [m]
    assert store.events() == [dataclasses.replace(e, id=e_id)]
    # Records cross process boundaries (executors), so they must pickle.
    assert pickle.loads(pickle.dumps(store.worker(3))) == w


def test_records_are_immutable(store: Store) -> None:
    hparams = {"lr": 0.1, "opt": {"betas": [0.9, 0.99]}}
    store.put_worker(_worker(1, hparams=hparams))
    hparams["lr"] = 5.0  # the caller's dict is copied on the way in
    got = store.worker(1)
    with pytest.raises(TypeError):
        got.hparams["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        got.hparams["opt"]["betas"] = []
    got.hparams["opt"]["betas"].append(1.0)  # lists come back as fresh copies
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.step = 3  # type: ignore[misc]
    assert store.worker(1).hparams == {"lr": 0.1, "opt": {"betas": [0.9, 0.99]}}
    assert dict(got.hparams) | {"lr": 0.2} == {"lr": 0.2, "opt": got.hparams["opt"]}


def test_upserts_replace_whole_records(store: Store) -> None:
    store.put_worker(_worker(1, info={"a": 1}))
    store.put_worker(_worker(1, step=50, info={"b": 2}))
    assert store.worker(1) == _worker(1, step=50, info={"b": 2})
    store.put_segment(_segment(1, error="x"))
    store.put_segment(_segment(1, status="completed"))
    assert store.segment(1) == _segment(1, status="completed")
    assert len(store.workers()) == 1 and len(store.segments()) == 1


def test_unknown_ids_raise_key_error(store: Store) -> None:
    store.put_worker(_worker(1))
    store.add_checkpoint(_checkpoint(1))
    store.put_segment(_segment(1))
    for read in (
        lambda: store.worker(2),
        lambda: store.checkpoint(2),
        lambda: store.segment(2),
        lambda: store.mark_checkpoint_deleted(2),
    ):
        with pytest.raises(KeyError, match="2"):
            read()


def test_checkpoints_are_append_only(store: Store) -> None:
    store.add_checkpoint(_checkpoint(1))
    with pytest.raises(StoreError, match="checkpoint 1"):
        store.add_checkpoint(_checkpoint(1, path="elsewhere"))
    assert store.checkpoint(1) == _checkpoint(1)


def test_checkpoint_filters_and_deleted(store: Store) -> None:
    for i, worker in [(4, 2), (1, 1), (3, 1), (2, 2)]:
        store.add_checkpoint(_checkpoint(i, worker=worker))
    store.mark_checkpoint_deleted(3)
    store.mark_checkpoint_deleted(3)  # idempotent
    assert [c.id for c in store.checkpoints()] == [1, 2, 4]
    assert [c.id for c in store.checkpoints(include_deleted=True)] == [1, 2, 3, 4]
    assert [c.id for c in store.checkpoints(worker=1)] == [1]
    assert [c.id for c in store.checkpoints(worker=1, include_deleted=True)] == [1, 3]
    assert store.checkpoint(3) == _checkpoint(3, deleted=True)
    assert store.checkpoint(4).deleted is False


def test_segments_filtered_and_ordered(store: Store) -> None:
    for i, worker, status in [(3, 1, PENDING), (1, 2, COMPLETED), (2, 1, COMPLETED),
                              (4, 2, PENDING)]:
        store.put_segment(_segment(i, worker=worker, status=status))
    assert [s.id for s in store.segments()] == [1, 2, 3, 4]
    assert [s.id for s in store.segments(status=COMPLETED)] == [1, 2]
    assert [s.id for s in store.segments(worker=2)] == [1, 4]
    assert [s.id for s in store.segments(status=PENDING, worker=1)] == [3]
    assert store.segments(status="cancelled") == []


def test_metrics_ordered_and_filtered(store: Store) -> None:
    rows = [_metric(2, 1, 5), _metric(1, 3, 1), _metric(1, 2, 9), _metric(1, 2, 3)]
    store.add_metrics(rows[:2])
    store.add_metrics(rows[2:])
    store.add_metrics([])
    key = [(m.worker, m.segment, m.step) for m in store.metrics()]
    assert key == [(1, 2, 3), (1, 2, 9), (1, 3, 1), (2, 1, 5)]
    assert [m.step for m in store.metrics(worker=2)] == [5]
    store.add_metrics([_metric(3, 1, 1, value=math.nan), _metric(3, 1, 2, value=None)])
    assert [m.value for m in store.metrics(worker=3)] == [None, None]  # invalid observations


def test_metrics_keep_extra_named_values(store: Store) -> None:
    store.add_metrics([
        _metric(1, 1, 1, 0.5, loss=2.0, top5=0.9),
        _metric(1, 1, 2, 0.6, loss=math.nan, top5=math.inf),  # invalid: None, like the fitness
        _metric(1, 1, 3, 0.7),  # evaluate() returned one number here
        MetricRow(worker=1, segment=1, step=4, value=0.8, time=4.0),  # the default: none
    ])
    got = store.metrics()
    assert [dict(m.extra) for m in got] == [
        {"loss": 2.0, "top5": 0.9}, {"loss": None, "top5": None}, {}, {}]
    assert got[0] == _metric(1, 1, 1, 0.5, loss=2.0, top5=0.9)
    with pytest.raises(TypeError):
        got[0].extra["loss"] = 1.0  # type: ignore[index]
    assert isinstance(got[0].extra["loss"], float)
    # Values are numbers or None: anything else is refused, naming the metric, and nothing of
    # the batch is added.
    with pytest.raises(StoreError, match="'loss'"):
        store.add_metrics([_metric(2, 1, 1), _metric(2, 1, 2, loss="low")])  # type: ignore[arg-type]
    assert store.metrics(worker=2) == []


def test_metrics_are_append_only_per_batch(store: Store) -> None:
    store.add_metrics([_metric(1, 1, 1)])
    with pytest.raises(StoreError, match=r"\(1, 1, 1\)"):
        store.add_metrics([_metric(1, 1, 0), _metric(1, 1, 1, value=5.0), _metric(1, 1, 2)])
    with pytest.raises(StoreError, match=r"\(1, 1, 7\)"):  # a duplicate within one batch
        store.add_metrics([_metric(1, 1, 7), _metric(1, 1, 7)])
    assert store.metrics() == [_metric(1, 1, 1)]


def test_events_get_increasing_ids_and_filter(store: Store) -> None:
    ids = [
        store.add_event(_event("init", worker=1, id=99)),  # the id passed in is ignored
        store.add_event(_event("exploit", worker=2)),
        store.add_event(_event("exploit", worker=1)),
    ]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.id for e in store.events()] == ids
    assert [e.id for e in store.events(kind="exploit")] == ids[1:]
    assert [e.id for e in store.events(worker=1)] == [ids[0], ids[2]]
    assert [e.id for e in store.events(kind="exploit", worker=1)] == [ids[2]]
    assert store.events()[0] == _event("init", worker=1, id=ids[0])


# -- transactions ----------------------------------------------------------------------------


def _write_everything(store: Store) -> None:
    store.put_worker(_worker(1))
    store.add_checkpoint(_checkpoint(1))
    store.mark_checkpoint_deleted(1)
    store.put_segment(_segment(1))
    store.add_metrics([_metric(1, 1, 1, loss=0.5)])
    store.add_event(_event())
    store.put_state("round", 1)
    store.next_id("checkpoint")
    store.create_experiment({"a": 1})


def test_transaction_commits_all_writes(store: Store) -> None:
    with store.transaction():
        _write_everything(store)
    assert store.worker(1) == _worker(1)
    assert store.checkpoint(1).deleted
    assert store.segment(1) == _segment(1)
    assert store.metrics() == [_metric(1, 1, 1, loss=0.5)]
    assert len(store.events()) == 1
    assert store.get_state("round") == 1
    assert store.next_id("checkpoint") == 2
    assert store.experiment() == {"a": 1}


def test_transaction_rolls_back_every_write(store: Store) -> None:
    store.put_worker(_worker(1, step=5))
    store.add_checkpoint(_checkpoint(1))
    store.put_segment(_segment(1, epoch=3))
    store.put_state("round", 0)
    first_event = store.add_event(_event())
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.put_worker(_worker(1, step=99))
        store.put_worker(_worker(2))
        store.mark_checkpoint_deleted(1)
        store.add_checkpoint(_checkpoint(2))
        store.put_segment(_segment(1, epoch=4, status=COMPLETED))
        store.add_metrics([_metric(1, 1, 1, loss=0.5)])
        store.add_event(_event())
        store.put_state("round", 1)
        store.next_id("checkpoint")
        store.create_experiment({"a": 1})
        store.acquire_lock(_holder(1, "t"), stale_after_s=10, now=0.0)
        raise RuntimeError("boom")
    assert store.workers() == [_worker(1, step=5)]
    assert store.checkpoints(include_deleted=True) == [_checkpoint(1)]
    assert store.segment(1) == _segment(1, epoch=3)
    assert store.metrics() == []
    assert [e.id for e in store.events()] == [first_event]
    assert store.get_state("round") == 0
    assert store.next_id("checkpoint") == 1
    assert store.experiment() is None
    assert store.lock_holder() is None
    with store.transaction():  # the store is usable afterwards
        store.put_state("round", 2)
    assert store.get_state("round") == 2


def test_nested_transaction_raises(store: Store) -> None:
    with pytest.raises(StoreError, match="nest"), store.transaction():
        store.put_state("round", 1)
        with store.transaction():
            pass
    assert store.get_state("round") is None


def test_failed_write_inside_transaction_keeps_the_rest(store: Store) -> None:
    store.add_metrics([_metric(1, 1, 2)])
    with store.transaction():
        store.put_state("round", 1)
        with pytest.raises(StoreError):
            store.add_metrics([_metric(1, 1, 1), _metric(1, 1, 2)])
        store.put_state("after", True)
    assert store.get_state("round") == 1 and store.get_state("after") is True
    assert store.metrics() == [_metric(1, 1, 2)]  # the failed batch left nothing behind


def test_transaction_invisible_until_commit(store_factory: StoreFactory, store: Store) -> None:
    _persistent_only(store_factory)
    reader = store_factory()
    try:
        with store.transaction():
            store.put_worker(_worker(1))
            store.add_metrics([_metric(1, 1, 1, loss=0.5)])
            assert reader.workers() == [] and reader.metrics() == []
        assert reader.workers() == [_worker(1)]
        assert reader.metrics() == [_metric(1, 1, 1, loss=0.5)]
    finally:
        reader.close()


# -- persistence -----------------------------------------------------------------------------


def test_next_id_survives_reopen(store_factory: StoreFactory, store: Store) -> None:
    _persistent_only(store_factory)
    assert [store.next_id("w") for _ in range(2)] == [1, 2]
    store.close()
    again = store_factory()
    try:
        assert again.next_id("w") == 3
    finally:
        again.close()


def test_records_survive_reopen(store_factory: StoreFactory, store: Store) -> None:
    _persistent_only(store_factory)
    _write_everything(store)
    store.close()
    again = store_factory()
    try:
        assert again.experiment() == {"a": 1}
        assert again.workers() == [_worker(1)]
        assert again.checkpoints(include_deleted=True) == [_checkpoint(1, deleted=True)]
        assert again.segments() == [_segment(1)]
        assert again.metrics() == [_metric(1, 1, 1, loss=0.5)]
        assert [e.kind for e in again.events()] == ["exploit"]
        assert again.get_state("round") == 1
    finally:
        again.close()


# -- lock ------------------------------------------------------------------------------------


def test_lock_acquire_refresh_release(store: Store) -> None:
    me, other = _holder(10, "mine"), _holder(20, "theirs")
    store.acquire_lock(me, stale_after_s=30, now=100.0)
    assert store.lock_holder() == (me, 100.0)
    store.acquire_lock(me, stale_after_s=30, now=101.0)  # re-entrant for the same token
    store.refresh_lock(me, now=110.0)
    assert store.lock_holder() == (me, 110.0)
    store.refresh_lock(other, now=200.0)  # not the holder: no effect
    store.release_lock(other)
    assert store.lock_holder() == (me, 110.0)
    store.release_lock(me)
    assert store.lock_holder() is None
    store.acquire_lock(other, stale_after_s=30, now=111.0)
    assert store.lock_holder() == (other, 111.0)
    with pytest.raises(ConfigError, match="stale_after_s"):
        store.acquire_lock(other, stale_after_s=0, now=111.0)


def test_live_lock_blocks_a_second_holder(store: Store) -> None:
    store.acquire_lock(_holder(4242, "a"), stale_after_s=30, now=100.0)
    with pytest.raises(ExperimentLocked, match=r"pid 4242 .*host-4242"):
        store.acquire_lock(_holder(7, "b"), stale_after_s=30, now=130.0)  # exactly 30s: live
    assert store.lock_holder() == (_holder(4242, "a"), 100.0)


def test_stale_lock_is_taken_over(store: Store) -> None:
    store.acquire_lock(_holder(1, "a"), stale_after_s=30, now=100.0)
    store.refresh_lock(_holder(1, "a"), now=120.0)
    with pytest.raises(ExperimentLocked):
        store.acquire_lock(_holder(2, "b"), stale_after_s=30, now=149.0)
    store.acquire_lock(_holder(2, "b"), stale_after_s=30, now=150.5)
    assert store.lock_holder() == (_holder(2, "b"), 150.5)
    store.refresh_lock(_holder(1, "a"), now=151.0)  # the old holder lost it
    assert store.lock_holder() == (_holder(2, "b"), 150.5)


def test_lock_is_shared_between_connections(store_factory: StoreFactory, store: Store) -> None:
    _persistent_only(store_factory)
    second = store_factory()
    try:
        store.acquire_lock(_holder(1, "a"), stale_after_s=30, now=100.0)
        with pytest.raises(ExperimentLocked, match="pid 1"):
            second.acquire_lock(_holder(2, "b"), stale_after_s=30, now=101.0)
    finally:
        second.close()


def test_future_heartbeat_is_not_reported_as_a_negative_age(store: Store) -> None:
    # A heartbeat written by a host whose clock runs ahead of ours lies in our future.
    store.acquire_lock(_holder(1, "a"), stale_after_s=30, now=104.9)
    with pytest.raises(ExperimentLocked) as err:
        store.acquire_lock(_holder(2, "b"), stale_after_s=30, now=100.0)
    msg = str(err.value)
    assert "-4.9s" not in msg and "last heartbeat just now" in msg and "4.9s ahead" in msg


# -- fencing ---------------------------------------------------------------------------------


def test_fenced_transaction_commits_while_the_lock_is_held(store: Store) -> None:
    me = _holder(1, "mine")
    store.acquire_lock(me, stale_after_s=30, now=100.0)
    # A lapsed heartbeat alone does not fence: nobody else took the lock.
    with store.transaction(fence=me):
        store.put_state("round", 1)
    assert store.get_state("round") == 1
    store.release_lock(me)
    lost = r"pid 1 on host host-1\) lost the experiment lock: nobody holds it"
    with pytest.raises(LockLost, match=lost), store.transaction(fence=me):
        store.put_state("round", 2)
    assert store.get_state("round") == 1


def test_fenced_transaction_of_a_replaced_holder_commits_nothing(store: Store) -> None:
    old, new = _holder(1, "old"), _holder(2, "new")
    store.acquire_lock(old, stale_after_s=30, now=100.0)
    with store.transaction(fence=old):  # a fenced commit first: the next may skip reading
        store.next_id("checkpoint")
        store.add_event(_event())
    store.acquire_lock(new, stale_after_s=30, now=200.0)  # stale: taken over
    with pytest.raises(LockLost) as err, store.transaction(fence=old):
        # The check comes before the block or at its commit: none of this commits.
        store.put_state("round", 1)
        store.next_id("checkpoint")
        store.add_event(_event())
        store.add_checkpoint(_checkpoint(1))
        store.add_metrics([_metric(1, 1, 1)])
    assert isinstance(err.value, ExperimentLocked)
    assert "pid 1 on host host-1" in str(err.value) and "pid 2 on host host-2" in str(err.value)
    assert store.get_state("round") is None
    assert len(store.events()) == 1 and store.checkpoints() == [] and store.metrics() == []
    with store.transaction(fence=new):  # the new holder commits, and the store is usable
        store.put_state("round", 2)
        assert store.next_id("checkpoint") == 2
    assert store.get_state("round") == 2


def test_a_read_in_a_fenced_block_never_returns_to_a_lost_holder(store: Store) -> None:
    # What the controller relies on: it acts outside the store (cancels work) on what it read.
    old, new = _holder(1, "old"), _holder(2, "new")
    store.acquire_lock(old, stale_after_s=30, now=100.0)
    store.put_state("round", 1)
    with store.transaction(fence=old):
        store.next_id("checkpoint")
    store.acquire_lock(new, stale_after_s=30, now=200.0)  # stale: taken over
    read = []
    with pytest.raises(LockLost, match="pid 2 on host host-2"), store.transaction(fence=old):
        store.next_id("checkpoint")
        read.append(store.get_state("round"))
    assert read == []


def test_fenced_transactions_in_a_row_keep_ids_and_duplicate_checks(store: Store) -> None:
    """A backend may carry what it knows from one fenced commit to the next: it must stay
    exact across fenced and unfenced transactions, and across a refused or rolled-back one."""
    me = _holder(1, "me")
    store.acquire_lock(me, stale_after_s=30, now=100.0)
    with store.transaction(fence=me):
        assert [store.next_id("checkpoint"), store.next_id("segment")] == [1, 1]
        first = store.add_event(_event())
        store.add_checkpoint(_checkpoint(5))
        store.add_metrics([_metric(1, 5, 1)])
    assert store.next_id("checkpoint") == 2  # unfenced, in between
    with store.transaction(fence=me):
        assert store.next_id("checkpoint") == 3
        assert store.add_event(_event()) > first
        with pytest.raises(StoreError, match="checkpoint 5"):
            store.add_checkpoint(_checkpoint(5))  # committed by the transaction before
        store.add_checkpoint(_checkpoint(4))
        with pytest.raises(StoreError, match=r"\(1, 5, 1\)"):
            store.add_metrics([_metric(1, 5, 1)])
        store.add_metrics([_metric(1, 6, 1)])
        store.mark_checkpoint_deleted(5)
    with pytest.raises(RuntimeError), store.transaction(fence=me):
        store.next_id("checkpoint")
        store.add_checkpoint(_checkpoint(9))
        store.add_metrics([_metric(1, 9, 1)])
        raise RuntimeError("rolled back")
    with store.transaction(fence=me):
        assert store.next_id("checkpoint") == 4
        store.add_checkpoint(_checkpoint(9))  # rolled back before: absent
        store.add_metrics([_metric(1, 9, 1)])
        with pytest.raises(KeyError):
            store.mark_checkpoint_deleted(8)
        store.mark_checkpoint_deleted(4)
    assert [(c.id, c.deleted) for c in store.checkpoints(include_deleted=True)] == [
        (4, True), (5, True), (9, False)]
    assert [(m.segment, m.step) for m in store.metrics()] == [(5, 1), (6, 1), (9, 1)]
    assert len(store.events()) == 2


def test_fenced_ids_stay_unique_when_another_connection_writes(
    store_factory: StoreFactory, store: Store
) -> None:
    """Another connection writing under a live fence breaks the rule, but never the ids: the
    fenced transaction gets fresh ones or commits nothing."""
    _persistent_only(store_factory)
    me = _holder(1, "me")
    store.acquire_lock(me, stale_after_s=30, now=100.0)
    with store.transaction(fence=me):
        assert store.next_id("checkpoint") == 1
    other = store_factory()
    try:
        assert other.next_id("checkpoint") == 2
        other.put_state("note", "harmless")
        got: list[int] = []
        try:
            with store.transaction(fence=me):
                got.append(store.next_id("checkpoint"))
                store.put_state("mine", got[-1])
        except StoreError as exc:
            assert not isinstance(exc, LockLost) and "another connection wrote" in str(exc)
            assert store.get_state("mine") is None  # nothing committed
        else:
            assert got == [3] and store.get_state("mine") == 3
        with store.transaction(fence=me):  # the store carries on, from the real counters
            assert store.next_id("checkpoint") == (4 if got == [3] else 3)
    finally:
        other.close()


def test_fenced_transaction_sees_a_takeover_by_another_connection(
    store_factory: StoreFactory, store: Store
) -> None:
    _persistent_only(store_factory)
    old, new = _holder(1, "old"), _holder(2, "new")
    store.acquire_lock(old, stale_after_s=30, now=100.0)
    with store.transaction(fence=old):
        store.put_state("round", 1)
    other = store_factory()
    try:
        other.acquire_lock(new, stale_after_s=30, now=200.0)
        with pytest.raises(LockLost, match="pid 2 on host host-2"), store.transaction(fence=old):
            store.put_worker(_worker(1))
        assert other.workers() == [] and other.get_state("round") == 1
    finally:
        other.close()


# -- many processes --------------------------------------------------------------------------


def claim(store: Store, segment_id: int, owner: str) -> bool:
    """Claim a pending segment once: a compare-and-set built from a read-modify-write.

    Call it inside ``store.transaction()``: the transaction makes the read and the two writes
    (the segment marked completed, ``owner`` recorded in state ``claimed/<id>``) one atomic
    step, so of several processes claiming the same segment exactly one gets True.
    """
    seg = store.segment(segment_id)
    if seg.status != PENDING:
        return False
    store.put_segment(dataclasses.replace(seg, status=COMPLETED))
    store.put_state(f"claimed/{segment_id}", owner)
    return True


def contend(
    factory: Callable[[], Store],
    owner: str,
    segment_ids: list[int],
    seed: int,
    rounds: Barrier | None = None,
) -> list[int]:
    """Try to :func:`claim` every segment of ``segment_ids``; return the ones it got.

    Each try is one transaction that also increments the state counters ``"tries"`` and (on
    success) ``"claims"`` by read-modify-write, so a lost update shows up as a final count
    below the number of tries. With ``rounds``, all processes make their i-th try together,
    so they really contend (however the OS schedules them).
    """
    ids = list(segment_ids)
    random.Random(seed).shuffle(ids)
    claimed = []
    with factory() as store:
        for segment_id in ids:
            if rounds is not None:
                rounds.wait()
            with store.transaction():
                store.put_state("tries", store.get_state("tries", 0) + 1)
                if claim(store, segment_id, owner):
                    claimed.append(segment_id)
                    store.put_state("claims", store.get_state("claims", 0) + 1)
    return claimed


def _contend_process(
    results: Queue[tuple[str, list[int]]], factory: Callable[[], Store], owner: str, *args: Any
) -> None:
    results.put((owner, contend(factory, owner, *args)))


def check_concurrent_writers(
    factory: Callable[[], Store], processes: int = 8, segments: int = 32
) -> None:
    """Several processes claim segments of one store: each is claimed once, no update lost.

    ``factory`` must pickle (e.g. ``functools.partial(SQLiteStore, path)``): the processes are
    spawned, as on macOS and Windows.
    """
    ids = list(range(1, segments + 1))
    with factory() as store:
        for i in ids:
            store.put_segment(_segment(i))
    ctx = multiprocessing.get_context("spawn")
    rounds, results = ctx.Barrier(processes, timeout=120), ctx.Queue()
    workers = [
        ctx.Process(target=_contend_process, args=(results, factory, f"p{k}", ids, k, rounds))
        for k in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        claims = dict(results.get(timeout=120) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    assert sorted(i for got in claims.values() for i in got) == ids, "each claimed exactly once"
    assert sum(1 for got in claims.values() if got) >= 2, "the processes did not contend"
    with factory() as store:
        assert store.get_state("tries") == processes * segments, "a read-modify-write was lost"
        assert store.get_state("claims") == segments, "a read-modify-write was lost"
        owners = {i: owner for owner, got in claims.items() for i in got}
        assert {i: store.get_state(f"claimed/{i}") for i in ids} == owners
        assert [s.id for s in store.segments(status=COMPLETED)] == ids


# --------------------------------------------------------------------------------------------
# Read-only summaries (dashboard): event_counts, checkpoint_metrics


__all__ += ["test_summary_queries"]


def test_summary_queries(store: Store) -> None:
    # Imported here to keep this block self-contained (others edit the top of the file).
    from firepbt.store.base import COMPLETED, SEG_FAILED

    assert store.event_counts() == {}
    assert store.checkpoint_metrics([]) == {}
    for kind in ("exploit", "exploit", "transfer"):
        store.add_event(_event(kind))
    assert store.event_counts() == {"exploit": 2, "transfer": 1}
    # Checkpoint 10 written by segment 1 (last valid point 0.7, the later None is skipped);
    # checkpoint 11 by segment 2, which recorded only None; checkpoint 12 by a failed segment.
    for cid in (10, 11, 12):
        store.add_checkpoint(_checkpoint(cid, worker=1))
    store.put_segment(_segment(1, worker=1, status=COMPLETED, to_checkpoint=10))
    store.put_segment(_segment(2, worker=1, status=COMPLETED, to_checkpoint=11))
    store.put_segment(_segment(3, worker=1, status=SEG_FAILED, to_checkpoint=12))
    store.add_metrics([_metric(1, 1, 1, 0.5), _metric(1, 1, 2, 0.7), _metric(1, 1, 3, None),
                       _metric(1, 2, 4, None), _metric(1, 3, 5, 9.0), _metric(2, 1, 1, 3.0)])
    assert store.checkpoint_metrics([10, 11, 12, 99]) == {10: 0.7, 11: None, 12: None,
                                                          99: None}
