"""SQLite experiment store: one file, safe for one writer and many concurrent readers.

Durability model: the file uses the WAL journal with ``synchronous=NORMAL``. A committed
transaction survives the *process* being killed at any point (our crash model: SIGKILL,
OOM, Ctrl-C); after a power loss or OS crash the last few commits may be lost, but the file
stays consistent. A torn WAL tail (a frame half written when the process died) is ignored by
SQLite on the next open, keeping every transaction committed before it.

Concurrency: each store object owns one connection, guarded by a re-entrant mutex so threads
can share it. Writes run in ``BEGIN IMMEDIATE`` transactions, so a writer takes the write lock
up front and never fails half-way on a lock upgrade; a busy file is waited for briefly
(``busy_timeout``) and the call retried with jittered naps until ``timeout_s`` has passed. Readers
(CLI, reports) open the same file and read while a controller writes.

The file is never created in place: a new store is built under a temporary name and linked
into place, so any existing file that is not a complete firepbt store (empty, truncated,
foreign) is refused with ``StoreCorrupt`` and left untouched.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from firepbt.errors import ConfigError, FormatVersionError, StoreCorrupt, StoreError
from firepbt.store.base import (
    COMPLETED,
    FORMAT_VERSION,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)
from firepbt.store.codec import (
    check_fence,
    check_lock,
    columns,
    dump_json,
    first_duplicate,
    from_row,
    load_json,
    metric_key,
    to_row,
)

T = TypeVar("T")
R = TypeVar("R", WorkerRecord, CheckpointRecord, SegmentRecord, MetricRow, EventRecord)

_HEADER = b"SQLite format 3\x00"
# SQLite's busy handler waits at most this long per attempt; _retry then tries again.
_BUSY_TIMEOUT_S = 0.05

# Column names match the record fields (firepbt.store.codec.columns), in the same order.
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE experiment (id INTEGER PRIMARY KEY CHECK (id = 1), config TEXT NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE lock (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
    since REAL NOT NULL, token TEXT NOT NULL, heartbeat REAL NOT NULL);
CREATE TABLE workers (
    id INTEGER PRIMARY KEY, role TEXT NOT NULL, subpop INTEGER NOT NULL, hparams TEXT NOT NULL,
    step INTEGER NOT NULL, checkpoint INTEGER, status TEXT NOT NULL, failures INTEGER NOT NULL,
    overwrites INTEGER NOT NULL, info TEXT NOT NULL);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL,
    checksum TEXT NOT NULL, hparams TEXT NOT NULL, parent INTEGER, created REAL NOT NULL,
    deleted INTEGER NOT NULL);
CREATE INDEX checkpoints_by_worker ON checkpoints (worker, id);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, epoch INTEGER NOT NULL,
    start_step INTEGER NOT NULL, end_step INTEGER NOT NULL, from_checkpoint INTEGER,
    hparams TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    to_checkpoint INTEGER, error TEXT);
CREATE INDEX segments_by_status ON segments (status, id);
CREATE INDEX segments_by_worker ON segments (worker, id);
CREATE TABLE metrics (
    worker INTEGER NOT NULL, segment INTEGER NOT NULL, step INTEGER NOT NULL, value REAL,
    time REAL NOT NULL, extra TEXT, PRIMARY KEY (worker, segment, step)) WITHOUT ROWID;
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, worker INTEGER NOT NULL,
    step INTEGER NOT NULL, time REAL NOT NULL, donor INTEGER, donor_checkpoint INTEGER,
    old_hparams TEXT, new_hparams TEXT, info TEXT NOT NULL);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_worker ON events (worker, id);
"""
_TABLES = frozenset(
    {"meta", "experiment", "state", "counters", "lock"}
    | {"workers", "checkpoints", "segments", "metrics", "events"}
)


def _select(table: str, cls: type[R]) -> str:
    return f"SELECT {', '.join(columns(cls))} FROM {table}"


