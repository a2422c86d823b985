"""PostgreSQL experiment store: several experiments in one database, reachable from many hosts.

URL: ``postgresql://user@host:port/dbname?experiment=NAME`` (``postgres://`` too). Other query
parameters go to libpq unchanged (``sslmode``, ``connect_timeout``, ...); a password is best
given by ``PGPASSWORD`` or ``~/.pgpass``, and never appears in ``store.url`` (which reports and
checkpoint folders record). ``synchronous_commit=on|off`` (default ``off``, see Durability).

**One schema per experiment.** Experiment ``NAME`` (lower-case letters, digits, ``_``; default
``default``) lives in schema ``firepbt_NAME`` with the same tables as a SQLite store. A schema
rather than an ``experiment`` key column in shared tables: every statement, key and index stays
exactly the SQLite one (no column to forget in a WHERE clause, no wider keys), one
experiment's tables and indexes never grow with another's rows, dropping an experiment is
``DROP SCHEMA ... CASCADE``, and a database administrator can grant access per experiment.

**Writers are serialised per experiment**, like SQLite's single writer: every write
transaction first takes a transaction-scoped advisory lock keyed by the schema. So a
read-modify-write inside ``transaction()`` never loses an update, running at READ COMMITTED
without serialization failures; and because taking over the experiment lock is itself such a
transaction, the fence check of ``transaction(fence=holder)`` (a read of the lock row under
that advisory lock) cannot be overtaken between the check and the COMMIT, whichever host the
other controller runs on. The experiment lock is a row (pid, host, since, token, heartbeat):
a lease that goes stale by heartbeat age (the times the controllers pass in), and a fencing
token; no pid is ever checked, so it works across hosts.

**One round trip per fenced transaction.** Nothing is sent when a transaction opens: BEGIN
and the store's own function ``firepbt_begin`` (the advisory lock, the fence check, the marker
rows) are queued and travel with the first statement that needs an answer (a read) or with
the COMMIT. A failed fence check raises a custom SQLSTATE, so the rest of that message (the
queued writes, the COMMIT) never runs and nothing commits; the caller gets ``LockLost`` from
that read or from the end of its ``with`` block. What a transaction needs to hand out ids
without asking (the counters, the last event id, the largest checkpoint id and metric
segment: its *start state*) is read the first time a call needs it, or, in a fenced
transaction, taken from this store's own last commit: the lock holder is the experiment's
only writer, so that state is still the server's. ``firepbt_begin`` checks that too, in the
same message: every write transaction records its token as the experiment's last writer, and
if that is no longer this store's last commit (another connection wrote meanwhile, which the
lease forbids), the transaction is rolled back and replayed on the real state; it commits
only if every call returns what it returned the first time, else ``StoreError`` and nothing
commits. So a controller's decision (its writes, ids, events, the fence, the COMMIT) is one
message to the server and one answer; a decision that reads (an exploit reads its donor's
checkpoint record) is two.

**Reconnecting.** A dropped connection (server restarted, network blip) is reconnected with
bounded backoff for up to ``timeout_s``; then ``StoreError`` names the URL and the last error.
A transaction interrupted mid-way is *replayed* on the new connection: every store call made
inside it so far is re-run, and its result must equal the one the caller already got (it
does, since nobody else can write while we hold the experiment's write lock, and the
interrupted attempt rolled back); a difference raises ``StoreError`` and commits nothing. A
COMMIT whose answer was lost is resolved by a marker row the transaction wrote (table
``sessions``: this store object's last transaction token): present means committed, absent
means replay. So the caller's ``with store.transaction():`` block runs once and commits once.

**Durability.** With the default ``synchronous_commit=off`` a COMMIT returns before the
server has flushed its WAL (a flush costs milliseconds on many disks, more than the whole
decision). Like SQLite's WAL with ``synchronous=NORMAL``: committed transactions survive any
kill of the *client*, and a clean server stop or restart (``pg_ctl stop -m fast``); a crash
of the server itself may lose its last few hundred milliseconds of commits, and the store
notices on reconnect (the marker row of its last commit is gone) and raises ``StoreError``
instead of carrying on from state the database forgot. ``synchronous_commit=on`` in the URL
makes every commit durable before it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from firepbt.errors import ConfigError, FormatVersionError, LockLost, StoreCorrupt, StoreError
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
Conn = psycopg.Connection[Any]
Op = Callable[[Conn], Any]

SCHEMES = ("postgresql", "postgres")
DEFAULT_EXPERIMENT = "default"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
# How long one connection attempt may take; the whole reconnect loop is bounded by timeout_s.
_CONNECT_TIMEOUT_S = 5
_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)

# SQLSTATEs worth a reconnect or a replay: serialization failure, deadlock, the server shutting
# down or starting up. Class 08 (connection exceptions) and a broken connection count too.
_RETRY_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
# SQLSTATEs raised by the store's own function firepbt_begin (see _BEGIN): the fence holder
# lost the experiment lock; the start state a transaction took from its store's last commit
# is out of date (another connection wrote meanwhile).
_LOCK_LOST = "FPLCK"
_STALE = "FPSTL"

# Column names and order match the record fields (firepbt.store.codec.columns). JSON stays
# TEXT, not jsonb: jsonb would reorder keys and reformat numbers, and the rows must come back
# exactly as the SQLite and memory backends return them.
_SCHEMA = """
CREATE TABLE {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE {s}.experiment (id INTEGER PRIMARY KEY CHECK (id = 1), config TEXT NOT NULL);
CREATE TABLE {s}.state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE {s}.counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE {s}.lock (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid BIGINT NOT NULL, host TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL, token TEXT NOT NULL, heartbeat DOUBLE PRECISION NOT NULL);
CREATE TABLE {s}.sessions (
    session TEXT PRIMARY KEY, token TEXT NOT NULL, time DOUBLE PRECISION NOT NULL);
CREATE TABLE {s}.workers (
    id BIGINT PRIMARY KEY, role TEXT NOT NULL, subpop BIGINT NOT NULL, hparams TEXT NOT NULL,
    step BIGINT NOT NULL, checkpoint BIGINT, status TEXT NOT NULL, failures BIGINT NOT NULL,
    overwrites BIGINT NOT NULL, info TEXT NOT NULL);
CREATE TABLE {s}.checkpoints (
    id BIGINT PRIMARY KEY, worker BIGINT NOT NULL, step BIGINT NOT NULL, path TEXT NOT NULL,
    checksum TEXT NOT NULL, hparams TEXT NOT NULL, parent BIGINT,
    created DOUBLE PRECISION NOT NULL, deleted INTEGER NOT NULL);
CREATE INDEX checkpoints_by_worker ON {s}.checkpoints (worker, id);
CREATE TABLE {s}.segments (
    id BIGINT PRIMARY KEY, worker BIGINT NOT NULL, epoch BIGINT NOT NULL,
    start_step BIGINT NOT NULL, end_step BIGINT NOT NULL, from_checkpoint BIGINT,
    hparams TEXT NOT NULL, status TEXT NOT NULL, attempts BIGINT NOT NULL,
    to_checkpoint BIGINT, error TEXT);
CREATE INDEX segments_by_status ON {s}.segments (status, id);
CREATE INDEX segments_by_worker ON {s}.segments (worker, id);
CREATE TABLE {s}.metrics (
    worker BIGINT NOT NULL, segment BIGINT NOT NULL, step BIGINT NOT NULL,
    value DOUBLE PRECISION, time DOUBLE PRECISION NOT NULL, extra TEXT,
    PRIMARY KEY (worker, segment, step));
CREATE INDEX metrics_by_segment ON {s}.metrics (segment);
CREATE TABLE {s}.events (
    id BIGINT PRIMARY KEY, kind TEXT NOT NULL, worker BIGINT NOT NULL, step BIGINT NOT NULL,
    time DOUBLE PRECISION NOT NULL, donor BIGINT, donor_checkpoint BIGINT, old_hparams TEXT,
    new_hparams TEXT, info TEXT NOT NULL);
CREATE INDEX events_by_kind ON {s}.events (kind, id);
CREATE INDEX events_by_worker ON {s}.events (worker, id);
"""
# A transaction's start state, as one JSON array: the counters, the last event id, the largest
# checkpoint id and the largest segment with metric rows (each maximum is one index lookup).
_START_STATE = """jsonb_build_array(
    coalesce((SELECT jsonb_object_agg(name, value) FROM {s}.counters), '{{}}'::jsonb),
    (SELECT coalesce(max(id), 0) FROM {s}.events),
    (SELECT coalesce(max(id), 0) FROM {s}.checkpoints),
    (SELECT coalesce(max(segment), 0) FROM {s}.metrics))"""
# The row of table ``sessions`` that names the last committed write transaction of the
# experiment, whichever store object made it (its marker token). Session names are 16 hex
# digits, never empty.
_LAST_WRITER = ""
# How every write transaction starts (one statement after BEGIN): it takes the experiment's
# advisory lock, then (each statement of a VOLATILE function sees what committed before it
# started, so after the lock) checks the fence and, if ``last`` is given, that the last
# committed write was this store's (so the start state it remembers is current), then writes
# the markers. A failed check raises a custom SQLSTATE, which aborts the transaction: the
# statements after it in the same message (the queued writes, the COMMIT) do not run.
_BEGIN = """CREATE FUNCTION {s}.firepbt_begin(
    lock_key BIGINT, fence TEXT, last TEXT, my_session TEXT, my_token TEXT,
    now DOUBLE PRECISION) RETURNS void
LANGUAGE plpgsql AS $begin$
DECLARE
    held TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    IF fence IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {s}.lock WHERE token = fence) THEN
        SELECT json_build_array(pid, host, since, token, heartbeat)::text INTO held
            FROM {s}.lock;
        RAISE EXCEPTION 'firepbt: the fence holder lost the experiment lock'
            USING ERRCODE = '""" + _LOCK_LOST + """', DETAIL = coalesce(held, 'null');
    END IF;
    IF last IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {s}.sessions WHERE session = '""" + _LAST_WRITER + """'
            AND token = last) THEN
        RAISE EXCEPTION 'firepbt: another connection wrote since this store''s last commit'
            USING ERRCODE = '""" + _STALE + """';
    END IF;
    INSERT INTO {s}.sessions (session, token, time)
        VALUES (my_session, my_token, now), ('""" + _LAST_WRITER + """', my_token, now)
        ON CONFLICT (session) DO UPDATE SET token = EXCLUDED.token, time = EXCLUDED.time;
