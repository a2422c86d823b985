"""PostgreSQL-specific behaviour: URLs, several experiments in one database, validation,
reconnecting (a killed session, a server stopped for 10 s), bounded waits, many processes."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgres extra)")

from firepbt.errors import (  # noqa: E402
    ConfigError,
    FormatVersionError,
    LockLost,
    StoreCorrupt,
    StoreError,
)
from firepbt.store import (  # noqa: E402
    FORMAT_VERSION,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    WorkerRecord,
    open_store,
)
from firepbt.store.conformance import check_concurrent_writers  # noqa: E402
from firepbt.store.pgserver import TempPostgres, missing_reason  # noqa: E402
from firepbt.store.postgres import PostgresStore, drop_experiment, parse_url  # noqa: E402


def _worker(i: int) -> WorkerRecord:
    return WorkerRecord(id=i, role="member", subpop=1, hparams={"lr": i / 10}, step=i,
                        checkpoint=None)


def _raw(url: str) -> psycopg.Connection:
    return psycopg.connect(parse_url(url).conninfo, autocommit=True)


def _kill_sessions(url: str, store: PostgresStore) -> None:
    """Terminate the store's server session, as a network drop or a failover would."""
    with _raw(url) as raw:
        killed = raw.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'firepbt' AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed, "no firepbt session to terminate"


# -- URLs (no server needed) -------------------------------------------------------------------


