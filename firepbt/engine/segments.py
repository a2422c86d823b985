"""The work queue: segments pending, in flight and cancelled, and the synchronous barrier."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from firepbt.states import CANCELLED, COMPLETED, SEG_FAILED
from firepbt.store.base import SegmentRecord, Store, WorkerRecord

log = logging.getLogger("firepbt")


class Segments:
    """Open segments (at most one per worker), the dispatch queue and who waits for a round.

    Args:
        store: the experiment's store (segments are written inside the caller's transaction).
        open_: segments pending when the run starts (a resume re-runs them).
        waiting: synchronous mode: workers that finished their segment of the current round.
    """

    def __init__(self, store: Store, open_: Mapping[int, SegmentRecord],
                 waiting: Iterable[int] = ()) -> None:
        self.store = store
        self.open: dict[int, SegmentRecord] = dict(open_)
        self.pending: deque[int] = deque(sorted(self.open))
        self.of_worker: dict[int, int] = {seg.worker: sid for sid, seg in self.open.items()}
        self.inflight: set[int] = set()  # submitted to the executor, result not yet handled
        self.cancelled: set[int] = set()  # in flight, but cancelled: their result is void
        self.waiting: set[int] = set(waiting)
        self._seeds: dict[int, int] = {}

    def finished(self) -> bool:
        return not self.pending and not self.inflight

    def sources(self) -> set[int]:
        """The checkpoints open segments start from."""
        return {s.from_checkpoint for s in self.open.values() if s.from_checkpoint is not None}

    def busy(self, wid: int) -> bool:
        """Whether ``wid`` has a segment pending or in flight."""
        return wid in self.of_worker

    def create(self, w: WorkerRecord, end_step: int) -> SegmentRecord:
        """The next segment of ``w``, up to ``end_step`` (pending until dispatched)."""
        seg = SegmentRecord(
            id=self.store.next_id("segment"),
            worker=w.id,
            epoch=0,
            start_step=w.step,
            end_step=end_step,
            from_checkpoint=w.checkpoint,
            hparams=dict(w.hparams),
            to_checkpoint=self.store.next_id("checkpoint"),
        )
        self.store.put_segment(seg)
        self.open[seg.id] = seg
        self.pending.append(seg.id)
        self.of_worker[w.id] = seg.id
        return seg

    def next_to_dispatch(self, capacity: int) -> SegmentRecord | None:
        """The oldest pending segment, now in flight, while fewer than ``capacity`` are."""
        if not self.pending or len(self.inflight) >= capacity:
            return None
        sid = self.pending.popleft()
        self.inflight.add(sid)
        return self.open[sid]

    def returned(self, sid: int, worker: int, epoch: int) -> SegmentRecord | None:
        """A result came back: the segment it belongs to, or None for a stale or void one."""
        self.inflight.discard(sid)
        seg = self.open.get(sid)
        if seg is not None and seg.epoch == epoch:
            return seg
        if sid in self.cancelled:
            self.cancelled.discard(sid)
            log.debug("dropped the result of cancelled segment %d (worker %d)", sid, worker)
        else:
            log.warning("rejected a stale result for worker %d segment %d (epoch %d)",
                        worker, sid, epoch)
        return None

    def seed(self, run_seed: int, wid: int) -> int:
        """Each worker's seed: derived from the run's seed and its id, stable across resumes."""
        if wid not in self._seeds:
            ss = np.random.SeedSequence(run_seed, spawn_key=(wid,))
            self._seeds[wid] = int(ss.generate_state(1)[0])
        return self._seeds[wid]

    def complete(self, seg: SegmentRecord) -> None:
        self.store.put_segment(replace(seg, status=COMPLETED))
        self._close(seg)

    def retry(self, seg: SegmentRecord, attempts: int, error: str, queue: bool = True) -> None:
        """Re-run ``seg`` from its start checkpoint under a new lease (a new epoch) and a new
        checkpoint id; ``queue=False`` keeps it for the resume only."""
        again = replace(seg, epoch=seg.epoch + 1, attempts=attempts, error=error,
                        to_checkpoint=self.store.next_id("checkpoint"))
        self.store.put_segment(again)
        if queue:
            self.open[seg.id] = again
            self.pending.append(seg.id)

    def fail(self, seg: SegmentRecord, attempts: int, error: str) -> None:
        self.store.put_segment(replace(seg, status=SEG_FAILED, attempts=attempts, error=error))
        self._close(seg)

    def cancel(self, wid: int) -> None:
        """Drop pending and in-flight work of ``wid`` (its weights were replaced)."""
        sid = self.of_worker.pop(wid, None)
        if sid is not None:
            self.store.put_segment(replace(self.open.pop(sid), status=CANCELLED))
            if sid in self.pending:
                self.pending.remove(sid)
            elif sid in self.inflight:
                # The executor still runs it and holds its slot until the result comes back:
                # it stays in flight (so dispatch never submits beyond capacity), and its
                # result, finding no segment, is dropped quietly as expected.
                self.cancelled.add(sid)
        self.waiting.discard(wid)

    def round_over(self) -> list[int] | None:
        """Synchronous mode: once no work is left in the round, who waited for it (sorted)."""
        if self.open or not self.waiting:
            return None
        ready = sorted(self.waiting)
        self.waiting.clear()
        return ready

    def _close(self, seg: SegmentRecord) -> None:
        del self.open[seg.id]
        del self.of_worker[seg.worker]