END
$begin$"""
_TABLES = frozenset(
    {"meta", "experiment", "state", "counters", "lock", "sessions"}
    | {"workers", "checkpoints", "segments", "metrics", "events"}
)


@dataclass(frozen=True)
class PostgresURL:
    """A parsed store URL.

    Attributes:
        conninfo: What libpq gets: the URL without firepbt's own parameters.
        public: The URL without password, with ``experiment=`` explicit (``store.url``).
        experiment: The experiment name; its schema is ``firepbt_<experiment>``.
        synchronous_commit: Whether each COMMIT waits for the server's WAL flush.
    """

    conninfo: str
    public: str
    experiment: str
    synchronous_commit: bool

    @property
    def schema(self) -> str:
        return f"firepbt_{self.experiment}"


def parse_url(url: str, experiment: str | None = None) -> PostgresURL:
    """Split a ``postgresql://`` store URL; ``ConfigError`` naming the part that is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"store url {url!r}: the scheme must be 'postgresql://'")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("experiment", "synchronous_commit")}
    rest = [(k, v) for k, v in query if k not in ours]
    name = experiment if experiment is not None else ours.get("experiment", DEFAULT_EXPERIMENT)
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"store url {url!r}: experiment = {name!r}: must be 1-48 lower-case letters, digits "
            "or '_', starting with a letter (it names the schema firepbt_<experiment>)"
        )
    sync_text = ours.get("synchronous_commit", "off")
    if sync_text not in ("on", "off"):
        raise ConfigError(
            f"store url {url!r}: synchronous_commit = {sync_text!r}: must be 'on' or 'off'"
        )
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{quote(parts.username, safe='')}@{netloc}"
    public_query = urlencode([*rest, ("experiment", name)]
                             + ([("synchronous_commit", "on")] if sync_text == "on" else []))
    public = urlunsplit(("postgresql", netloc, parts.path, public_query, ""))
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return PostgresURL(conninfo, public, name, sync_text == "on")