def test_url_names_the_experiment_and_hides_the_password() -> None:
    p = parse_url("postgresql://ann:s3cret@db.example:6543/runs?experiment=sweep_1&sslmode=disable")
    assert p.experiment == "sweep_1" and p.schema == "firepbt_sweep_1"
    assert "s3cret" not in p.public and "s3cret" in p.conninfo
    assert p.public == "postgresql://ann@db.example:6543/runs?sslmode=disable&experiment=sweep_1"
    assert "experiment" not in p.conninfo and "sslmode=disable" in p.conninfo
    assert not p.synchronous_commit
    default = parse_url("postgres://h/db")
    assert default.experiment == "default" and default.public.startswith("postgresql://h/db?")
    assert parse_url("postgresql://h/db?synchronous_commit=on").synchronous_commit


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://h/db?experiment=Big", r"experiment = 'Big': must be 1-48 lower-case"),
        ("postgresql://h/db?experiment=", r"experiment = '': must be"),
        ("postgresql://h/db?experiment=a;drop", r"experiment = 'a;drop'"),
        ("postgresql://h/db?experiment=" + "a" * 49, "must be 1-48"),
        ("postgresql://h/db?synchronous_commit=maybe", r"synchronous_commit = 'maybe'"),
    ],
)
def test_bad_urls_are_refused_naming_the_value_and_rule(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        open_store(url)
    assert repr(url) in str(info.value)


def test_unreachable_server_fails_fast_naming_the_url() -> None:
    from firepbt.store.pgserver import free_port

    url = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/db?experiment=x"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as info:
        open_store(url)
    assert time.monotonic() - t0 < 10
    assert "postgresql://nobody@127.0.0.1" in str(info.value) and "pw" not in str(info.value)


# -- one database, several experiments ---------------------------------------------------------


def test_experiments_share_a_database_but_nothing_else(postgres_url: str) -> None:
    other_url = postgres_url + "_b"
    with open_store(postgres_url) as a, open_store(other_url) as b:
        assert isinstance(a, PostgresStore) and a.url == postgres_url
        a.create_experiment({"name": "a"})
        b.create_experiment({"name": "b"})  # one experiment per store, per name
        a.put_worker(_worker(1))
        a.acquire_lock(LockHolder(1, "h1", 0.0, "ta"), stale_after_s=30, now=100.0)
        b.acquire_lock(LockHolder(2, "h2", 0.0, "tb"), stale_after_s=30, now=100.0)  # own lock
        assert [a.next_id("c") for _ in range(2)] == [1, 2] and b.next_id("c") == 1
        assert b.workers() == [] and b.experiment() == {"name": "b"}
        assert a.workers() == [_worker(1)]
    with open_store(a.url, create=False) as again:  # the url opens the same experiment
        assert again.experiment() == {"name": "a"}
    assert drop_experiment(other_url) and not drop_experiment(other_url)
    with pytest.raises(StoreError, match=r"no experiment 't\d+_b'"):
        open_store(other_url, create=False)


def test_foreign_schema_is_refused_and_left_untouched(postgres_url: str) -> None:
    schema = parse_url(postgres_url).schema
    with _raw(postgres_url) as raw:
        raw.execute(f"CREATE SCHEMA {schema}")
        raw.execute(f"CREATE TABLE {schema}.notes (x TEXT)")
        raw.execute(f"INSERT INTO {schema}.notes VALUES ('precious')")
    with pytest.raises(StoreCorrupt, match=f"schema {schema} exists but is not a firepbt"):
        open_store(postgres_url)
    with _raw(postgres_url) as raw:
        assert raw.execute(f"SELECT x FROM {schema}.notes").fetchall() == [("precious",)]


def test_newer_format_version_is_refused(postgres_url: str) -> None:
    open_store(postgres_url).close()
    schema = parse_url(postgres_url).schema
    with _raw(postgres_url) as raw:
        raw.execute(f"UPDATE {schema}.meta SET value = %s", (str(FORMAT_VERSION + 1),))
    with pytest.raises(FormatVersionError, match=f"version {FORMAT_VERSION + 1} is newer"):
        open_store(postgres_url)


def test_a_format_1_store_is_upgraded_when_opened(postgres_url: str) -> None:
    with open_store(postgres_url) as store:
        store.add_metrics([MetricRow(1, 1, 5, 0.5, 0.0)])
    schema = parse_url(postgres_url).schema
    with _raw(postgres_url) as raw:  # back to what firepbt wrote before metric rows had extra
        raw.execute(f"ALTER TABLE {schema}.metrics DROP COLUMN extra")
        raw.execute(f"ALTER TABLE {schema}.segments ADD COLUMN owner TEXT")
        raw.execute(f"UPDATE {schema}.meta SET value = '1'")
    with open_store(postgres_url, create=False) as store:
        assert store.metrics() == [MetricRow(1, 1, 5, 0.5, 0.0)]
        store.add_metrics([MetricRow(1, 2, 10, 0.6, 1.0, {"loss": 0.4})])
        assert store.metrics()[1].extra == {"loss": 0.4}
    with _raw(postgres_url) as raw:
        version = raw.execute(f"SELECT value FROM {schema}.meta").fetchone()
    assert version == (str(FORMAT_VERSION),)


# -- values travel as client-bound literals: quoting must be exact ------------------------------

# Text with what SQL quoting must get right: quotes, backslashes, %, ;, comments, non-ASCII.
# No NUL: PostgreSQL text cannot hold one (the store then raises StoreError).
_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=12) | st.sampled_from(["'", "''", "\\", "\\'", "%s", "%(x)s", "; --",
                                                "$1", "E'\\n'", "ü€😀"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def json_store(postgres_server: TempPostgres) -> Iterator[PostgresStore]:
    with PostgresStore(f"{postgres_server.url}?experiment=quoting") as store:
        yield store


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json, path=_text, step=st.integers(0, 2**62))
def test_values_round_trip_exactly(json_store: PostgresStore, value: object, path: str,
                                   step: int) -> None:
    store = json_store
    cid = store.next_id("c")
    rec = CheckpointRecord(id=cid, worker=1, step=step, path=path, checksum=path,
                           hparams={"v": value}, parent=None, created=float(step))
    store.put_state("v", value)  # outside a transaction: queued, sent with the COMMIT
    with store.transaction():  # inside one: queued, sent with the next read
        store.add_checkpoint(rec)
        assert store.get_state("v") == value
    assert store.checkpoint(cid) == rec


def test_text_with_a_nul_is_refused_naming_the_rule(postgres_url: str) -> None:
    with open_store(postgres_url) as store, pytest.raises(StoreError, match="0x00"):
        store.add_checkpoint(CheckpointRecord(1, 1, 0, "a\x00b", "x", {}, None, 0.0))


def test_duplicate_checks_hold_on_both_paths(postgres_url: str) -> None:
    """Keys above the maxima read at BEGIN skip the server-side check; the rest do not."""

    def ckpt(i: int) -> CheckpointRecord:
        return CheckpointRecord(i, 1, i, f"c{i}", "x", {}, None, 0.0)

    with open_store(postgres_url) as store:
        store.add_checkpoint(ckpt(10))
        store.add_metrics([MetricRow(1, 10, 1, 1.0, 0.0)])
        with store.transaction():
            store.add_checkpoint(ckpt(12))  # above the maximum: queued
            with pytest.raises(StoreError, match="checkpoint 12 already exists"):
                store.add_checkpoint(ckpt(12))  # added by this very transaction
            with pytest.raises(StoreError, match="checkpoint 10 already exists"):
                store.add_checkpoint(ckpt(10))  # at the maximum: checked on the server
            store.add_checkpoint(ckpt(3))  # below it, absent: checked, then added
            store.add_metrics([MetricRow(1, 11, 1, 1.0, 0.0), MetricRow(1, 11, 2, 1.0, 0.0)])
            with pytest.raises(StoreError, match=r"\(1, 11, 2\) already exists"):
                store.add_metrics([MetricRow(1, 11, 3, 1.0, 0.0), MetricRow(1, 11, 2, 1.0, 0.0)])
            with pytest.raises(StoreError, match=r"\(1, 10, 1\) already exists"):
                store.add_metrics([MetricRow(1, 10, 1, 1.0, 0.0)])
            store.add_metrics([MetricRow(2, 10, 1, 1.0, 0.0)])  # below, absent: added
        assert [c.id for c in store.checkpoints()] == [3, 10, 12]
        assert [(m.worker, m.segment, m.step) for m in store.metrics()] == [
            (1, 10, 1), (1, 11, 1), (1, 11, 2), (2, 10, 1)]


# -- round trips ---------------------------------------------------------------------------------


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every message sent to the server from now on (each one round trip)."""
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def spy(self: psycopg.Connection, query: object, *args: object, **kw: object) -> object:
        sent.append(str(query))
        return execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    return sent


def _decision(store: PostgresStore, holder: LockHolder, n: int) -> None:
    """What the controller's transaction for one result writes (a Continue decision)."""
    with store.transaction(fence=holder):
        seg, ckpt = store.next_id("segment"), store.next_id("checkpoint")
        store.add_checkpoint(CheckpointRecord(ckpt, 1, n, f"c{ckpt}", "x", {}, None, 0.0))
        store.add_metrics([MetricRow(1, seg, n, 0.5, 0.0)])
        store.add_event(EventRecord(0, "exploit", 1, n, 0.0))
        store.put_worker(_worker(1))
        store.put_state("tick", n)
        if ckpt > 2:
            store.mark_checkpoint_deleted(ckpt - 2)  # committed by this store: known to exist


def test_a_fenced_decision_is_one_round_trip(postgres_url: str, messages: list[str]) -> None:
    me = LockHolder(1, "h", 0.0, "me")
    with open_store(postgres_url) as store:
        assert isinstance(store, PostgresStore)
        store.acquire_lock(me, stale_after_s=30, now=100.0)
        _decision(store, me, 1)  # the first reads the start state: two
        messages.clear()
        for n in range(2, 6):
            _decision(store, me, n)
        assert len(messages) == 4 and all(
            m.startswith("BEGIN") and m.endswith("COMMIT") for m in messages), messages
        messages.clear()
        with store.transaction(fence=me):  # a read is a round trip of its own
            store.next_id("segment")
            store.checkpoint(5)
            store.put_state("tick", 6)
        assert len(messages) == 2 and "firepbt_begin" not in messages[1]
        messages.clear()
        store.put_state("status", "running")  # unfenced, no ids: one round trip too
        assert len(messages) == 1
        assert [c.id for c in store.checkpoints()] == [4, 5]
        assert store.next_id("checkpoint") == 6 and len(store.events()) == 5


def test_a_fenced_transaction_after_another_writer_is_replayed(
    postgres_url: str, messages: list[str]
) -> None:
    """The start state remembered from the last commit is stale after another connection
    wrote: the fenced transaction is replayed on the real one, and commits if it returns
    the same (here the other writer's counter is not one the transaction uses)."""
    me = LockHolder(1, "h", 0.0, "me")
    with open_store(postgres_url) as store, open_store(postgres_url) as other:
        store.acquire_lock(me, stale_after_s=30, now=100.0)
        _decision(store, me, 1)
        other.next_id("unrelated")
        other.add_metrics([MetricRow(2, 0, 0, 1.0, 0.0)])
        messages.clear()
        _decision(store, me, 2)
        assert len(messages) > 1  # refused at the first round trip, then replayed
        messages.clear()
        _decision(store, me, 3)
        assert len(messages) == 1  # what the replay committed is the store's new start
        with pytest.raises(StoreError, match=r"\(2, 0, 0\) already exists"):
            store.add_metrics([MetricRow(2, 0, 0, 1.0, 0.0)])
        assert [c.id for c in store.checkpoints()] == [2, 3]  # 1 marked deleted
        assert store.next_id("unrelated") == 2 and store.get_state("tick") == 3


# -- reconnecting --------------------------------------------------------------------------------


def test_a_killed_session_mid_transaction_is_replayed_and_committed_once(
    postgres_url: str,
) -> None:
    with open_store(postgres_url) as store:
        store.put_state("n", 1)
        with store.transaction():
            ids = [store.next_id("ckpt"), store.next_id("ckpt")]
            store.put_worker(_worker(1))
            n = store.get_state("n")
            _kill_sessions(postgres_url, store)  # everything above is rolled back server-side
            store.put_state("n", n + 1)  # reconnects, replays the calls above, goes on
            ids.append(store.next_id("ckpt"))
            store.add_metrics([MetricRow(1, 1, 1, 0.5, 0.0)])
        assert ids == [1, 2, 3]
        assert store.get_state("n") == 2 and store.workers() == [_worker(1)]
        assert store.next_id("ckpt") == 4  # each id handed out once
        _kill_sessions(postgres_url, store)  # between transactions: a read reconnects
        assert store.metrics() == [MetricRow(1, 1, 1, 0.5, 0.0)]


def test_a_replay_that_reads_something_else_commits_nothing(postgres_url: str) -> None:
    with open_store(postgres_url) as store, open_store(postgres_url) as other:
        store.put_state("x", 1)
        with pytest.raises(StoreError, match="replayed on a new one") as info, store.transaction():
            seen = store.get_state("x")
            _kill_sessions(postgres_url, store)  # its write lock went with the session
            other.put_state("x", 5)  # so another writer got in before the reconnect
            store.put_state("y", seen)
        assert "returned [('5',)] instead of [('1',)]" in str(info.value)
        assert store.get_state("y") is None and store.get_state("x") == 5


def test_a_fenced_transaction_replayed_after_a_takeover_raises_lock_lost(
    postgres_url: str,
) -> None:
    old, new = LockHolder(1, "host-a", 0.0, "old"), LockHolder(2, "host-b", 0.0, "new")
    with open_store(postgres_url) as store, open_store(postgres_url) as other:
        store.acquire_lock(old, stale_after_s=30, now=100.0)
        with pytest.raises(LockLost, match="pid 2 on host host-b"), store.transaction(fence=old):
            store.put_state("round", 1)
            _kill_sessions(postgres_url, store)
            other.acquire_lock(new, stale_after_s=30, now=200.0)  # stale: taken over
            store.put_state("round", 2)
        assert other.get_state("round") is None


def test_a_server_that_stays_down_fails_within_timeout(postgres_url: str) -> None:
    # Its own server: stopping the session's would disturb the other tests.
    if (why := missing_reason()) is not None:
        pytest.skip(why)
    with TempPostgres() as pg:
        store = PostgresStore(f"{pg.url}?experiment=x", timeout_s=1.5)
        store.put_state("k", 1)
        pg.stop("fast")
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"could not restore it within timeout_s = 1.5s"):
            store.put_state("k", 2)
        with pytest.raises(StoreError, match="could not restore"):
            store.get_state("k")
        assert time.monotonic() - t0 < 8
        pg.start()
        assert store.get_state("k") == 1  # usable again once the server is back
        store.close()


