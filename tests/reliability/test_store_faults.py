"""Scenarios 8, 9, 18 and 19: corrupted stores, concurrent writers, long runs, format versions."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest
from rel_helpers import assert_invariants, leftover_temp_dirs

from firepbt import PBT, resume, run
from firepbt.checkpoints import CheckpointDir, CheckpointFormatError, default_root
from firepbt.errors import FormatVersionError, StoreError
from firepbt.invariants import check_store
from firepbt.store import SegmentRecord, open_store
from firepbt.store.conformance import claim


def small_store(path: Path) -> Path:
    run("quadratic", algorithm=PBT(population=2), steps=8, interval=4, store=str(path),
        executor="inprocess", seed=1)
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-header"])
def test_corrupted_store_stops_startup_naming_the_file_and_keeps_the_evidence(
    damage: str, tmp_path: Path
) -> None:
    """#8: real corruption is an error naming the file; never an empty restart or overwrite."""
    path = small_store(tmp_path / "s.db")
    raw = path.read_bytes()
    bad = {"garbage": b"this is not a database" * 100, "truncated": raw[: len(raw) // 3],
           "empty-header": b"SQLite format 3\x00" + b"\x00" * 200}[damage]
    for side in ("-wal", "-shm"):  # the damaged file alone, no journal to recover from
        Path(f"{path}{side}").unlink(missing_ok=True)
    path.write_bytes(bad)
    with pytest.raises(StoreError) as err:
        resume(str(path), executor="inprocess")
    assert str(path) in str(err.value)
    assert path.read_bytes() == bad  # the evidence is untouched
    with pytest.raises(StoreError, match=str(path)):
        check_store(str(path))


def test_torn_wal_tail_is_ignored(tmp_path: Path) -> None:
    """#8: a half-written last frame (a kill mid-commit) is dropped; the store opens."""
    path = small_store(tmp_path / "s.db")
    st = open_store(str(path))
    conn = sqlite3.connect(str(path))  # keep a WAL around: write through a second connection
    conn.execute("PRAGMA journal_mode=WAL")
    st.close()
    wal = Path(f"{path}-wal")
    with open(wal, "ab") as fh:
        fh.write(os.urandom(1500))  # a torn frame after the last commit
    conn.close()
    assert_invariants(path)
    assert resume(str(path), executor="inprocess").status() == "finished"


def test_newer_store_format_is_refused(tmp_path: Path) -> None:
    """#19: a newer unknown version is refused, never guessed at; the current one loads."""
    path = small_store(tmp_path / "s.db")
    assert_invariants(path)  # this release's stores load
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'format_version'")
    conn.commit()
    conn.close()
    with pytest.raises(FormatVersionError, match="999"):
        resume(str(path), executor="inprocess")


def test_newer_checkpoint_format_is_refused_before_load(tmp_path: Path) -> None:
    """#19 and #7: a checkpoint of an unknown format never loads; the checker reports it."""
    path = small_store(tmp_path / "s.db")
    st = open_store(str(path))
    rec = st.checkpoint(st.workers()[0].checkpoint)  # type: ignore[arg-type]
    manifest = Path(rec.path) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format"] = 2
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match="format version 2"):
        CheckpointDir(Path(rec.path).parent).verify(rec.path, rec.checksum)
    assert any("invariant 1" in p and "format version 2" in p for p in check_store(st))


def _claimer(path: str, n_segments: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    st = open_store(path)
    claimed = []
    for sid in range(1, n_segments + 1):
        with st.transaction():
            if claim(st, sid, f"pid-{os.getpid()}"):
                claimed.append(sid)
    ids = [st.next_id("shared") for _ in range(10)]
    st.close()
    out.put((claimed, ids))


@pytest.mark.slow
def test_many_concurrent_writers_claim_each_task_once_and_lose_no_update(
    tmp_path: Path,
) -> None:
    """#9: 8 processes on one SQLite store: busy store absorbed, every task claimed once."""
    path = str(tmp_path / "s.db")
    st = open_store(path)
    n = 40
    with st.transaction():
        for sid in range(1, n + 1):
            st.put_segment(SegmentRecord(sid, 0, 0, 0, 4, None, {}))
    st.close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(path, n, out)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    claims = [sid for claimed, _ in results for sid in claimed]
    assert sorted(claims) == list(range(1, n + 1))  # each exactly once
    ids = [i for _, got in results for i in got]
    assert sorted(ids) == list(range(1, 81))  # no lost or doubled counter update


@pytest.mark.slow
def test_long_run_keeps_files_temp_dirs_and_checkpoints_bounded(tmp_path: Path) -> None:
    """#18 and #4: 1,000 ready/exploit cycles; resources bounded; invariant 4 throughout."""
    fd_dir = Path("/proc/self/fd")
    fds_before = len(os.listdir(fd_dir))
    path = tmp_path / "long.db"
    res = run("quadratic", algorithm=PBT(population=4), steps=250, interval=1, eval_every=1,
              store=str(path), executor="inprocess", workers=2, seed=9, keep_checkpoints=1)
    decisions = res.store.get_state("tick")
    assert decisions >= 990  # one decision per ready point: 4 members x 250 (minus the end)
    assert len(res.events("exploit")) >= 10
    ckpt_root = default_root(path)
    on_disk = [p for p in ckpt_root.iterdir() if p.name.startswith("c")]
    members = len(res.store.workers())
    # Retention keeps 1 per writer plus pinned current ones; collection is amortised.
    assert len(on_disk) <= members * 3, len(on_disk)
    assert len(res.store.checkpoints()) == len(on_disk)
    assert leftover_temp_dirs(ckpt_root) == []
    res.store.close()
    assert len(os.listdir(fd_dir)) <= fds_before + 2
    assert_invariants(path)
