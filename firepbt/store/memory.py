"""In-memory experiment store (the reference backend) and the row codec every backend shares.

Records are kept as *rows*: tuples of plain values with the mappings JSON-encoded, exactly what
the SQLite backend writes. So both backends accept the same values (JSON-able ones), return the
same types, and a record can never share mutable state with its caller: each read decodes fresh
objects and the mappings come back as read-only :class:`FrozenDict`.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from firepbt.errors import ConfigError, ExperimentLocked, LockLost, StoreError
from firepbt.store.base import (
    PENDING,
    RUNNING,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)

# --------------------------------------------------------------------------------------------
# Row codec (shared with firepbt.store.sqlite)
# --------------------------------------------------------------------------------------------


class FrozenDict(dict[str, Any]):
    """A read-only ``dict``: the type of every mapping inside a record a store returns.

    A dict subclass (not ``MappingProxyType``) so records still pickle, deep-copy and
    ``json.dumps``; ``dict(d)`` or ``{**d, ...}`` gives a mutable copy.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("store records are read-only; copy with dict(...) before changing them")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        # The default dict reduction re-inserts items one by one, which __setitem__ refuses.
        return (FrozenDict, (dict(self),))


R = TypeVar("R", WorkerRecord, CheckpointRecord, SegmentRecord, MetricRow, EventRecord)
Row = tuple[Any, ...]

JSON_FIELDS = frozenset({"hparams", "info", "old_hparams", "new_hparams"})


def _plain(obj: Any) -> Any:
    """json ``default`` hook: mappings become dicts, numpy scalars/arrays plain Python."""
    if isinstance(obj, Mapping):
        return dict(obj)
    tolist = getattr(obj, "tolist", None)  # duck-typed so numpy stays an optional import
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON-able")


def dump_json(value: Any, what: str) -> str:
    """Encode ``value`` canonically (sorted keys); ``StoreError`` naming ``what`` if impossible."""
    try:
        return json.dumps(value, sort_keys=True, default=_plain)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} = {value!r} cannot be stored: {exc}") from None


def load_json(text: str, frozen: bool = True) -> Any:
    """Decode stored JSON; objects become :class:`FrozenDict` unless ``frozen`` is False."""
    return json.loads(text, object_hook=FrozenDict if frozen else None)


def _scalar(value: Any, what: str) -> Any:
    if value is None or isinstance(value, str | int | float):
        return value
    tolist = getattr(value, "tolist", None)  # numpy scalars, e.g. an np.int64 id
    if callable(tolist) and isinstance(plain := tolist(), str | int | float):
        return plain
    raise StoreError(f"{what} = {value!r} cannot be stored: expected str, int, float or None")


def columns(cls: type[R]) -> tuple[str, ...]:
    """Column names of a record type, in row order (the dataclass field order)."""
    return tuple(f.name for f in fields(cls))


def _kind(name: str) -> str:
    if name in JSON_FIELDS:
        return "json"
    return "bool" if name == "deleted" else "metric" if name == "value" else "scalar"


# Per record type, (field name, kind) of each column in row order; computed once.
_ENCODERS: dict[type, tuple[tuple[str, str], ...]] = {
    cls: tuple((f.name, _kind(f.name)) for f in fields(cls))
    for cls in (WorkerRecord, CheckpointRecord, SegmentRecord, MetricRow, EventRecord)
}


def to_row(rec: R) -> Row:
    """Encode a record as a row of plain values (mappings as JSON text, NaN metrics as None)."""
    # Called several times per controller decision: keep it lean (names are built on error only).
    row: list[Any] = []
    cls_name = type(rec).__name__
    for name, kind in _ENCODERS[type(rec)]:
        value = getattr(rec, name)
        if kind == "json":
            value = None if value is None else dump_json(value, f"{cls_name}.{name}")
        elif kind == "bool":
            value = int(bool(value))
        elif value is None or type(value) in (str, int, float):
            if kind == "metric" and value is not None:
                value = None if math.isnan(value) else float(value)
        else:
            value = _scalar(value, f"{cls_name}.{name}")
            if kind == "metric":
                value = None if value is None or math.isnan(value) else float(value)
        row.append(value)
    return tuple(row)