@pytest.fixture
def own_server() -> Iterator[TempPostgres]:
    if (why := missing_reason()) is not None:
        pytest.skip(why)
    with TempPostgres() as pg:
        yield pg


def test_server_stopped_for_10s_mid_run_loses_no_commit(own_server: TempPostgres) -> None:
    """A writer commits in a loop while the server is stopped (``-m fast``) for 10 s."""
    url = f"{own_server.url}?experiment=outage"
    acked: list[int] = []  # transactions whose commit returned
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            with PostgresStore(url, timeout_s=30) as store:
                while not stop.is_set():
                    with store.transaction():
                        n = store.next_id("tx")
                        store.put_state("last", n)
                        store.add_metrics([MetricRow(1, 1, n, float(n), 0.0)])
                    acked.append(n)
                    time.sleep(0.002)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(acked) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked) >= 50, errors
        own_server.stop("fast")  # rolls back the open transaction, closes every session
        down_at = len(acked)
        time.sleep(10)
        assert len(acked) - down_at <= 1  # nothing commits while the server is down
        own_server.start()
        deadline = time.monotonic() + 20
        while len(acked) < down_at + 50 and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=40)
    assert not errors, errors
    assert len(acked) >= down_at + 50, "the store did not resume after the restart"
    assert acked == list(range(1, len(acked) + 1))  # no id lost or handed out twice
    with PostgresStore(url, create=False) as store:
        assert store.get_state("last") == acked[-1]
        assert [m.step for m in store.metrics()] == acked  # every acknowledged commit is there


@pytest.mark.slow  # spawning interpreters that import firepbt
def test_processes_claim_each_segment_once(postgres_url: str) -> None:
    check_concurrent_writers(functools.partial(PostgresStore, postgres_url), processes=4,
                             segments=16)
