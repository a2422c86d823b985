"""SQLite-specific behaviour: the file format, crash recovery, locking and many processes."""

from __future__ import annotations

import functools
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from firepbt.errors import ConfigError, FormatVersionError, StoreCorrupt, StoreError
from firepbt.store import FORMAT_VERSION, MetricRow, SQLiteStore, WorkerRecord
from firepbt.store.conformance import check_concurrent_writers


def _worker(i: int) -> WorkerRecord:
    return WorkerRecord(
        id=i, role="member", subpop=1, hparams={"lr": i / 10}, step=i, checkpoint=None
    )


def _make_store(path: Path) -> None:
    with SQLiteStore(path) as store:
        store.create_experiment({"name": "x"})
        for i in range(1, 40):
            store.put_worker(_worker(i))
        store.add_metrics([MetricRow(1, 1, step, float(step), 0.0) for step in range(500)])


def test_reopen_persists(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "exp.db"  # the missing folders are created
    with SQLiteStore(path) as store:
        store.create_experiment({"name": "x"})
        store.put_worker(_worker(1))
        store.put_state("round", 3)
    with SQLiteStore(path, create=False) as again:
        assert again.experiment() == {"name": "x"}
        assert again.workers() == [_worker(1)]
        assert again.get_state("round") == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["exp.db"]  # no temp files left


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nope.db"):
        SQLiteStore(tmp_path / "nope.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_wal_journal_and_normal_sync(tmp_path: Path) -> None:
    path = tmp_path / "exp.db"
    with SQLiteStore(path) as store:
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def _foreign_db(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE notes (x TEXT)")
    raw.execute("INSERT INTO notes VALUES ('precious')")
    raw.commit()
    raw.close()


def _truncated_store(path: Path) -> None:
    _make_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_table(path: Path) -> None:
    """Overwrite the metrics table's root page: the schema and meta still read fine."""
    _make_store(path)
    raw = sqlite3.connect(path)
    root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "not a SQLite database"),
        (lambda p: p.write_bytes(b""), "not a SQLite database"),  # never silently starts empty
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200), "damaged"),
        (_foreign_db, "not a firepbt store"),
        (_truncated_store, "damaged"),
        (_damaged_table, "damaged"),  # found only by the integrity check at open
    ],
    ids=["garbage", "empty", "bad-pages", "foreign", "truncated", "damaged-table"],
)
def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "exp.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt, match=match) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exp.db"
    _make_store(path)
    raw = sqlite3.connect(path)
    raw.execute(
        "UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION + 1),)
    )
    raw.commit()
    raw.close()
    with pytest.raises(FormatVersionError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert str(path) in message and f"version {FORMAT_VERSION + 1}" in message
    assert f"({FORMAT_VERSION})" in message


def test_torn_wal_tail_keeps_committed_data(tmp_path: Path) -> None:
    path, crashed = tmp_path / "exp.db", tmp_path / "crashed.db"
    store = SQLiteStore(path)
    with store.transaction():
        for i in range(1, 6):
            store.put_worker(_worker(i))
    store.put_state("committed", True)
    wal = Path(f"{path}-wal")
    committed_size = wal.stat().st_size
    with store.transaction():  # the transaction the "kill" tears
        store.put_worker(_worker(6))
        store.add_metrics([MetricRow(6, 1, 1, 1.0, 0.0)])
    torn_size = wal.stat().st_size
    assert torn_size > committed_size  # still in the WAL, not checkpointed
    # A kill leaves the db and WAL as they are; the copy is the process's view at that moment.
    shutil.copyfile(path, crashed)
    shutil.copyfile(wal, f"{crashed}-wal")
    store.close()
    with open(f"{crashed}-wal", "r+b") as f:
        f.truncate(torn_size - 100)  # mid-way through the last (commit) frame
    with SQLiteStore(crashed) as recovered:
        assert recovered.workers() == [_worker(i) for i in range(1, 6)]
        assert recovered.get_state("committed") is True
        assert recovered.metrics() == []
        recovered.put_worker(_worker(7))  # and it is writable again
        assert [w.id for w in recovered.workers()] == [1, 2, 3, 4, 5, 7]


def test_busy_file_is_retried_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "exp.db"
    SQLiteStore(path).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with SQLiteStore(path, timeout_s=0.05) as impatient:
            with pytest.raises(StoreError, match="locked"):
                impatient.put_state("k", 1)
            assert impatient.get_state("k") is None  # WAL readers are not blocked
        release = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
        release.start()
        with SQLiteStore(path, timeout_s=30) as patient:
            patient.put_state("k", 2)  # absorbed by the bounded retry
            assert patient.get_state("k") == 2
        release.join()
    finally:
        blocker.close()


def test_threads_share_one_store(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "exp.db") as store:

        def bump() -> None:
            for _ in range(25):
                with store.transaction():
                    store.put_state("n", store.get_state("n", 0) + 1)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get_state("n") == 100


def test_closed_store_raises(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "exp.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.workers()


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"timeout_s": 0}, "timeout_s"), ({"timeout_s": -1.0}, "timeout_s")]
)
def test_settings_are_validated(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SQLiteStore(tmp_path / "exp.db", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # spawning 8 interpreters that import firepbt
def test_eight_processes_claim_each_segment_once(tmp_path: Path) -> None:
    check_concurrent_writers(functools.partial(SQLiteStore, tmp_path / "exp.db"), processes=8)


# The schema of a format 1 store, as firepbt wrote it before metric rows had ``extra`` (and
# while segments had an ``owner``), verbatim.
_FORMAT_1_SCHEMA = """
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
    to_checkpoint INTEGER, error TEXT, owner TEXT);
CREATE INDEX segments_by_status ON segments (status, id);
CREATE INDEX segments_by_worker ON segments (worker, id);
CREATE TABLE metrics (
    worker INTEGER NOT NULL, segment INTEGER NOT NULL, step INTEGER NOT NULL, value REAL,
    time REAL NOT NULL, PRIMARY KEY (worker, segment, step)) WITHOUT ROWID;
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, worker INTEGER NOT NULL,
    step INTEGER NOT NULL, time REAL NOT NULL, donor INTEGER, donor_checkpoint INTEGER,
    old_hparams TEXT, new_hparams TEXT, info TEXT NOT NULL);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_worker ON events (worker, id);
"""


def _format_1_store(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.executescript(_FORMAT_1_SCHEMA)
    raw.execute("INSERT INTO meta VALUES ('format_version', '1')")
    raw.execute("INSERT INTO experiment VALUES (1, '{\"name\": \"old\"}')")
    raw.execute("INSERT INTO segments VALUES (1, 1, 0, 0, 10, NULL, '{}', 'pending', 0, NULL,"
                " NULL, 'pid-7')")
    raw.executemany("INSERT INTO metrics VALUES (1, 1, ?, ?, 0.0)", [(5, 0.5), (10, None)])
    raw.commit()
    raw.close()


def _format_version(path: Path) -> str:
    raw = sqlite3.connect(path)
    try:
        return str(raw.execute("SELECT value FROM meta WHERE key = 'format_version'")
                   .fetchone()[0])
    finally:
        raw.close()


def test_a_format_1_store_is_read_as_it_is_and_upgraded_by_its_first_metric_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    _format_1_store(path)
    with SQLiteStore(path, create=False) as reader:  # what status, report and check do
        assert reader.metrics() == [MetricRow(1, 1, 5, 0.5, 0.0), MetricRow(1, 1, 10, None, 0.0)]
        assert [dict(m.extra) for m in reader.metrics(worker=1)] == [{}, {}]
        assert reader.segment(1).status == "pending"
    assert _format_version(path) == "1"  # reading changed nothing
    with SQLiteStore(path) as writer, SQLiteStore(path, create=False) as reader:
        with pytest.raises(RuntimeError), writer.transaction():  # a rolled back upgrade...
            writer.add_metrics([MetricRow(1, 2, 15, 0.6, 1.0, {"loss": 0.4})])
            assert writer.metrics()[-1].extra == {"loss": 0.4}  # (seen inside it)
            raise RuntimeError("boom")
        assert _format_version(path) == "1" and len(writer.metrics()) == 2  # ...left none
        with writer.transaction():
            writer.add_metrics([MetricRow(1, 2, 15, 0.6, 1.0, {"loss": 0.4})])
        writer.add_metrics([MetricRow(1, 3, 20, 0.7, 2.0, {"loss": 0.3})])
        # A reader opened before the upgrade sees the new column too.
        assert [dict(m.extra) for m in reader.metrics()] == [{}, {}, {"loss": 0.4},
                                                            {"loss": 0.3}]
    assert _format_version(path) == str(FORMAT_VERSION)
    with SQLiteStore(path, create=False) as again:
        assert again.metrics()[2] == MetricRow(1, 2, 15, 0.6, 1.0, {"loss": 0.4})
