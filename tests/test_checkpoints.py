"""Tests for firepbt.checkpoints: the controller's CheckpointDir adapter on a local folder and on
a URL, the local layout's orphans, and retention. The storage contract itself is tested by the
shipped conformance suite (tests/storage/test_storage_conformance.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firepbt import faults
from firepbt.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointDir,
    collectable,
    combined_checksum,
    default_root,
    pid_alive,
    store_identity,
)
from firepbt.errors import CheckpointError, ConfigError


@pytest.fixture(autouse=True)
def no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.CRASH_AT_ENV, raising=False)
    monkeypatch.delenv(faults.FAULT_DIR_ENV, raising=False)


def save_two_files(path: Path) -> None:
    (path / "weights.bin").write_bytes(bytes(range(256)) * 8)
    (path / "opt").mkdir()
    (path / "opt" / "state.json").write_text('{"lr": 0.1}')


TAGS = {"hparams": {"lr": 0.1}, "parent": None, "step": 100}


def names(root: Path) -> list[str]:
    return sorted(os.listdir(root))


@pytest.fixture
def cdir(tmp_path: Path) -> CheckpointDir:
    return CheckpointDir(tmp_path / "ckpt")


# -- writing ------------------------------------------------------------------------------------


def test_write_creates_complete_checkpoint(cdir: CheckpointDir) -> None:
    path, checksum = cdir.write(1, save_two_files, TAGS)
    assert path == str(cdir.path_for(1))
    assert Path(path).name == "c000000001"
    assert names(cdir.root) == ["c000000001"]
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    assert manifest["format"] == CHECKPOINT_FORMAT
    assert manifest["id"] == 1
    assert manifest["tags"] == TAGS
    assert set(manifest["files"]) == {"weights.bin", "opt/state.json"}
    assert manifest["checksum"] == checksum == combined_checksum(manifest["files"])
    assert cdir.verify(path, checksum) == TAGS
    assert cdir.read_tags(path) == TAGS
    assert cdir.ids() == [1]


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=str(blocker)):
        CheckpointDir(blocker)


# -- crash in a real process ----------------------------------------------------------------------

CHILD = (
    "import os, sys\n"
    "print(f'pid={os.getpid()}', file=sys.stderr, flush=True)\n"
    "from firepbt.checkpoints import CheckpointDir\n"
    "d = CheckpointDir(sys.argv[1])\n"
    "for cid in map(int, sys.argv[2:]):\n"
    "    d.write(cid, lambda p: (p / 'w.bin').write_bytes(b'%d' % cid), {'id': cid})\n"
    "    print(cid, flush=True)\n"
)


def done_pid(done: subprocess.CompletedProcess[str]) -> int:
    return int(done.stderr.split("pid=")[1].split()[0])


def run_writer(root: Path, ids: list[int], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FIREPBT_")} | env
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), *map(str, ids)],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("point", ["checkpoint.before_rename", "checkpoint.after_write"])
def test_writer_killed_leaves_only_orphan(cdir: CheckpointDir, point: str) -> None:
    path, checksum = cdir.write(1, save_two_files, TAGS)
    done = run_writer(cdir.root, [2, 3], {faults.CRASH_AT_ENV: f"{point}:2"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["2"]  # the first write finished, the second was killed
    entries = names(cdir.root)
    assert len(entries) == 3
    orphan = entries[0]
    assert orphan.startswith(f".tmp-3-{done_pid(done)}-")
    assert entries[1:] == ["c000000001", "c000000002"]
    assert not cdir.path_for(3).exists()
    assert cdir.ids() == [1, 2]
    assert cdir.verify(path, checksum) == TAGS

    assert cdir.clean_orphans() == [orphan]
    assert names(cdir.root) == ["c000000001", "c000000002"]
    assert cdir.clean_orphans() == []
    # The killed id can be written afresh.
    cdir.write(3, save_two_files, TAGS)
    assert cdir.ids() == [1, 2, 3]


def test_clean_orphans_spares_live_writers(cdir: CheckpointDir) -> None:
    live = cdir.root / f".tmp-5-{os.getpid()}-abcd"
    live.mkdir()
    dead = cdir.root / ".tmp-6-999999999-abcd"  # above any pid_max, so never alive
    dead.mkdir()
    (dead / "w.bin").write_bytes(b"x")
    assert cdir.clean_orphans() == [dead.name]
    assert live.exists()


def test_clean_orphans_removes_the_folder_of_an_exited_but_unreaped_writer(
    cdir: CheckpointDir,
) -> None:
    """A killed controller's workers are zombies until their new parent reaps them; kill(0)
    called them alive, so the resumed start kept their temporary folders for good."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not yet reaped
            pass
        assert not pid_alive(child.pid)
        orphan = cdir.root / f".tmp-4-{child.pid}-abcd"
        orphan.mkdir()
        assert cdir.clean_orphans() == [orphan.name]
    finally:
        child.wait()
    assert pid_alive(os.getpid())


