"""Retention on a real checkpoint folder and a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from firepbt.checkpoints import CheckpointDir
from firepbt.engine.lease import Lease
from firepbt.engine.retention import Retention
from firepbt.storage import open_storage
from firepbt.store import SQLiteStore
from firepbt.store.base import CheckpointRecord


def write(root: Path, cid: int) -> tuple[str, str]:
    return CheckpointDir(root).write(cid, lambda p: (p / "w.txt").write_text(str(cid)), {})


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SQLiteStore, Path, Retention]:
    store = SQLiteStore(tmp_path / "s.db")
    lease = Lease(store)
    lease.take()
    root = tmp_path / "s.db.ckpt"
    with store.transaction(fence=lease.holder):
        store.put_state("experiment_id", "e1")
        for cid, (writer, step) in {1: (0, 10), 2: (0, 20), 3: (0, 30), 4: (1, 10)}.items():
            path, checksum = write(root, cid)
            store.add_checkpoint(CheckpointRecord(cid, writer, step, path, checksum, {}, None,
                                                  0.0))
    return store, root, Retention(store, open_storage(root), 1, True, lease.holder)


def test_checkpoint_files_are_addressed_by_id(tmp_path: Path) -> None:
    files = open_storage(tmp_path / "c")
    path, _ = write(tmp_path / "c", 7)
    assert files.ids() == [7] and files.exists(7) and not files.exists(8)
    assert files.id_of(path) == 7 and files.id_of(str(tmp_path / "notes")) is None
    assert files.url == str(tmp_path / "c")
    files.delete(7)
    files.delete(7)  # idempotent
    assert files.ids() == [] and not files.exists(7)


def test_the_sweep_deletes_only_what_the_store_does_not_know(setup) -> None:
    store, root, retention = setup
    retention.sweep()  # claims the folder (owner.json)
    write(root, 99)  # a segment's write whose result was never committed
    retention.sweep()
    assert retention.files.ids() == [1, 2, 3, 4] and sorted(retention.live) == [1, 2, 3, 4]
    assert CheckpointDir(root).owner()["experiment"] == "e1"  # type: ignore[index]


def test_collection_commits_the_records_first_and_never_takes_a_pinned_one(setup) -> None:
    store, root, retention = setup
    retention.sweep()
    retention.collect(pinned={1})
    retention.close()  # wait for the background deletions
    # keep 1 newest per writer (3 for worker 0, 4 for worker 1); 1 is pinned; 2 goes.
    assert store.checkpoint(2).deleted and not store.checkpoint(1).deleted
    assert retention.files.ids() == [1, 3, 4] and sorted(retention.live) == [1, 3, 4]
    assert retention.gone(store.checkpoint(2)) and not retention.gone(store.checkpoint(3))
    retention.files.delete(3)  # lost behind our back
    assert retention.gone(store.checkpoint(3))


def test_a_stale_result_loses_its_checkpoint_unless_the_store_records_it(setup) -> None:
    store, root, retention = setup
    late, _ = write(root, 50)
    retention.drop_uncommitted(late)
    retention.drop_uncommitted(store.checkpoint(4).path)  # a duplicate of a committed one
    assert retention.files.ids() == [1, 2, 3, 4]
    retention.add(60, 1, 20, "x", "y")
    assert not retention.due(population_size=4)
    retention.add(61, 0, 40, "x", "z")
    assert retention.due(population_size=4)  # more than a quarter wrote new checkpoints
    assert retention.source(60) == ("x", "y")
