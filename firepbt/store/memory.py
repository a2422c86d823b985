"""In-memory experiment store: the reference backend.

It keeps records as the rows of :mod:`firepbt.store.codec`, exactly what the SQL backends write,
so it accepts the same values and returns the same (fresh, read-only) records as they do.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from firepbt.errors import StoreError
from firepbt.store.base import (
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)
from firepbt.store.codec import (
    FrozenDict,
    check_fence,
    check_lock,
    dump_json,
    first_duplicate,
    from_row,
    load_json,
    metric_key,
    to_row,
)

__all__ = ["FrozenDict", "MemoryStore"]  # FrozenDict: re-exported where it used to live

_MISSING = object()
_TABLES = (
    "experiment",
    "state",
    "counters",
    "lock",
    "workers",
    "checkpoints",
    "segments",
    "metrics",
    "events",
)


class MemoryStore(Store):
    """A store that lives in this process only (tests, simulations, notebooks).

    Thread-safe: one re-entrant mutex serialises calls, and a transaction holds it from start
    to end so other threads never see half of one. Rollback replays an undo log, so a
    transaction costs O(its writes), not O(store size).
    """

    def __init__(self) -> None:
        self.url = "memory://"
        self._tables: dict[str, dict[Any, Any]] = {name: {} for name in _TABLES}
        self._undo: list[tuple[str, Any, Any]] | None = None  # None: not in a transaction
        self._mutex = threading.RLock()
        self._event_seq = 0

    # -- primitives ----------------------------------------------------------------------
    def _set(self, table: str, key: Any, value: Any) -> None:
        """Write one entry (``_MISSING`` deletes it), remembering the old one for rollback."""
        entries = self._tables[table]
        if self._undo is not None:
            self._undo.append((table, key, entries.get(key, _MISSING)))
        if value is _MISSING:
            entries.pop(key, None)
        else:
            entries[key] = value

    def _get(self, table: str, key: Any, what: str) -> Any:
        try:
            return self._tables[table][key]
        except KeyError:
            raise KeyError(f"unknown {what} {key!r}") from None

    def _rows(self, table: str) -> list[Any]:
        return [row for _, row in sorted(self._tables[table].items())]

    # -- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to release; the data lives as long as the object."""

    @contextlib.contextmanager
    def transaction(self, fence: LockHolder | None = None) -> Iterator[None]:
        with self._mutex:
            if self._undo is not None:
                raise StoreError("transactions do not nest: a transaction is already open")
            if fence is not None:
                # The mutex is held until the block ends, so nobody can take the lock between
                # this check and the end of the transaction.
                check_fence(self._tables["lock"].get(1), fence)
            self._undo = []
            event_seq = self._event_seq
            try:
                yield
            except BaseException:
                for table, key, old in reversed(self._undo):
                    entries = self._tables[table]
                    if old is _MISSING:
                        entries.pop(key, None)
                    else:
                        entries[key] = old
                self._event_seq = event_seq
                raise
            finally:
                self._undo = None

    # -- experiment ----------------------------------------------------------------------
    def create_experiment(self, config: Mapping[str, Any]) -> None:
        text = dump_json(config, "experiment config")
        with self._mutex:
            if 1 in self._tables["experiment"]:
                raise StoreError("the store already holds an experiment; use a new store")
            self._set("experiment", 1, text)

    def experiment(self) -> dict[str, Any] | None:
        with self._mutex:
            text = self._tables["experiment"].get(1)
        return None if text is None else load_json(text, frozen=False)

    def put_state(self, key: str, value: Any) -> None:
        text = dump_json(value, f"state {key!r}")
        with self._mutex:
            self._set("state", key, text)

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._mutex:
            text = self._tables["state"].get(key)
        return default if text is None else load_json(text, frozen=False)

    # -- lock ----------------------------------------------------------------------------
    def acquire_lock(self, holder: LockHolder, stale_after_s: float, now: float) -> None:
        with self._mutex:
            check_lock(self.lock_holder(), holder, stale_after_s, now)
            self._set("lock", 1, (holder, now))

    def refresh_lock(self, holder: LockHolder, now: float) -> None:
        with self._mutex:
            current = self.lock_holder()
            if current is not None and current[0].token == holder.token:
                self._set("lock", 1, (current[0], now))

    def release_lock(self, holder: LockHolder) -> None:
        with self._mutex:
            current = self.lock_holder()
            if current is not None and current[0].token == holder.token:
                self._set("lock", 1, _MISSING)

    def lock_holder(self) -> tuple[LockHolder, float] | None:
        with self._mutex:
            return self._tables["lock"].get(1)

    # -- ids -----------------------------------------------------------------------------
    def next_id(self, counter: str) -> int:
        with self._mutex:
            value = int(self._tables["counters"].get(counter, 0)) + 1
            self._set("counters", counter, value)
            return value

    # -- workers -------------------------------------------------------------------------
    def put_worker(self, rec: WorkerRecord) -> None:
        row = to_row(rec)
        with self._mutex:
            self._set("workers", rec.id, row)

    def workers(self) -> list[WorkerRecord]:
        with self._mutex:
            rows = self._rows("workers")
        return [from_row(WorkerRecord, row) for row in rows]

    def worker(self, worker_id: int) -> WorkerRecord:
        with self._mutex:
            return from_row(WorkerRecord, self._get("workers", worker_id, "worker"))

    # -- checkpoints ---------------------------------------------------------------------
    def add_checkpoint(self, rec: CheckpointRecord) -> None:
        row = to_row(rec)
        with self._mutex:
            if rec.id in self._tables["checkpoints"]:
                raise StoreError(f"checkpoint {rec.id} already exists; checkpoints are append-only")
            self._set("checkpoints", rec.id, row)

    def checkpoint(self, checkpoint_id: int) -> CheckpointRecord:
        with self._mutex:
            row = self._get("checkpoints", checkpoint_id, "checkpoint")
        return from_row(CheckpointRecord, row)

    def checkpoints(
        self, worker: int | None = None, include_deleted: bool = False
    ) -> list[CheckpointRecord]:
        with self._mutex:
            recs = [from_row(CheckpointRecord, row) for row in self._rows("checkpoints")]
        return [
            r
            for r in recs
            if (worker is None or r.worker == worker) and (include_deleted or not r.deleted)
        ]

    def mark_checkpoint_deleted(self, checkpoint_id: int) -> None:
        with self._mutex:
            rec = from_row(CheckpointRecord, self._get("checkpoints", checkpoint_id, "checkpoint"))
            self._set("checkpoints", checkpoint_id, to_row(replace(rec, deleted=True)))

    # -- segments ------------------------------------------------------------------------
    def put_segment(self, rec: SegmentRecord) -> None:
        row = to_row(rec)
        with self._mutex:
            self._set("segments", rec.id, row)

    def segment(self, segment_id: int) -> SegmentRecord:
        with self._mutex:
            return from_row(SegmentRecord, self._get("segments", segment_id, "segment"))

    def segments(self, status: str | None = None, worker: int | None = None) -> list[SegmentRecord]:
        with self._mutex:
            recs = [from_row(SegmentRecord, row) for row in self._rows("segments")]
        return [
            r
            for r in recs
            if (status is None or r.status == status) and (worker is None or r.worker == worker)
        ]

    # -- metrics -------------------------------------------------------------------------
    def add_metrics(self, rows: Sequence[MetricRow]) -> None:
        encoded = [(metric_key(r), to_row(r)) for r in rows]
        with self._mutex:
            stored = self._tables["metrics"]
            dup = first_duplicate((key for key, _ in encoded), stored.__contains__)
            if dup is not None:
                raise StoreError(
                    f"metric row (worker, segment, step) = {dup} already exists; "
                    "metrics are append-only (nothing from this batch was added)"
                )
            for key, row in encoded:
                self._set("metrics", key, row)

    def metrics(self, worker: int | None = None) -> list[MetricRow]:
        with self._mutex:
            recs = [from_row(MetricRow, row) for row in self._rows("metrics")]
        return [r for r in recs if worker is None or r.worker == worker]

    # -- events --------------------------------------------------------------------------
    def add_event(self, rec: EventRecord) -> int:
        row = to_row(rec)
        with self._mutex:
            self._event_seq += 1
            self._set("events", self._event_seq, (self._event_seq, *row[1:]))
            return self._event_seq

    def events(self, kind: str | None = None, worker: int | None = None) -> list[EventRecord]:
        with self._mutex:
            recs = [from_row(EventRecord, row) for row in self._rows("events")]
        return [
            r
            for r in recs
            if (kind is None or r.kind == kind) and (worker is None or r.worker == worker)
        ]