def _lock_key(schema: str) -> int:
    """The advisory lock key of an experiment: 64 bits of a hash of its schema name."""
    digest = hashlib.sha256(f"firepbt:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _retryable(exc: BaseException, conn: Conn | None) -> bool:
    if not isinstance(exc, psycopg.Error):
        return False
    if conn is None or conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state in _RETRY_STATES or state.startswith("08")


Outcome = tuple[bool, Any]  # (True, result) or (False, the contract error it raised)


def _run_op(op: Op, conn: Conn) -> Outcome:
    """Run ``op``; contract errors (a duplicate, an unknown id, a live lock) become outcomes."""
    try:
        return True, op(conn)
    except (StoreError, KeyError, ConfigError) as exc:
        return False, exc


def _same(a: Outcome, b: Outcome) -> bool:
    if a[0] != b[0]:
        return False
    if a[0]:
        return bool(a[1] == b[1])
    return type(a[1]) is type(b[1]) and str(a[1]) == str(b[1])


def _unwrap(outcome: Outcome) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


@dataclass
class _Tx:
    """One ``transaction()``: what it needs to be replayed on a new connection."""

    token: str
    fence: LockHolder | None
    log: list[tuple[Op, Outcome]] = field(default_factory=list)
    # Whether the start state below is known: read from the server (lazily, by the first call
    # that needs it), or taken from the store's last commit (checked at the first round trip).
    known: bool = False
    # Counter values and the last event id as of this transaction's start, advanced locally:
    # nobody else writes while we hold the experiment's write lock, so next_id and add_event
    # need no round trip of their own.
    counters: dict[str, int] = field(default_factory=dict)
    event_seq: int = 0
    # The largest checkpoint id, and the largest segment id with metrics, as of the start, and
    # what this transaction added since: a key above the maximum that is not among the added
    # ones cannot exist (nobody else writes meanwhile), so adding it needs no duplicate check
    # on the server. Segments usually complete in id order, so that is the common case.
    max_checkpoint: int = 0
    max_metric_segment: int = 0
    new_checkpoints: set[int] = field(default_factory=set)
    new_metrics: set[tuple[int, int, int]] = field(default_factory=set)
    # Writes that need no answer, bound client-side and not yet sent: they go to the server
    # with the next statement that needs one (a read, a duplicate check, the COMMIT), so a
    # transaction costs a few round trips, not one per write.
    pending: list[str] = field(default_factory=list)
    deadline: float | None = None  # set at the first lost connection
    failed: BaseException | None = None  # a statement failed: the transaction can only roll back

    def load(self, state: Sequence[Any]) -> None:
        """Start from ``state``: ``[counters, last event id, max checkpoint, max segment]``."""
        counters, event_seq, max_checkpoint, max_metric_segment = state
        self.counters = {str(name): int(value) for name, value in counters.items()}
        self.event_seq, self.max_checkpoint = int(event_seq), int(max_checkpoint)
        self.max_metric_segment = int(max_metric_segment)
        self.known = True

    def end_state(self) -> list[Any]:
        """The start state as of this transaction's commit (what the server holds then)."""
        checkpoints = [i for i in self.new_checkpoints if isinstance(i, int)]
        segments = [k[1] for k in self.new_metrics if isinstance(k[1], int)]
        return [dict(self.counters), self.event_seq, max([self.max_checkpoint, *checkpoints]),
                max([self.max_metric_segment, *segments])]


class PostgresStore(Store):
    """An experiment store in a PostgreSQL database (one schema per experiment).

    Args:
        url: ``postgresql://user@host:port/db?experiment=NAME``.
        create: Create a missing experiment schema; if False a missing one raises
            ``StoreError`` (what read-only tools want).
        timeout_s: The longest wait for a lost connection to come back, and for another
            connection's write transaction on the same experiment, before ``StoreError``.
        experiment: Overrides the URL's ``experiment=``.

    Raises:
        StoreCorrupt: The schema exists but is not a firepbt store (it is left untouched).
        FormatVersionError: The store was written by a newer firepbt.
        ConfigError: A malformed URL or a non-positive ``timeout_s``.
        StoreError: The server cannot be reached within ``timeout_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        timeout_s: float = 60.0,
        experiment: str | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s = {timeout_s!r}: must be > 0")
        self._parsed = parse_url(url, experiment)
        self.url = self._parsed.public
        self.experiment_name = self._parsed.experiment
        self.schema = self._parsed.schema
        self._timeout_s = timeout_s
        self._key = _lock_key(self.schema)
        self._session = secrets.token_hex(8)
        self._mutex = threading.RLock()
        self._conn: Conn | None = None
        self._tx: _Tx | None = None
        self._closed = False
        # The marker token of this store's last acknowledged commit (None before the first).
        self._last_token: str | None = None
        # The token of a COMMIT whose answer was lost, while a reconnect resolves it.
        self._pending_token: str | None = None
        # The start state as of this store's last commit (see _Tx.end_state), for the next
        # fenced transaction; None when unknown (before the first, after any failure).
        self._end_state: list[Any] | None = None
        # Checkpoint ids known to exist on the server and not marked deleted by this store
        # since: committed by it, or read outside a transaction. Records are append-only, so
        # one that existed always will, and marking it deleted needs no round trip to learn
        # that it exists (retention marks hundreds at once). About as many ids as the
        # controller's own table of live checkpoints.
        self._known_checkpoints: set[int] = set()
        self._sql = self._statements(self.schema)
        # Each statement as a server-side prepared statement, and the EXECUTE that runs it:
        # queued writes travel as text (simple protocol), and EXECUTE skips parsing and
        # planning them again on every transaction.
        self._execute = {
            sql: f"EXECUTE fp_{name}({', '.join(['%s'] * sql.count('%s'))})"
            if "%s" in sql else f"EXECUTE fp_{name}"
            for name, sql in self._sql.items()
        }
        self._prepared = {sql: f"fp_{name}" for name, sql in self._sql.items()}
        self._prepare_sql = "; ".join(
            f"PREPARE fp_{name} AS {_numbered(sql)}" for name, sql in self._sql.items()
        )
        self._ready = False  # the schema exists: statements can be prepared on connecting
        self._setup(create)

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> Conn:
        """One connection attempt (bounded by the connect timeout); psycopg errors pass."""
        # standard_conforming_strings (the default since PostgreSQL 9.1, set in case a server
        # or role turned it off): _literal relies on backslashes being plain characters; and
        # UTF-8, where no byte of a multi-byte character can be a quote (as in SJIS or GBK).
        options = (f"-c lock_timeout={int(self._timeout_s * 1000)} "
                   "-c standard_conforming_strings=on -c client_encoding=UTF8")
        if not self._parsed.synchronous_commit:
            options += " -c synchronous_commit=off"
        conn: Conn = psycopg.connect(
            self._parsed.conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S,
            application_name="firepbt", options=options,
            # A host that vanishes without closing the socket is noticed within ~20 s.
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2,
        )
        if self._last_token is not None:
            # After a reconnect: did the server keep our last acknowledged commit? It may not
            # after a crash with synchronous_commit=off; carrying on would then build on state
            # the database forgot (ids handed out twice, decisions lost).
            found = conn.execute(self._sql["marker"], (self._session,)).fetchone()
            if found is not None and found[0] == self._pending_token:
                pass  # the commit whose answer was lost got through (resolved by the caller)
            elif found is None or found[0] != self._last_token:
                conn.close()
                raise StoreError(
                    f"{self.url}: the server lost transactions this store had committed (a "
                    "server crash with synchronous_commit=off?); stopping instead of carrying "
                    "on from older state: resume the run from the store"
                )
        if self._ready:
            conn.execute(self._prepare_sql)
        self._conn = conn
        # Binds parameters client-side (with the server's quoting rules), so that queued
        # writes can travel in one simple-protocol message with other statements.
        self._bind = psycopg.ClientCursor(conn).mogrify
        return conn

    def _drop(self) -> None:
        """Forget the current connection (the server rolls back whatever it had open)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connection(self) -> Conn:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        return self._conn if self._conn is not None else self._connect()

    def _lost(self, exc: BaseException, since: float) -> StoreError:
        return StoreError(
            f"{self.url}: lost the connection to PostgreSQL and could not restore it within "
            f"timeout_s = {self._timeout_s:g}s (waited {time.monotonic() - since:.1f}s); "
            f"last error: {str(exc).strip() or type(exc).__name__}"
        )

    def _error(self, exc: psycopg.Error) -> StoreError:
        if exc.sqlstate == _LOCK_LOST and self._tx is not None and self._tx.fence is not None:
            # firepbt_begin names the holder it found (DETAIL: the lock row as JSON).
            row = load_json(exc.diag.message_detail or "null", frozen=False)
            try:
                check_fence(self._lock_of(row), self._tx.fence)
            except LockLost as lost:
                return lost
        if isinstance(exc, pg_errors.LockNotAvailable):
            return StoreError(
                f"{self.url}: another connection held experiment {self.experiment_name!r}'s "
                f"write lock for more than timeout_s = {self._timeout_s:g}s"
            )
        return StoreError(f"{self.url}: {str(exc).strip()} (SQLSTATE {exc.sqlstate})")

    def _read(self, op: Callable[[Conn], T]) -> T:
        """Run a read outside any transaction, reconnecting (bounded) if the connection drops."""
        started: float | None = None
        attempt = 0
        while True:
            try:
                return op(self._connection())
            except psycopg.Error as exc:
                if not _retryable(exc, self._conn):
                    raise self._error(exc) from exc
                started = started if started is not None else time.monotonic()
                if time.monotonic() - started > self._timeout_s:
                    raise self._lost(exc, started) from exc
                self._drop()
                time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1

    # -- set-up and validation ------------------------------------------------------------
    def _setup(self, create: bool) -> None:
        def setup(conn: Conn) -> None:
            with conn.transaction():
                # Serialised with every writer of this experiment, and with a second process
                # creating the same schema right now.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
                found = conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                ).fetchone()
                if found is None:
                    if not create:
                        raise StoreError(
                            f"{self.url}: no experiment {self.experiment_name!r} in this "
                            f"database (schema {self.schema} does not exist)"
                        )
                    s = f'"{self.schema}"'
                    conn.execute(f"CREATE SCHEMA {s}")
                    for statement in _SCHEMA.format(s=s).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {s}.meta (key, value) VALUES ('format_version', %s)",
                        (str(FORMAT_VERSION),),
                    )
                    conn.execute(_BEGIN.format(s=s))
                    return
                self._validate(conn)

        try:
            # One connection attempt (bounded by the connect timeout): a wrong host or port
            # should say so at once; waiting for a server to come back is for later calls.
            self._connect()
        except psycopg.Error as exc:
            raise StoreError(
                f"{self.url}: cannot connect to PostgreSQL: {str(exc).strip()}"
            ) from exc
        try:
            self._read(setup)
            self._ready = True
            self._read(lambda conn: conn.execute(self._prepare_sql))
        except BaseException:
            self._drop()
            raise

    def _validate(self, conn: Conn) -> None:
        tables = {
            r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)
            )
        }
        where = f"{self.url}: schema {self.schema}"
        if "meta" not in tables:
            raise StoreCorrupt(f"{where} exists but is not a firepbt store; left untouched")
        row = conn.execute(
            f'SELECT value FROM "{self.schema}".meta WHERE key = %s', ("format_version",)
        ).fetchone()
        version = None if row is None else row[0]
        if version is None or not version.isdigit() or int(version) < 1:
            raise StoreCorrupt(f"{where}: invalid store format version {version!r}")
        if int(version) > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: store format version {version} is newer than the version this "
                f"firepbt reads ({FORMAT_VERSION}); upgrade firepbt to open it"
            )
        if missing := _TABLES - tables:
            raise StoreCorrupt(f"{where}: firepbt store without tables {sorted(missing)}")
        s = f'"{self.schema}"'
        if int(version) < 2:
            # Format 1 to 2 (under the experiment's write lock): metric rows gain ``extra``.
            # Adding a nullable column rewrites no rows; the statements prepared next use it.
            conn.execute(f"ALTER TABLE {s}.metrics ADD COLUMN IF NOT EXISTS extra TEXT")
            conn.execute(f"UPDATE {s}.meta SET value = %s WHERE key = 'format_version'",
                         (str(FORMAT_VERSION),))
        if conn.execute("SELECT 1 FROM pg_proc WHERE pronamespace = %s::regnamespace AND "
                        "proname = 'firepbt_begin'", (s,)).fetchone() is None:
            # A store made before firepbt_begin existed: a function holds no data, so adding it
            # changes no format (an older firepbt ignores it).
            conn.execute(_BEGIN.format(s=s))

    @staticmethod
    def _statements(schema: str) -> dict[str, str]:
        s = f'"{schema}"'

        def upsert(table: str, cls: type[R]) -> str:
            cols = columns(cls)
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
            return (f"INSERT INTO {s}.{table} ({', '.join(cols)}) VALUES "
                    f"({', '.join(['%s'] * len(cols))}) ON CONFLICT (id) DO UPDATE SET {sets}")

        def select(table: str, cls: type[R]) -> str:
            return f"SELECT {', '.join(columns(cls))} FROM {s}.{table}"

        ckpt_cols = columns(CheckpointRecord)
        event_cols = columns(EventRecord)
        return {
            "begin": f"SELECT {s}.firepbt_begin(%s, %s, %s, %s, %s, %s)",  # see _BEGIN
            "marker": f"SELECT token FROM {s}.sessions WHERE session = %s",
            "drop_marker": f"DELETE FROM {s}.sessions WHERE session = %s",
            "tx_state": f"SELECT {_START_STATE.format(s=s)}",
            "insert_checkpoint": (f"INSERT INTO {s}.checkpoints ({', '.join(ckpt_cols)}) "
                                  f"VALUES ({', '.join(['%s'] * len(ckpt_cols))})"),
            "set_counter": (f"INSERT INTO {s}.counters (name, value) VALUES (%s, %s) "
                            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"),
            "add_experiment": (f"INSERT INTO {s}.experiment (id, config) VALUES (1, %s) "
                               "ON CONFLICT (id) DO NOTHING RETURNING id"),
            "experiment": f"SELECT config FROM {s}.experiment",
            "put_state": (f"INSERT INTO {s}.state (key, value) VALUES (%s, %s) "
                          "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"),
            "get_state": f"SELECT value FROM {s}.state WHERE key = %s",
            "lock_row": f"SELECT pid, host, since, token, heartbeat FROM {s}.lock",
            "set_lock": (f"INSERT INTO {s}.lock (id, pid, host, since, token, heartbeat) "
                         "VALUES (1, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                         "pid = EXCLUDED.pid, host = EXCLUDED.host, since = EXCLUDED.since, "
                         "token = EXCLUDED.token, heartbeat = EXCLUDED.heartbeat"),
            "refresh_lock": f"UPDATE {s}.lock SET heartbeat = %s WHERE token = %s",
            "release_lock": f"DELETE FROM {s}.lock WHERE token = %s",
            "put_worker": upsert("workers", WorkerRecord),
            "workers": select("workers", WorkerRecord),
            "add_checkpoint": (f"INSERT INTO {s}.checkpoints ({', '.join(ckpt_cols)}) VALUES "
                               f"({', '.join(['%s'] * len(ckpt_cols))}) "
                               "ON CONFLICT (id) DO NOTHING RETURNING id"),
            "checkpoints": select("checkpoints", CheckpointRecord),
            "delete_checkpoint": (f"UPDATE {s}.checkpoints SET deleted = 1 WHERE id = %s "
                                  "RETURNING id"),
            "put_segment": upsert("segments", SegmentRecord),
            "segments": select("segments", SegmentRecord),
            "metrics": select("metrics", MetricRow),
            "metrics_clash": (f"SELECT m.worker, m.segment, m.step FROM {s}.metrics m JOIN "
                              "unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS k(w, g, t) "
                              "ON m.worker = k.w AND m.segment = k.g AND m.step = k.t"),
            "add_metrics": (f"INSERT INTO {s}.metrics (worker, segment, step, value, time, "
                            "extra) SELECT * FROM unnest(%s::bigint[], %s::bigint[], "
                            "%s::bigint[], %s::float8[], %s::float8[], %s::text[])"),
            "add_event": (f"INSERT INTO {s}.events ({', '.join(event_cols)}) VALUES "
                          f"({', '.join(['%s'] * len(event_cols))})"),
            "events": select("events", EventRecord),
        }

    # -- running store calls --------------------------------------------------------------
    def _call(self, op: Callable[[Conn], T], write: bool = False) -> T:
        """Run one store call: inside the open transaction, in one of its own, or as a read."""
        with self._mutex:
            if self._closed:
                raise StoreError(f"{self.url}: the store is closed")
            tx = self._tx
            if tx is not None:
                return self._in_tx(tx, op)
            if not write:
                return self._read(op)
            with self.transaction():
                assert self._tx is not None
                return self._in_tx(self._tx, op)

    def _in_tx(self, tx: _Tx, op: Op) -> Any:
        if tx.failed is not None:
            raise StoreError(
                f"{self.url}: this transaction was aborted by an earlier error ({tx.failed}); "
                "it can only roll back"
            )
        while True:
            try:
                outcome = _run_op(op, self._connection())
            except psycopg.Error as exc:
                if _retryable(exc, self._conn) or exc.sqlstate == _STALE:
                    self._recover(tx, exc)
                    continue
                tx.failed = exc
                raise self._error(exc) from exc
            tx.log.append((op, outcome))
            return _unwrap(outcome)

    def _begin(self, tx: _Tx, cached: bool = False) -> None:
        """Open the transaction: queue BEGIN and ``firepbt_begin`` (no round trip).

        Args:
            cached: start from the state of this store's last commit (a fenced transaction's
                first attempt); ``firepbt_begin`` then also checks that it is still current.
        """
        self._connection()
        tx.known, tx.new_checkpoints, tx.new_metrics = False, set(), set()
        last = None
        if cached and self._end_state is not None:
            tx.load(self._end_state)
            last = self._last_token  # the commit that left that state: still the last one?
        fence = None if tx.fence is None else tx.fence.token
        tx.pending = ["BEGIN", self._bound(self._sql["begin"], (
            self._key, fence, last, self._session, tx.token, time.time()))]

    def _state(self, tx: _Tx) -> None:
        """Make sure ``tx`` knows its start state: read it the first time a call needs it."""
        if not tx.known:
            row = self._exec(self._sql["tx_state"]).fetchone()
            assert row is not None
            tx.load(row[0])

    def _exec(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Run a statement whose answer is needed, after the transaction's queued writes."""
        conn = self._connection()
        tx = self._tx
        if tx is None or not tx.pending:
            return conn.execute(sql, params)
        text = "; ".join([*tx.pending, self._bound(sql, params)])
        tx.pending = []  # a failure aborts the transaction; a replay queues them again
        cur = conn.execute(text)
        while cur.nextset():  # the statement's own result is the last one
            pass
        return cur

    def _defer(self, sql: str, params: Sequence[Any]) -> None:
        """Queue a write of the open transaction (see ``_Tx.pending``)."""
        tx = self._tx
        assert tx is not None  # writes always run in a transaction
        self._connection()
        tx.pending.append(self._bound(sql, params))

    def _bound(self, sql: str, params: Sequence[Any] | None) -> str:
        """``sql`` with ``params`` bound client-side: the EXECUTE of its prepared statement."""
        if sql not in self._prepared:  # an ad hoc read (a filtered query)
            return self._bind(sql, params)
        if not params:
            return self._execute[sql]
        try:
            return f"EXECUTE {self._prepared[sql]}({', '.join(map(_literal, params))})"
        except TypeError:  # an array or an unusual type: psycopg's generic adaptation
            return self._bind(self._execute[sql], params)

    def _write_op(self, sql: str, params: Sequence[Any]) -> Op:
        """A store call that only writes: queued, not waited for."""

        def op(conn: Conn) -> None:
            self._defer(sql, params)

        return op

    def _recover(self, tx: _Tx, exc: BaseException, committing: bool = False) -> bool:
        """Reconnect and rebuild ``tx`` on the new connection; True if its COMMIT got through.

        Also what a fenced transaction does when its start state turned out to be stale
        (``exc`` has SQLSTATE ``_STALE``): rolled back, it is replayed on the real state.

        Raises:
            StoreError: Not reconnected within ``timeout_s``, or a replayed call returned
                something else than the first time (nothing is committed then).
            LockLost: ``tx`` is fenced and its holder lost the lock meanwhile.
        """
        if tx.deadline is None:
            tx.deadline = time.monotonic() + self._timeout_s
        started = tx.deadline - self._timeout_s
        attempt = 0
        while True:
            self._drop()
            if time.monotonic() > tx.deadline:
                tx.failed = exc
                raise self._lost(exc, started) from exc
            try:
                self._pending_token = tx.token if committing else None
                try:
                    conn = self._connect()
                finally:
                    self._pending_token = None
                if committing:
                    found = conn.execute(self._sql["marker"], (self._session,)).fetchone()
                    if found is not None and found[0] == tx.token:
                        return True
                self._begin(tx)
                for op, outcome in tx.log:
                    again = _run_op(op, conn)
                    if not _same(again, outcome):
                        tx.failed = StoreError("replay differed")
                        why = (
                            "another connection wrote ids, events, checkpoints or metrics "
                            "while this fenced transaction ran (the lock holder should be the "
                            "experiment's only writer) and, replayed on the current state,"
                            if isinstance(exc, psycopg.Error) and exc.sqlstate == _STALE
                            else "the connection dropped mid-transaction and, replayed on a "
                            "new one,"
                        )
                        raise StoreError(
                            f"{self.url}: {why} a store call returned {again[1]!r} instead of "
                            f"{outcome[1]!r}; nothing of this transaction was committed"
                        )
                return False
            except psycopg.Error as again_exc:
                if not _retryable(again_exc, self._conn):
                    tx.failed = again_exc
                    raise self._error(again_exc) from again_exc
                exc = again_exc
            time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1

    def _commit(self, tx: _Tx) -> None:
        if tx.failed is not None:
            raise StoreError(
                f"{self.url}: not committed: the transaction was aborted by an earlier error "
                f"({tx.failed})"
            )
        while True:
            try:
                conn = self._connection()
                conn.execute("; ".join([*tx.pending, "COMMIT"]))
                tx.pending = []
                break
            except psycopg.Error as exc:
                if exc.sqlstate == _STALE:  # refused before the COMMIT: replay, then commit
                    self._recover(tx, exc)
                    continue
                if not _retryable(exc, self._conn):
                    tx.failed = exc
                    raise self._error(exc) from exc
                # The COMMIT may or may not have reached the server: the marker row decides.
                if self._recover(tx, exc, committing=True):
                    break
        self._last_token = tx.token
        if tx.known:  # else the transaction changed none of it: the last one still holds
            self._end_state = tx.end_state()
        self._known_checkpoints.update(i for i in tx.new_checkpoints if isinstance(i, int))

    def _rollback(self) -> None:
        """Roll back the open transaction; a connection in doubt is dropped instead."""
        conn = self._conn
        if conn is None or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return  # nothing reached the server (the opening statements are still queued)
        try:
            conn.execute("ROLLBACK")
        except Exception:
            self._drop()  # closing the connection rolls back on the server
        else:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._drop()

    # -- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None and self._tx is None:
                with contextlib.suppress(Exception):  # best effort: a stale marker is harmless
                    self._conn.execute(self._sql["drop_marker"], (self._session,))
            self._drop()

    @contextlib.contextmanager
    def transaction(self, fence: LockHolder | None = None) -> Iterator[None]:
        with self._mutex:
            if self._tx is not None:
                raise StoreError("transactions do not nest: a transaction is already open")
            if self._closed:
                raise StoreError(f"{self.url}: the store is closed")
            tx = _Tx(token=secrets.token_hex(8), fence=fence)
            self._tx = tx
            try:
                try:
                    # Only a fenced transaction trusts the last commit's state: its holder is
                    # the experiment's only writer. Others read it when they need it.
                    self._begin(tx, cached=fence is not None)
                except psycopg.Error as exc:
                    if not _retryable(exc, self._conn):
                        raise self._error(exc) from exc
                    self._recover(tx, exc)
                yield
                self._commit(tx)
            except BaseException:
                self._end_state = None  # unknown now: the next transaction reads it
                self._rollback()
                raise
            finally:
                self._tx = None

    # -- experiment ----------------------------------------------------------------------
    def create_experiment(self, config: Mapping[str, Any]) -> None:
        text = dump_json(config, "experiment config")
        sql = self._sql["add_experiment"]

        def op(conn: Conn) -> None:
            if not self._exec(sql, (text,)).fetchall():
                raise StoreError(
                    f"{self.url}: the store already holds an experiment; use a new store "
                    "(another experiment= name)"
                )

        self._call(op, write=True)

    def experiment(self) -> dict[str, Any] | None:
        sql = self._sql["experiment"]
        rows = self._call(lambda c: self._exec(sql).fetchall())
        return load_json(rows[0][0], frozen=False) if rows else None

    def put_state(self, key: str, value: Any) -> None:
        text, sql = dump_json(value, f"state {key!r}"), self._sql["put_state"]
        self._call(self._write_op(sql, (key, text)), write=True)

    def get_state(self, key: str, default: Any = None) -> Any:
        sql = self._sql["get_state"]
        rows = self._call(lambda c: self._exec(sql, (key,)).fetchall())
        return load_json(rows[0][0], frozen=False) if rows else default

    # -- lock ----------------------------------------------------------------------------
    @staticmethod
    def _lock_of(row: Sequence[Any] | None) -> tuple[LockHolder, float] | None:
        if row is None:
            return None
        pid, host, since, token, heartbeat = row
        return LockHolder(pid=pid, host=host, since=since, token=token), heartbeat

    def acquire_lock(self, holder: LockHolder, stale_after_s: float, now: float) -> None:
        read, write = self._sql["lock_row"], self._sql["set_lock"]

        def op(conn: Conn) -> None:
            check_lock(self._lock_of(self._exec(read).fetchone()), holder, stale_after_s, now)
            self._defer(write, (holder.pid, holder.host, holder.since, holder.token, now))

        self._call(op, write=True)

    def refresh_lock(self, holder: LockHolder, now: float) -> None:
        sql = self._sql["refresh_lock"]
        self._call(self._write_op(sql, (now, holder.token)), write=True)

    def release_lock(self, holder: LockHolder) -> None:
        sql = self._sql["release_lock"]
        self._call(self._write_op(sql, (holder.token,)), write=True)

    def lock_holder(self) -> tuple[LockHolder, float] | None:
        sql = self._sql["lock_row"]
        return self._call(lambda c: self._lock_of(self._exec(sql).fetchone()))

    # -- ids -----------------------------------------------------------------------------
    def next_id(self, counter: str) -> int:
        sql = self._sql["set_counter"]

        def op(conn: Conn) -> int:
            tx = self._tx
            assert tx is not None  # next_id always runs in a transaction (a write)
            self._state(tx)
            value = tx.counters.get(counter, 0) + 1
            tx.counters[counter] = value
            self._defer(sql, (counter, value))
            return value

        return int(self._call(op, write=True))

    # -- records -------------------------------------------------------------------------
    def _many(self, name: str, cls: type[R], order: str, **filters: Any) -> list[R]:
        used = {k: v for k, v in filters.items() if v is not None}
        where = " AND ".join(f"{k} = %s" for k in used)
        sql = f"{self._sql[name]}{' WHERE ' + where if where else ''} ORDER BY {order}"
        params = tuple(used.values())
        rows = self._call(lambda c: self._exec(sql, params).fetchall())
        return [from_row(cls, row) for row in rows]

    def _one(self, name: str, cls: type[R], key: int, what: str) -> R:
        found = self._many(name, cls, "id", id=key)
        if not found:
            raise KeyError(f"unknown {what} {key!r}")
        return found[0]

    def put_worker(self, rec: WorkerRecord) -> None:
        sql, row = self._sql["put_worker"], to_row(rec)
        self._call(self._write_op(sql, row), write=True)

    def workers(self) -> list[WorkerRecord]:
        return self._many("workers", WorkerRecord, "id")

    def worker(self, worker_id: int) -> WorkerRecord:
        return self._one("workers", WorkerRecord, worker_id, "worker")

    def add_checkpoint(self, rec: CheckpointRecord) -> None:
        sql, insert, row = self._sql["add_checkpoint"], self._sql["insert_checkpoint"], to_row(rec)

        def op(conn: Conn) -> None:
            tx = self._tx
            assert tx is not None  # a write: always in a transaction
            self._state(tx)
            if rec.id in tx.new_checkpoints:
                exists = True
            elif isinstance(rec.id, int) and rec.id > tx.max_checkpoint:
                exists = False  # known absent (see _Tx): queued, no round trip
                self._defer(insert, row)
            else:
                exists = not self._exec(sql, row).fetchall()
            if exists:
                raise StoreError(
                    f"checkpoint {rec.id} already exists; checkpoints are append-only"
                )
            tx.new_checkpoints.add(rec.id)

        self._call(op, write=True)

    def checkpoint(self, checkpoint_id: int) -> CheckpointRecord:
        return self._seen(
            [self._one("checkpoints", CheckpointRecord, checkpoint_id, "checkpoint")])[0]

    def checkpoints(
        self, worker: int | None = None, include_deleted: bool = False
    ) -> list[CheckpointRecord]:
        return self._seen(self._many("checkpoints", CheckpointRecord, "id", worker=worker,
                                     deleted=None if include_deleted else 0))

    def _seen(self, records: list[CheckpointRecord]) -> list[CheckpointRecord]:
        """Remember committed checkpoint ids read outside a transaction (see mark_deleted)."""
        if self._tx is None:  # inside one, a record may be this transaction's own, uncommitted
            self._known_checkpoints.update(
                r.id for r in records if not r.deleted and isinstance(r.id, int))
        return records

    def mark_checkpoint_deleted(self, checkpoint_id: int) -> None:
        sql = self._sql["delete_checkpoint"]

        def op(conn: Conn) -> None:
            tx = self._tx
            assert tx is not None  # a write: always in a transaction
            if checkpoint_id in self._known_checkpoints or checkpoint_id in tx.new_checkpoints:
                self._defer(sql, (checkpoint_id,))  # known to exist: queued, no round trip
            elif not self._exec(sql, (checkpoint_id,)).fetchall():
                raise KeyError(f"unknown checkpoint {checkpoint_id!r}")
            # Marked now (or, should this transaction roll back, unknown again: a replay or a
            # second call asks the server).
            self._known_checkpoints.discard(checkpoint_id)

        self._call(op, write=True)

    def put_segment(self, rec: SegmentRecord) -> None:
        sql, row = self._sql["put_segment"], to_row(rec)
        self._call(self._write_op(sql, row), write=True)

    def segment(self, segment_id: int) -> SegmentRecord:
        return self._one("segments", SegmentRecord, segment_id, "segment")

    def segments(self, status: str | None = None, worker: int | None = None) -> list[SegmentRecord]:
        return self._many("segments", SegmentRecord, "id", status=status, worker=worker)

    def add_metrics(self, rows: Sequence[MetricRow]) -> None:
        encoded = [to_row(r) for r in rows]
        if not encoded:
            return
        clash_sql, insert_sql = self._sql["metrics_clash"], self._sql["add_metrics"]
        keys = [metric_key(r) for r in rows]
        arrays: list[list[Any]] = [list(col) for col in zip(*encoded, strict=True)]
        # One element type per array (psycopg types a list by its first element).
        arrays[4] = [_number(t, "MetricRow.time") for t in arrays[4]]

        def op(conn: Conn) -> None:
            # Under the experiment's write lock nobody can add a clashing row between this
            # check and the insert, so a refused batch leaves nothing behind without a
            # savepoint.
            tx = self._tx
            assert tx is not None  # a write: always in a transaction
            self._state(tx)
            if all(isinstance(k[1], int) and k[1] > tx.max_metric_segment for k in keys):
                stored = tx.new_metrics  # known absent unless added by this transaction
            else:
                found = self._exec(clash_sql, arrays[:3]).fetchall()
                stored = tx.new_metrics | {(int(w), int(g), int(t)) for w, g, t in found}
            dup = first_duplicate(keys, stored.__contains__)
            if dup is not None:
                raise StoreError(
                    f"metric row (worker, segment, step) = {dup} already exists; "
                    "metrics are append-only (nothing from this batch was added)"
                )
            self._defer(insert_sql, arrays)
            tx.new_metrics.update(keys)

        self._call(op, write=True)

    def metrics(self, worker: int | None = None) -> list[MetricRow]:
        return self._many("metrics", MetricRow, "worker, segment, step", worker=worker)

    def add_event(self, rec: EventRecord) -> int:
        sql, row = self._sql["add_event"], to_row(rec)[1:]

        def op(conn: Conn) -> int:
            tx = self._tx
            assert tx is not None  # add_event always runs in a transaction (a write)
            self._state(tx)
            tx.event_seq += 1
            self._defer(sql, (tx.event_seq, *row))
            return tx.event_seq

        return int(self._call(op, write=True))

    def events(self, kind: str | None = None, worker: int | None = None) -> list[EventRecord]:
        return self._many("events", EventRecord, "id", kind=kind, worker=worker)

    # -- read-only summaries (dashboard): indexed queries ----------------------------------

    def event_counts(self) -> dict[str, int]:
        sql = f'SELECT kind, count(*) FROM "{self.schema}".events GROUP BY kind'
        rows = self._call(lambda c: self._exec(sql).fetchall())
        return {str(k): int(n) for k, n in rows}

    def checkpoint_metrics(self, checkpoints: Sequence[int]) -> dict[int, float | None]:
        # Per checkpoint: its row (primary key), the writer's segments (segments_by_worker) and
        # that segment's metric rows (the metrics primary key): the cost grows with the ids
        # asked for, not with the store.
        s = f'"{self.schema}"'
        sql = (
            f"SELECT c.id, (SELECT m.value FROM {s}.segments g JOIN {s}.metrics m "
            "ON m.worker = g.worker AND m.segment = g.id "
            "WHERE g.worker = c.worker AND g.to_checkpoint = c.id AND g.status = %s "
            "AND m.value IS NOT NULL ORDER BY m.step DESC LIMIT 1) "
            f"FROM {s}.checkpoints c WHERE c.id = ANY(%s::bigint[])"
        )
        ids = sorted({int(i) for i in checkpoints})
        out: dict[int, float | None] = dict.fromkeys(ids)
        if ids:
            rows = self._call(lambda c: self._exec(sql, (COMPLETED, ids)).fetchall())
            for cid, value in rows:
                out[int(cid)] = None if value is None else float(value)
        return out


def _literal(value: Any) -> str:
    """A scalar parameter as an SQL literal (``TypeError`` for anything else).

    What psycopg's generic ``mogrify`` does for these types, at a third of its cost: a
    decision binds a dozen statements. Strings rely on ``standard_conforming_strings=on``
    (set on every connection): only the quote is doubled, a backslash is a plain character.
    """
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise StoreError(f"text {value[:40]!r} cannot be stored: PostgreSQL text cannot "
                             "hold NUL (0x00) characters")
        return "'" + value.replace("'", "''") + "'"
    if kind is int or kind is float:
        if kind is float and not math.isfinite(value):
            return {"nan": "'NaN'", "inf": "'Infinity'", "-inf": "'-Infinity'"}[repr(value)]
        # A leading space keeps a minus sign from making "--" (a comment) after an operator.
        return repr(value) if value >= 0 else f" {value!r}"
    if value is None:
        return "NULL"
    if kind is bool:
        return "true" if value else "false"
    raise TypeError(f"no literal for {kind.__name__}")


def _numbered(sql: str) -> str:
    """``%s`` placeholders as ``$1, $2, ...`` (for PREPARE)."""
    parts = sql.split("%s")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


def _number(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StoreError(f"{what} = {value!r} cannot be stored: expected a number")


def drop_experiment(url: str, experiment: str | None = None) -> bool:
    """Remove an experiment (its schema and every record in it); True if it existed.

    Waits for the experiment's running write transaction, if any; checkpoint files are not
    touched. For tests, benchmarks and cleaning up after a sweep.
    """
    parsed = parse_url(url, experiment)
    with psycopg.connect(parsed.conninfo, autocommit=True,
                         connect_timeout=_CONNECT_TIMEOUT_S) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(parsed.schema),))
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (parsed.schema,)
        ).fetchone()
        if found is None:
            return False
        conn.execute(f'DROP SCHEMA "{parsed.schema}" CASCADE')
        return True