# Per record type and column, how to decode a stored value (None: use it as it is).
_DECODERS: dict[type, tuple[Callable[[Any], Any] | None, ...]] = {
    cls: tuple(
        load_json if f.name in JSON_FIELDS else bool if f.name == "deleted" else None
        for f in fields(cls)
    )
    for cls in (WorkerRecord, CheckpointRecord, SegmentRecord, MetricRow, EventRecord)
}


def from_row(cls: type[R], row: Sequence[Any]) -> R:
    """Decode a row written by :func:`to_row` into a fresh record."""
    # Called once per row on every read (hundreds of thousands for metrics): keep it lean.
    if cls is MetricRow:  # no column needs decoding
        return cls(*row)
    values = [
        value if decode is None or value is None else decode(value)
        for decode, value in zip(_DECODERS[cls], row, strict=True)
    ]
    return cls(*values)


K = TypeVar("K", bound=Hashable)


def first_duplicate(keys: Iterable[K], exists: Callable[[K], bool]) -> K | None:
    """The first key repeated within ``keys`` or already stored, or None."""
    seen: set[K] = set()
    for key in keys:
        if key in seen or exists(key):
            return key
        seen.add(key)
    return None


def metric_key(row: MetricRow) -> tuple[int, int, int]:
    """The append-only key of a metric row."""
    return (row.worker, row.segment, row.step)


def check_lock(
    current: tuple[LockHolder, float] | None, holder: LockHolder, stale_after_s: float, now: float
) -> None:
    """Raise ``ExperimentLocked`` unless ``holder`` may take the lock at ``now``.

    Free, already ours (same token) or stale (no heartbeat for more than ``stale_after_s``).
    """
    if not stale_after_s > 0:
        raise ConfigError(f"stale_after_s = {stale_after_s!r}: must be > 0")
    if current is None:
        return
    other, heartbeat = current
    if other.token == holder.token or now - heartbeat > stale_after_s:
        return
    raise ExperimentLocked(
        f"experiment in use by {describe_holder(other)}; last heartbeat "
        f"{heartbeat_age(heartbeat, now)} (the lock goes stale after {stale_after_s:g}s "
        "without one)"
    )


def describe_holder(holder: LockHolder) -> str:
    """``pid P on host H since <ISO time>``: who holds (or held) a lock, for messages."""
    since = datetime.fromtimestamp(holder.since, tz=UTC).isoformat(timespec="seconds")
    return f"pid {holder.pid} on host {holder.host} since {since}"


def heartbeat_age(heartbeat: float, now: float) -> str:
    """How long ago ``heartbeat`` was, in words; never a negative age.

    A heartbeat can lie in our future: it was written by another host whose clock runs ahead,
    or by a takeover that dated its heartbeat just past the stale one. Saying "-4.9s ago" would
    read as a bug; say "just now" and how far ahead that clock is instead.
    """
    age = now - heartbeat
    if age >= 0.05:
        return f"{age:.1f}s ago"
    if age > -0.05:
        return "just now"
    return f"just now (its clock is {-age:.1f}s ahead of ours)"


def check_fence(current: tuple[LockHolder, float] | None, fence: LockHolder) -> None:
    """Raise ``LockLost`` unless ``fence`` holds the lock (by token) in ``current``.

    Only the token counts: a holder whose heartbeat lapsed but whom nobody replaced still owns
    the experiment, and may go on committing.
    """
    if current is not None and current[0].token == fence.token:
        return
    who = "nobody holds it now" if current is None else f"{describe_holder(current[0])} holds it"
    raise LockLost(
        f"this controller (pid {fence.pid} on host {fence.host}) lost the experiment lock: "
        f"{who}; stopping without committing (the store keeps the other controller's state)"
    )


# --------------------------------------------------------------------------------------------
# The in-memory backend
# --------------------------------------------------------------------------------------------

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

    def claim_segment(self, segment_id: int, epoch: int, owner: str) -> bool:
        with self._mutex:
            rec = self.segment(segment_id)
            if rec.status != PENDING or rec.epoch != epoch:
                return False
            rec = replace(rec, status=RUNNING, owner=owner)
            self._set("segments", segment_id, to_row(rec))
            return True

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