def _insert(table: str, cls: type[R], verb: str = "INSERT") -> str:
    cols = columns(cls)
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _where(**filters: Any) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause over the filters that are not None."""
    used = {k: v for k, v in filters.items() if v is not None}
    clause = " AND ".join(f"{k} = ?" for k in used)
    return (f" WHERE {clause}" if clause else ""), tuple(used.values())


def _has_extra(conn: sqlite3.Connection) -> bool:
    """Whether the metrics table has the ``extra`` column (format 2)."""
    return any(r[1] == "extra" for r in conn.execute("PRAGMA table_info(metrics)"))


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """Split ``seq`` in chunks of ``n`` (SQLite bounds the parameters of one statement)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


class SQLiteStore(Store):
    """An experiment store in one SQLite file.

    Args:
        path: The database file. A missing file (and its folder) is created when ``create``.
        create: If False, a missing file raises ``StoreError`` instead (for read-only tools).
        timeout_s: How long a call may wait for another connection's write lock before
            ``StoreError("database is locked")``.

    Raises:
        StoreCorrupt: The file is not a SQLite database, not a firepbt store, or damaged.
        FormatVersionError: The store was written by a newer firepbt.
        ConfigError: ``timeout_s`` is not positive.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        timeout_s: float = 60.0,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s = {timeout_s!r}: must be > 0")
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._timeout_s = timeout_s
        self._mutex = threading.RLock()
        self._in_tx = False
        # Whether the metrics table has the ``extra`` column (a format 1 file lacks it until
        # its first metric write adds it), and whether the open transaction added it.
        self._extra = True
        self._upgrading = False
        self._conn: sqlite3.Connection | None = None
        if not self.path.exists():
            if not create:
                raise StoreError(f"{self.path}: no experiment store at this path")
            self._create_file()
        self._conn = self._open()

    # -- opening -------------------------------------------------------------------------
    def _connect(self, path: Path) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the module's implicit
        # transactions would start DEFERRED ones that can fail on a lock upgrade).
        return sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )

    def _create_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            conn = self._connect(tmp)
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file
                conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('format_version', ?)",
                    (str(FORMAT_VERSION),),
                )
            finally:
                conn.close()
            try:
                # link, unlike rename, never replaces a store another process created meanwhile.
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot create the store: {exc}") from exc
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)

    def _open(self) -> sqlite3.Connection:
        """Connect and validate before anything could write to the file."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_HEADER))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the store: {exc}") from exc
        if header != _HEADER:
            raise StoreCorrupt(f"{self.path}: not a SQLite database (bad header); left untouched")
        self._conn = self._connect(self.path)
        try:
            self._validate()
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        return self._conn

    def _validate(self) -> None:
        def read(conn: sqlite3.Connection) -> tuple[set[str], str, str | None, bool]:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = None
            if "meta" in tables:
                found = conn.execute("SELECT value FROM meta WHERE key = 'format_version'")
                version = next((r[0] for r in found), None)
            return tables, check, version, _has_extra(conn)

        tables, check, version, self._extra = self._call(read)
        if check != "ok":
            raise StoreCorrupt(f"{self.path}: damaged SQLite file ({check}); left untouched")
        if "meta" not in tables:
            raise StoreCorrupt(f"{self.path}: a SQLite database but not a firepbt store")
        if version is None or not version.isdigit() or int(version) < 1:
            raise StoreCorrupt(f"{self.path}: invalid store format version {version!r}")
        if int(version) > FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.path}: store format version {version} is newer than the version this "
                f"firepbt reads ({FORMAT_VERSION}); upgrade firepbt to open it"
            )
        # Format 1 (no metrics.extra) is read as it is, with empty extra metrics, so read-only
        # tools never change a file; the first metric write upgrades it (_upgrade_metrics).
        if missing := _TABLES - tables:
            raise StoreCorrupt(f"{self.path}: firepbt store without tables {sorted(missing)}")

    # -- running statements --------------------------------------------------------------
    def _error(self, exc: sqlite3.Error) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreCorrupt(f"{self.path}: damaged SQLite file ({exc}); left untouched")
        if _is_busy(exc):
            return StoreError(
                f"{self.path}: database is locked; still busy after {self._timeout_s:g}s"
            )
        return StoreError(f"{self.path}: {exc}")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, retrying "database is locked" until ``timeout_s`` has passed."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            # Short jittered naps: SQLite's own busy handler backs off to 100 ms sleeps, so
            # under contention a waiter would sleep through many free moments (and starve).
            time.sleep(random.uniform(0.0005, 0.005))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    def _call(self, op: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """Run ``op`` atomically: in its own transaction, or a savepoint inside the caller's."""
        with self._mutex, self._translated():
            conn = self._connection()
            if self._in_tx:
                if not write:
                    return op(conn)
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except BaseException:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    raise
                conn.execute("RELEASE op")
                return result
            if not write:
                return self._retry(lambda: op(conn))

            def attempt() -> T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = op(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result

            return self._retry(attempt)

    # -- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def transaction(self, fence: LockHolder | None = None) -> Iterator[None]:
        with self._mutex:
            if self._in_tx:
                raise StoreError("transactions do not nest: a transaction is already open")
            conn = self._connection()
            with self._translated():
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            self._in_tx = True
            try:
                if fence is not None:
                    # BEGIN IMMEDIATE holds the write lock: a takeover (itself a write) cannot
                    # slip in between this check and the COMMIT.
                    with self._translated():
                        current = self._lock_row(conn)
                    check_fence(current, fence)
                yield
                with self._translated():
                    conn.execute("COMMIT")
                self._extra = self._extra or self._upgrading
            except BaseException:
                with self._translated():
                    if conn.in_transaction:  # False after a successful COMMIT
                        conn.execute("ROLLBACK")
                raise
            finally:
                self._in_tx = False
                self._upgrading = False

    # -- experiment ----------------------------------------------------------------------
    def create_experiment(self, config: Mapping[str, Any]) -> None:
        text = dump_json(config, "experiment config")

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO experiment (id, config) VALUES (1, ?)", (text,))
            except sqlite3.IntegrityError:
                raise StoreError(
                    f"{self.path}: the store already holds an experiment; use a new store"
                ) from None

        self._call(op, write=True)

    def experiment(self) -> dict[str, Any] | None:
        rows = self._call(lambda c: c.execute("SELECT config FROM experiment").fetchall())
        return load_json(rows[0][0], frozen=False) if rows else None

    def put_state(self, key: str, value: Any) -> None:
        text = dump_json(value, f"state {key!r}")
        sql = "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)"
        self._call(lambda c: c.execute(sql, (key, text)), write=True)

    def get_state(self, key: str, default: Any = None) -> Any:
        sql = "SELECT value FROM state WHERE key = ?"
        rows = self._call(lambda c: c.execute(sql, (key,)).fetchall())
        return load_json(rows[0][0], frozen=False) if rows else default

    # -- lock ----------------------------------------------------------------------------
    def acquire_lock(self, holder: LockHolder, stale_after_s: float, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            check_lock(self._lock_row(conn), holder, stale_after_s, now)
            conn.execute(
                "INSERT OR REPLACE INTO lock (id, pid, host, since, token, heartbeat) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (holder.pid, holder.host, holder.since, holder.token, now),
            )

        self._call(op, write=True)

    def refresh_lock(self, holder: LockHolder, now: float) -> None:
        sql = "UPDATE lock SET heartbeat = ? WHERE token = ?"
        self._call(lambda c: c.execute(sql, (now, holder.token)), write=True)

    def release_lock(self, holder: LockHolder) -> None:
        sql = "DELETE FROM lock WHERE token = ?"
        self._call(lambda c: c.execute(sql, (holder.token,)), write=True)

    def lock_holder(self) -> tuple[LockHolder, float] | None:
        return self._call(self._lock_row)

    @staticmethod
    def _lock_row(conn: sqlite3.Connection) -> tuple[LockHolder, float] | None:
        row = conn.execute("SELECT pid, host, since, token, heartbeat FROM lock").fetchone()
        if row is None:
            return None
        pid, host, since, token, heartbeat = row
        return LockHolder(pid=pid, host=host, since=since, token=token), heartbeat

    # -- ids -----------------------------------------------------------------------------
    def next_id(self, counter: str) -> int:
        sql = (
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
        )
        return int(self._call(lambda c: c.execute(sql, (counter,)).fetchone()[0], write=True))

    # -- records -------------------------------------------------------------------------
    def _one(self, table: str, cls: type[R], key: int, what: str) -> R:
        sql = f"{_select(table, cls)} WHERE id = ?"
        rows = self._call(lambda c: c.execute(sql, (key,)).fetchall())
        if not rows:
            raise KeyError(f"unknown {what} {key!r}")
        return from_row(cls, rows[0])

    def _many(
        self, table: str, cls: type[R], where: str, params: Sequence[Any], order: str
    ) -> list[R]:
        sql = f"{_select(table, cls)}{where} ORDER BY {order}"
        rows = self._call(lambda c: c.execute(sql, tuple(params)).fetchall())
        return [from_row(cls, row) for row in rows]

    def put_worker(self, rec: WorkerRecord) -> None:
        sql, row = _insert("workers", WorkerRecord, "INSERT OR REPLACE"), to_row(rec)
        self._call(lambda c: c.execute(sql, row), write=True)

    def workers(self) -> list[WorkerRecord]:
        return self._many("workers", WorkerRecord, "", (), "id")

    def worker(self, worker_id: int) -> WorkerRecord:
        return self._one("workers", WorkerRecord, worker_id, "worker")

    def add_checkpoint(self, rec: CheckpointRecord) -> None:
        sql, row = _insert("checkpoints", CheckpointRecord), to_row(rec)

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, row)
            except sqlite3.IntegrityError:
                raise StoreError(
                    f"checkpoint {rec.id} already exists; checkpoints are append-only"
                ) from None

        self._call(op, write=True)

    def checkpoint(self, checkpoint_id: int) -> CheckpointRecord:
        return self._one("checkpoints", CheckpointRecord, checkpoint_id, "checkpoint")

    def checkpoints(
        self, worker: int | None = None, include_deleted: bool = False
    ) -> list[CheckpointRecord]:
        where, params = _where(worker=worker, deleted=None if include_deleted else 0)
        return self._many("checkpoints", CheckpointRecord, where, params, "id")

    def mark_checkpoint_deleted(self, checkpoint_id: int) -> None:
        sql = "UPDATE checkpoints SET deleted = 1 WHERE id = ?"
        if self._call(lambda c: c.execute(sql, (checkpoint_id,)).rowcount, write=True) == 0:
            raise KeyError(f"unknown checkpoint {checkpoint_id!r}")

    def put_segment(self, rec: SegmentRecord) -> None:
        sql, row = _insert("segments", SegmentRecord, "INSERT OR REPLACE"), to_row(rec)
        self._call(lambda c: c.execute(sql, row), write=True)

    def segment(self, segment_id: int) -> SegmentRecord:
        return self._one("segments", SegmentRecord, segment_id, "segment")

    def segments(self, status: str | None = None, worker: int | None = None) -> list[SegmentRecord]:
        where, params = _where(status=status, worker=worker)
        return self._many("segments", SegmentRecord, where, params, "id")

    def add_metrics(self, rows: Sequence[MetricRow]) -> None:
        sql, encoded = _insert("metrics", MetricRow), [to_row(r) for r in rows]

        def exists(key: tuple[int, int, int], conn: sqlite3.Connection) -> bool:
            found = conn.execute(
                "SELECT 1 FROM metrics WHERE worker = ? AND segment = ? AND step = ?", key
            )
            return found.fetchone() is not None

        def op(conn: sqlite3.Connection) -> None:
            if not self._extra:
                self._upgrade_metrics(conn)
            conn.execute("SAVEPOINT batch")
            try:
                conn.executemany(sql, encoded)
            except sqlite3.IntegrityError:
                # Undo the rows inserted before the clash, then name the offending key.
                conn.execute("ROLLBACK TO batch")
                dup = first_duplicate(map(metric_key, rows), lambda k: exists(k, conn))
                raise StoreError(
                    f"metric row (worker, segment, step) = {dup} already exists; "
                    "metrics are append-only (nothing from this batch was added)"
                ) from None
            finally:
                conn.execute("RELEASE batch")

        if encoded:
            self._call(op, write=True)
            if not self._in_tx:  # committed (inside a transaction: at its COMMIT)
                self._extra = self._extra or self._upgrading
                self._upgrading = False

    def _upgrade_metrics(self, conn: sqlite3.Connection) -> None:
        """Format 1 to 2, inside the caller's write: add the metrics' ``extra`` column."""
        if _has_extra(conn):
            return
        conn.execute("ALTER TABLE metrics ADD COLUMN extra TEXT")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'",
                     (str(FORMAT_VERSION),))
        self._upgrading = True

    def metrics(self, worker: int | None = None) -> list[MetricRow]:
        where, params = _where(worker=worker)
        if not self._extra and not self._in_tx:  # another connection may have upgraded it
            self._extra = self._call(_has_extra)
        if self._extra or self._upgrading:
            return self._many("metrics", MetricRow, where, params, "worker, segment, step")
        # A format 1 file: no extra metrics were recorded.
        sql = (f"SELECT worker, segment, step, value, time, NULL FROM metrics{where} "
               "ORDER BY worker, segment, step")
        rows = self._call(lambda c: c.execute(sql, params).fetchall())
        return [from_row(MetricRow, row) for row in rows]

    def add_event(self, rec: EventRecord) -> int:
        cols = columns(EventRecord)[1:]  # the id is assigned by AUTOINCREMENT
        sql = f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        row = to_row(rec)[1:]
        new_id = self._call(lambda c: c.execute(sql, row).lastrowid, write=True)
        return int(new_id or 0)

    def events(self, kind: str | None = None, worker: int | None = None) -> list[EventRecord]:
        where, params = _where(kind=kind, worker=worker)
        return self._many("events", EventRecord, where, params, "id")

    # -- read-only summaries (dashboard): indexed queries ------------------------------------

    def event_counts(self) -> dict[str, int]:
        # Answered from the events_by_kind index alone (a covering scan, no table rows).
        sql = "SELECT kind, COUNT(*) FROM events GROUP BY kind"
        rows = self._call(lambda c: c.execute(sql).fetchall())
        return {str(k): int(n) for k, n in rows}

    def checkpoint_metrics(self, checkpoints: Sequence[int]) -> dict[int, float | None]:
        # Per checkpoint: its row (primary key), the writer's segments (segments_by_worker,
        # a few dozen rows) and that segment's metric rows (the metrics primary key), so the
        # cost grows with the ids asked for, not with the store.
        sql = (
            "SELECT c.id, (SELECT m.value FROM segments s JOIN metrics m"
            " ON m.worker = s.worker AND m.segment = s.id"
            " WHERE s.worker = c.worker AND s.to_checkpoint = c.id AND s.status = ?"
            " AND m.value IS NOT NULL ORDER BY m.step DESC LIMIT 1)"
            " FROM checkpoints c WHERE c.id IN ({})"
        )
        ids = sorted(set(checkpoints))
        out: dict[int, float | None] = dict.fromkeys(ids)
        for chunk in _chunks(ids, 500):
            q = sql.format(", ".join("?" * len(chunk)))
            params = (COMPLETED, *chunk)

            def read(c: sqlite3.Connection, q: str = q, p: tuple[Any, ...] = params) -> list[Any]:
                return c.execute(q, p).fetchall()

            for cid, value in self._call(read):
                out[int(cid)] = None if value is None else float(value)
        return out
