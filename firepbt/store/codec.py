"""The row codec every store backend shares, and the lock rules they all apply.

Records are kept as *rows*: tuples of plain values with the mappings JSON-encoded, exactly what
the SQL backends write. So every backend accepts the same values (JSON-able ones), returns the
same types, and a record can never share mutable state with its caller: each read decodes fresh
objects and the mappings come back as read-only :class:`FrozenDict`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar, cast

from firepbt.errors import ConfigError, ExperimentLocked, LockLost, StoreError
from firepbt.store.base import (
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    WorkerRecord,
)


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
    if name == "extra":
        return "metrics"
    return "bool" if name == "deleted" else "metric" if name == "value" else "scalar"


def _metric_value(value: Any, what: str) -> float | None:
    """A stored metric value: a finite float, or None (NaN, +-inf and None alike)."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        plain = getattr(value, "tolist", lambda: value)()  # a numpy scalar
        if not isinstance(plain, int | float) or isinstance(plain, bool):
            raise StoreError(f"{what} = {value!r} cannot be stored: expected a number or None")
        value = plain
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_json(metrics: Mapping[str, Any], what: str) -> str | None:
    """Named metric values as canonical JSON text; None (NULL) when there are none."""
    if not metrics:  # the common case (evaluate() returned one number): no JSON at all
        return None
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise StoreError(f"{what}: metric name {name!r} cannot be stored: names are strings")
        out[name] = _metric_value(value, f"{what}[{name!r}]")
    return json.dumps(out, sort_keys=True)


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
        elif kind == "metrics":
            value = metrics_json(value, f"{cls_name}.{name}")
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


# The extra metrics of a row without any: one shared instance (it is read-only).
_NO_EXTRA = FrozenDict()


def from_row(cls: type[R], row: Sequence[Any]) -> R:
    """Decode a row written by :func:`to_row` into a fresh record."""
    # Called once per row on every read (hundreds of thousands for metrics): keep it lean.
    if cls is MetricRow:  # only the extra metrics need decoding, and most rows have none
        worker, segment, step, value, time, extra = row
        rec = MetricRow(worker, segment, step, value, time,
                        _NO_EXTRA if extra is None else load_json(extra))
        return cast(R, rec)
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