# -- ownership ----------------------------------------------------------------------------------


def test_default_root_uses_the_full_file_name(tmp_path: Path) -> None:
    assert default_root(tmp_path / "sweep.1") == tmp_path / "sweep.1.ckpt"
    assert default_root(tmp_path / "runs" / "x.db") == tmp_path / "runs" / "x.db.ckpt"
    assert store_identity("sqlite:///rel/x.db") == str(Path("rel/x.db").resolve())
    assert store_identity("memory://") == "memory://"


# -- delete -------------------------------------------------------------------------------------


def test_delete_is_idempotent_and_confined(cdir: CheckpointDir, tmp_path: Path) -> None:
    path, _ = cdir.write(1, save_two_files, TAGS)
    cdir.delete(path)
    assert names(cdir.root) == []
    cdir.delete(path)
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    with pytest.raises(CheckpointError, match="refusing to delete"):
        cdir.delete(elsewhere)
    assert elsewhere.exists()


def test_the_adapter_on_a_url_root_speaks_locations(tmp_path: Path) -> None:
    """The controller keeps calling path_for/delete(path)/root while its root is a URL."""
    pytest.importorskip("fsspec")
    url = (tmp_path / "ck").as_uri()
    cdir = CheckpointDir(url)
    assert cdir.root == url  # what SegmentSpec.checkpoint_root carries to workers
    location, checksum = cdir.write(4, save_two_files, TAGS)
    assert location == cdir.path_for(4) == f"{url}/c000000004"
    assert cdir.ids() == [4] and cdir.exists(4)
    assert cdir.verify(location, checksum) == TAGS
    with pytest.raises(CheckpointError, match="refusing to delete"):
        cdir.delete(tmp_path / "ck" / "c000000004")  # a path, not this root's location
    cdir.delete(location)
    cdir.delete(location)
    assert cdir.ids() == [] and not cdir.exists(4)


# -- retention ------------------------------------------------------------------------------------


def test_collectable_keeps_newest_per_writer() -> None:
    live = [(1, 0, 100), (2, 0, 200), (3, 0, 300), (4, 1, 100), (5, 1, 200)]
    assert collectable(live, pinned=(), keep_last=2) == [1]
    assert collectable(live, pinned=(), keep_last=1) == [1, 2, 4]
    assert collectable(live, pinned=(), keep_last=0) == [1, 2, 3, 4, 5]
    assert collectable(live, pinned={2, 3, 99}, keep_last=0) == [1, 4, 5]


def test_collectable_respects_adoption_by_another_worker() -> None:
    # Ray #9036: worker 0 wrote c1..c3; worker 1 exploited and now points at c1. Worker 0's
    # retention alone would drop c1 - worker 1's pointer must keep it.
    live = [(1, 0, 100), (2, 0, 200), (3, 0, 300), (4, 1, 100)]
    worker_pointers = {0: 3, 1: 1}
    assert collectable(live, pinned=(), keep_last=1) == [1, 2]  # what a naive policy does
    assert collectable(live, pinned=set(worker_pointers.values()), keep_last=1) == [2]


def test_collectable_validates() -> None:
    with pytest.raises(ConfigError, match="keep_last=-1"):
        collectable([], (), -1)
    with pytest.raises(ConfigError, match="id 1 appears twice"):
        collectable([(1, 0, 1), (1, 1, 2)], (), 1)


@given(
    live=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=30).map(
        lambda rows: [(i, w, s) for i, (w, s) in enumerate(rows)]
    ),
    pinned=st.sets(st.integers(0, 35)),
    keep_last=st.integers(0, 4),
)
def test_collectable_properties(
    live: list[tuple[int, int, int]], pinned: set[int], keep_last: int
) -> None:
    doomed = collectable(live, pinned, keep_last)
    assert doomed == sorted(set(doomed))
    assert not set(doomed) & pinned
    assert set(doomed) <= {cid for cid, _, _ in live}
    by_writer: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for cid, writer, step in live:
        by_writer[writer].append((step, cid))
    for entries in by_writer.values():
        ranked = [cid for _, cid in sorted(entries, reverse=True)]
        newest, older = ranked[:keep_last], ranked[keep_last:]
        assert not set(newest) & set(doomed)
        # Bounded retention: everything else that is unpinned goes.
        assert set(older) - pinned <= set(doomed)
