"""Segments: the work queue, stale and void results, retries and the synchronous barrier."""

from __future__ import annotations

from firepbt.engine.segments import Segments
from firepbt.store import MemoryStore
from firepbt.store.base import WorkerRecord


def queue() -> Segments:
    store = MemoryStore()
    segments = Segments(store, {})
    with store.transaction():
        for wid in range(3):
            segments.create(WorkerRecord(wid, "member", 1, {"lr": 0.1}, 10, 100 + wid), 20)
    return segments


def test_dispatch_keeps_to_the_capacity_in_creation_order() -> None:
    s = queue()
    first, second = s.next_to_dispatch(2), s.next_to_dispatch(2)
    assert first is not None and second is not None and s.next_to_dispatch(2) is None
    assert (first.worker, second.worker) == (0, 1) and s.sources() == {100, 101, 102}
    assert (first.start_step, first.end_step, first.from_checkpoint) == (10, 20, 100)


def test_a_retry_is_a_new_epoch_and_the_old_result_is_stale() -> None:
    s = queue()
    seg = s.next_to_dispatch(3)
    assert seg is not None
    with s.store.transaction():
        s.retry(seg, attempts=1, error="boom")
    again = s.open[seg.id]
    assert (again.epoch, again.attempts) == (1, 1) and again.to_checkpoint != seg.to_checkpoint
    assert s.returned(seg.id, 0, epoch=0) is None  # stale: the old lease's result
    assert s.next_to_dispatch(3) is not None and s.next_to_dispatch(3) is not None
    assert s.returned(seg.id, 0, epoch=1) == again


def test_cancelled_work_in_flight_holds_its_slot_until_its_result_is_dropped() -> None:
    s = queue()
    seg = s.next_to_dispatch(1)
    assert seg is not None
    with s.store.transaction():
        s.cancel(0)
        s.cancel(1)  # pending: simply dropped
    assert s.store.segment(seg.id).status == "cancelled" and not s.busy(0)
    assert s.next_to_dispatch(1) is None  # the cancelled one is still running
    assert s.returned(seg.id, 0, epoch=0) is None and s.cancelled == set()
    assert s.next_to_dispatch(1) is not None and s.pending == type(s.pending)()


def test_a_synchronous_round_ends_when_no_work_is_left() -> None:
    s = queue()
    running = [s.next_to_dispatch(3) for _ in range(3)]
    s.waiting |= {2, 0}
    assert s.round_over() is None  # three segments still open
    with s.store.transaction():
        for seg in running:
            assert seg is not None and s.returned(seg.id, seg.worker, seg.epoch) == seg
            if seg.worker == 1:
                s.fail(seg, attempts=3, error="x")
            else:
                s.complete(seg)
    assert s.round_over() == [0, 2] and not s.waiting and s.finished()
