"""Tests for firepbt.checkpoints: atomic immutable writes, verification, orphans, retention."""

from __future__ import annotations

import errno
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
    OWNER_FILE,
    CheckpointDir,
    CheckpointFormatError,
    collectable,
    combined_checksum,
    default_root,
    pid_alive,
    store_identity,
)
from firepbt.errors import CheckpointError, ConfigError, FormatVersionError


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


def test_checksum_depends_on_content_not_tags(cdir: CheckpointDir) -> None:
    _, first = cdir.write(1, save_two_files, TAGS)
    _, same = cdir.write(2, save_two_files, {"other": 1})
    _, different = cdir.write(3, lambda p: (p / "weights.bin").write_bytes(b"x"), TAGS)
    assert first == same
    assert different != first


def test_existing_checkpoint_is_immutable(cdir: CheckpointDir) -> None:
    path, checksum = cdir.write(1, save_two_files, TAGS)
    with pytest.raises(CheckpointError, match="immutable"):
        cdir.write(1, lambda p: (p / "weights.bin").write_bytes(b"new"), TAGS)
    assert cdir.verify(path, checksum) == TAGS
    assert names(cdir.root) == ["c000000001"]


def test_writer_raising_leaves_nothing(cdir: CheckpointDir) -> None:
    def half_then_fail(path: Path) -> None:
        (path / "weights.bin").write_bytes(b"half")
        raise RuntimeError("user save failed")

    with pytest.raises(RuntimeError, match="user save failed"):
        cdir.write(1, half_then_fail, TAGS)
    assert names(cdir.root) == []


