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