def test_enospc_marker_leaves_no_temp_and_keeps_previous(
    cdir: CheckpointDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, checksum = cdir.write(1, save_two_files, TAGS)
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv(faults.FAULT_DIR_ENV, str(fault_dir))
    faults.arm(fault_dir, "checkpoint.after_write", "enospc")
    with pytest.raises(OSError) as info:
        cdir.write(2, save_two_files, TAGS)
    assert info.value.errno == errno.ENOSPC
    assert names(cdir.root) == ["c000000001"]
    assert cdir.verify(path, checksum) == TAGS
    # Space freed (the marker was one-shot): the same write now succeeds.
    cdir.write(2, save_two_files, TAGS)
    assert cdir.ids() == [1, 2]


def test_writer_may_not_write_manifest_or_symlinks(cdir: CheckpointDir, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="manifest.json"):
        cdir.write(1, lambda p: (p / "manifest.json").write_text("{}"), TAGS)
    outside = tmp_path / "outside"
    outside.write_text("x")
    with pytest.raises(CheckpointError, match="symlink"):
        cdir.write(2, lambda p: (p / "link").symlink_to(outside), TAGS)
    assert names(cdir.root) == []


def test_invalid_id_and_tags_are_config_errors(cdir: CheckpointDir) -> None:
    with pytest.raises(ConfigError, match="checkpoint_id=-1"):
        cdir.path_for(-1)
    with pytest.raises(ConfigError, match="checkpoint_id=True"):
        cdir.write(True, save_two_files, TAGS)
    with pytest.raises(ConfigError, match="tags="):
        cdir.write(1, save_two_files, {"fn": object()})
    assert names(cdir.root) == []


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


def test_claim_writes_the_owner_and_refuses_another_store(cdir: CheckpointDir) -> None:
    assert cdir.owner() is None
    cdir.claim("/s/a.db", "e1", {})
    assert cdir.owner() == {"store": "/s/a.db", "experiment": "e1"}
    assert names(cdir.root) == [OWNER_FILE]  # written atomically: no temporary file left
    cdir.claim("/s/a.db", "e1", {})  # idempotent
    with pytest.raises(CheckpointError, match=r"belongs to store '/s/a\.db' \(experiment e1\), "
                                              r"not to store '/s/b\.db' \(experiment e2\)"):
        cdir.claim("/s/b.db", "e2", {})
    cdir.claim("/s/a.db", "e3", {})  # the same store file made anew: taken over
    assert cdir.owner() == {"store": "/s/a.db", "experiment": "e3"}


def test_claim_of_an_unmarked_folder_checks_its_checkpoints(cdir: CheckpointDir) -> None:
    _, checksum = cdir.write(1, save_two_files, TAGS)
    with pytest.raises(CheckpointError, match=r"no owner\.json .* 1 checkpoint\(s\) .*\(ids 1\)"):
        cdir.claim("/s/a.db", "e1", {})  # not this store's: maybe another store's
    with pytest.raises(CheckpointError, match="does not know"):
        cdir.claim("/s/a.db", "e1", {1: "another checksum"})
    cdir.claim("/s/a.db", "e1", {1: checksum})  # all known: an older layout of this store
    assert cdir.owner() == {"store": "/s/a.db", "experiment": "e1"}


def test_an_unreadable_owner_marker_is_an_error_naming_it(cdir: CheckpointDir) -> None:
    (cdir.root / OWNER_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{OWNER_FILE}: owner marker unreadable"):
        cdir.claim("/s/a.db", "e1", {})


# -- verify ---------------------------------------------------------------------------------------


@pytest.fixture
def written(cdir: CheckpointDir) -> tuple[Path, str]:
    path, checksum = cdir.write(7, save_two_files, TAGS)
    return Path(path), checksum


def test_verify_catches_truncated_file(cdir: CheckpointDir, written: tuple[Path, str]) -> None:
    path, checksum = written
    with open(path / "weights.bin", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CheckpointError, match=rf"{path}.*weights\.bin \(100 bytes\)"):
        cdir.verify(path, checksum)


def test_verify_catches_flipped_byte(cdir: CheckpointDir, written: tuple[Path, str]) -> None:
    path, checksum = written
    data = bytearray((path / "weights.bin").read_bytes())
    data[1000] ^= 0x01
    (path / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights\.bin .*fails its checksum"):
        cdir.verify(path, checksum)


def test_verify_catches_removed_and_extra_files(
    cdir: CheckpointDir, written: tuple[Path, str]
) -> None:
    path, checksum = written
    (path / "opt" / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing: \['opt/state.json'\]; extra: none"):
        cdir.verify(path, checksum)
    (path / "opt" / "state.json").write_text('{"lr": 0.1}')
    cdir.verify(path, checksum)
    (path / "stray.tmp").write_text("")
    with pytest.raises(CheckpointError, match=r"missing: none; extra: \['stray.tmp'\]"):
        cdir.verify(path, checksum)


def test_verify_catches_newer_format(cdir: CheckpointDir, written: tuple[Path, str]) -> None:
    path, checksum = written
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = CHECKPOINT_FORMAT + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    for call in (lambda: cdir.verify(path, checksum), lambda: cdir.read_tags(path)):
        with pytest.raises(CheckpointFormatError, match=rf"{path}: format version 2 is newer"):
            call()
    assert issubclass(CheckpointFormatError, CheckpointError)
    assert issubclass(CheckpointFormatError, FormatVersionError)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 1}', ""])
def test_verify_catches_unreadable_manifest(
    cdir: CheckpointDir, written: tuple[Path, str], text: str
) -> None:
    path, checksum = written
    (path / "manifest.json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"{path}: manifest unreadable"):
        cdir.verify(path, checksum)


def test_verify_catches_missing_checkpoint_and_manifest(
    cdir: CheckpointDir, written: tuple[Path, str]
) -> None:
    path, checksum = written
    missing = cdir.path_for(99)
    with pytest.raises(CheckpointError, match=rf"{missing} is missing"):
        cdir.verify(missing, checksum)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest unreadable"):
        cdir.verify(path, checksum)


def test_verify_catches_tampered_tags(cdir: CheckpointDir, written: tuple[Path, str]) -> None:
    path, checksum = written
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["tags"]["hparams"]["lr"] = 0.2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="tags"):
        cdir.verify(path, checksum)


def test_verify_catches_unexpected_checksum(cdir: CheckpointDir, written: tuple[Path, str]) -> None:
    path, checksum = written
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match=f"checksum {checksum} != expected {wrong}"):
        cdir.verify(path, wrong)


# -- delete and link_copy ------------------------------------------------------------------------


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


def test_link_copy_shares_inodes_and_takes_new_tags(cdir: CheckpointDir) -> None:
    src, checksum = cdir.write(1, save_two_files, TAGS)
    new_tags = {"hparams": {"lr": 0.2}, "parent": 1}
    path, copy_checksum = cdir.link_copy(src, 2, new_tags)
    assert path == str(cdir.path_for(2))
    assert copy_checksum == checksum
    assert cdir.verify(path, copy_checksum) == new_tags
    assert cdir.verify(src, checksum) == TAGS
    for rel in ("weights.bin", "opt/state.json"):
        assert os.stat(Path(src) / rel).st_ino == os.stat(Path(path) / rel).st_ino
    # Deleting the source leaves the copy whole (a hard link keeps the data alive).
    cdir.delete(src)
    assert cdir.verify(path, copy_checksum) == new_tags


def test_link_copy_falls_back_to_copy(cdir: CheckpointDir, monkeypatch: pytest.MonkeyPatch) -> None:
    src, checksum = cdir.write(1, save_two_files, TAGS)

    def no_links(*_: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    path, copy_checksum = cdir.link_copy(src, 2, {"x": 1})
    assert copy_checksum == checksum
    assert cdir.verify(path, checksum) == {"x": 1}
    assert os.stat(Path(src) / "weights.bin").st_ino != os.stat(Path(path) / "weights.bin").st_ino


def test_link_copy_of_broken_source_leaves_nothing(cdir: CheckpointDir) -> None:
    src, _ = cdir.write(1, save_two_files, TAGS)
    (Path(src) / "weights.bin").unlink()
    with pytest.raises(CheckpointError, match="weights.bin"):
        cdir.link_copy(src, 2, TAGS)
    with pytest.raises(CheckpointError, match="is missing"):
        cdir.link_copy(cdir.path_for(5), 3, TAGS)
    assert names(cdir.root) == ["c000000001"]


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
