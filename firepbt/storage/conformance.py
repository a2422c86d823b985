"""The checkpoint-storage conformance suite: every backend must pass these tests.

Use it from a test module by providing a ``storage_factory`` fixture and importing the tests::

    from firepbt.storage.conformance import *  # noqa: F403

    @pytest.fixture
    def storage_factory(tmp_path):
        return StorageFactory(lambda: open_storage(tmp_path / "ckpt"), cross_process=True)

Each test checks one rule of the contract in :mod:`firepbt.storage.base`. The tests damage
checkpoints through :func:`raw_access` (plain files for the local backend, the fsspec file
system for the other), so they see what a reader on another machine would. Tests that kill a
writer process run only for ``cross_process`` backends (every process opening ``storage.url``
sees the same data; not ``memory://``). Needs pytest (a development dependency).
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firepbt import faults
from firepbt.errors import CheckpointError, ConfigError, FormatVersionError
from firepbt.storage import open_storage
from firepbt.storage.base import (
    CHECKPOINT_FORMAT,
    MANIFEST,
    OWNER_FILE,
    CheckpointFormatError,
    CheckpointStorage,
    combined_checksum,
)
from firepbt.storage.local import LocalCheckpointStorage

__all__ = [
    "RawAccess",
    "StorageFactory",
    "TAGS",
    "raw_access",
    "save_two_files",
    "storage",
    "test_a_failing_save_leaves_nothing",
    "test_a_killed_writer_leaves_only_an_orphan",
    "test_a_racing_writer_of_the_same_id_loses",
    "test_a_write_in_progress_is_invisible_and_spared",
    "test_checksum_depends_on_content_not_tags",
    "test_claim_of_an_unmarked_root_checks_its_checkpoints",
    "test_claim_writes_the_owner_and_refuses_another_store",
    "test_damage_is_caught_by_verify_and_fetch",
    "test_delete_hides_at_once_and_is_idempotent",
    "test_enospc_leaves_nothing_and_keeps_the_previous",
    "test_fetch_gives_a_verified_local_copy",
    "test_invalid_id_and_tags_are_config_errors",
    "test_location_and_id_of_round_trip",
    "test_missing_and_wrong_checksum_are_named",
    "test_readers_never_see_a_half_checkpoint",
    "test_reopening_the_url_sees_the_same_checkpoints",
    "test_save_may_not_write_manifest_or_symlinks",
    "test_unreadable_owner_marker_is_an_error_naming_it",
    "test_write_commits_a_complete_checkpoint",
    "test_written_checkpoints_are_immutable",
]

TAGS: dict[str, Any] = {"hparams": {"lr": 0.1}, "parent": None, "step": 100}


@dataclass(frozen=True)
class StorageFactory:
    """Opens storages of one backend.

    Attributes:
        open: Returns a storage; every call opens the same (initially empty) root.
        cross_process: Whether another process opening ``storage.url`` sees the same data.
    """

    open: Callable[[], CheckpointStorage]
    cross_process: bool

    def __call__(self) -> CheckpointStorage:
        return self.open()


@pytest.fixture
def storage(storage_factory: StorageFactory, monkeypatch: pytest.MonkeyPatch) -> CheckpointStorage:
    """A fresh storage from the backend under test, with no fault injection armed."""
    monkeypatch.delenv(faults.CRASH_AT_ENV, raising=False)
    monkeypatch.delenv(faults.FAULT_DIR_ENV, raising=False)
    return storage_factory()


def save_two_files(path: Path) -> None:
    (path / "weights.bin").write_bytes(bytes(range(256)) * 8)
    (path / "opt").mkdir()
    (path / "opt" / "state.json").write_text('{"lr": 0.1}')


# -- raw access: how a test damages what a backend stored ------------------------------------


class RawAccess:
    """The bytes under a storage's root, below the contract (to damage them in tests)."""

    def __init__(self, storage: CheckpointStorage) -> None:
        self.storage = storage

    def names(self) -> list[str]:
        """Every stored file, relative to the root, sorted."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    def manifest_key(self, checkpoint_id: int) -> str:
        return f"c{checkpoint_id:09d}/{MANIFEST}"

    def data_key(self, checkpoint_id: int, rel: str) -> str:
        """Where data file ``rel`` of a committed checkpoint is stored."""
        manifest = json.loads(self.read(self.manifest_key(checkpoint_id)))
        data = manifest.get("data")
        return f"c{checkpoint_id:09d}/{data}/{rel}" if data else f"c{checkpoint_id:09d}/{rel}"


class _LocalAccess(RawAccess):
    def __init__(self, storage: LocalCheckpointStorage) -> None:
        super().__init__(storage)
        self.root = storage.root

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix()
                      for p in self.root.rglob("*") if p.is_file())

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def remove(self, key: str) -> None:
        (self.root / key).unlink()


class _FsspecAccess(RawAccess):
    def __init__(self, storage: Any) -> None:
        super().__init__(storage)
        self.fs, self.path = storage.fs, storage.path

    def names(self) -> list[str]:
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        return sorted(str(p)[len(self.path.rstrip("/")) + 1:] for p in found)

    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.path}/{key}"))

    def write(self, key: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(f"{self.path}/{key}"), exist_ok=True)
        self.fs.pipe_file(f"{self.path}/{key}", data)

    def remove(self, key: str) -> None:
        self.fs.rm_file(f"{self.path}/{key}")


def raw_access(storage: CheckpointStorage) -> RawAccess:
    """Raw access to what ``storage`` stored (the two shipped backends)."""
    if isinstance(storage, LocalCheckpointStorage):
        return _LocalAccess(storage)
    return _FsspecAccess(storage)


def _data_keys(storage: CheckpointStorage) -> list[str]:
    """Stored files other than the owner marker."""
    return [k for k in raw_access(storage).names() if k != OWNER_FILE]


# -- writing ---------------------------------------------------------------------------------


def test_write_commits_a_complete_checkpoint(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    assert location == storage.location(1) == f"{storage.url}/c000000001"
    assert storage.id_of(location) == 1
    assert storage.ids() == [1] and storage.exists(1) and not storage.exists(2)
    raw = raw_access(storage)
    manifest = json.loads(raw.read(raw.manifest_key(1)))
    assert manifest["format"] == CHECKPOINT_FORMAT and manifest["id"] == 1
    assert manifest["tags"] == TAGS
    assert set(manifest["files"]) == {"weights.bin", "opt/state.json"}
    assert manifest["checksum"] == checksum == combined_checksum(manifest["files"])
    assert storage.verify(location, checksum) == TAGS
    assert storage.read_tags(location) == TAGS
    assert [e.kind for e in storage.entries()] == ["checkpoint"]


def test_checksum_depends_on_content_not_tags(storage: CheckpointStorage) -> None:
    _, first = storage.write(1, save_two_files, TAGS)
    _, same = storage.write(2, save_two_files, {"other": 1})
    _, different = storage.write(3, lambda p: (p / "weights.bin").write_bytes(b"x"), TAGS)
    assert first == same != different


def test_written_checkpoints_are_immutable(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    before = raw_access(storage).names()
    with pytest.raises(CheckpointError, match=r"c000000001 exists already.*immutable"):
        storage.write(1, lambda p: (p / "weights.bin").write_bytes(b"new"), TAGS)
    assert storage.verify(location, checksum) == TAGS
    assert raw_access(storage).names() == before


def test_a_failing_save_leaves_nothing(storage: CheckpointStorage) -> None:
    def half_then_fail(path: Path) -> None:
        (path / "weights.bin").write_bytes(b"half")
        raise RuntimeError("user save failed")

    with pytest.raises(RuntimeError, match="user save failed"):
        storage.write(1, half_then_fail, TAGS)
    assert _data_keys(storage) == [] and storage.entries() == []


def test_enospc_leaves_nothing_and_keeps_the_previous(
    storage: CheckpointStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    before = raw_access(storage).names()
    fault_dir = tmp_path / "faults"
    monkeypatch.setenv(faults.FAULT_DIR_ENV, str(fault_dir))
    faults.arm(fault_dir, "checkpoint.after_write", "enospc")
    with pytest.raises(OSError, match="No space left"):
        storage.write(2, save_two_files, TAGS)
    assert raw_access(storage).names() == before
    assert storage.verify(location, checksum) == TAGS
    assert [e.kind for e in storage.entries()] == ["checkpoint"]
    storage.write(2, save_two_files, TAGS)  # the marker was one-shot: space is free again
    assert storage.ids() == [1, 2]


def test_save_may_not_write_manifest_or_symlinks(
    storage: CheckpointStorage, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="manifest.json"):
        storage.write(1, lambda p: (p / "manifest.json").write_text("{}"), TAGS)
    outside = tmp_path / "outside"
    outside.write_text("x")
    with pytest.raises(CheckpointError, match="symlink"):
        storage.write(2, lambda p: (p / "link").symlink_to(outside), TAGS)
    assert _data_keys(storage) == []


def test_invalid_id_and_tags_are_config_errors(storage: CheckpointStorage) -> None:
    with pytest.raises(ConfigError, match="checkpoint_id=-1"):
        storage.location(-1)
    with pytest.raises(ConfigError, match="checkpoint_id=True"):
        storage.write(True, save_two_files, TAGS)
    with pytest.raises(ConfigError, match="tags="):
        storage.write(1, save_two_files, {"fn": object()})
    with pytest.raises(ConfigError, match="checkpoint_id='1'"):
        storage.delete("1")  # type: ignore[arg-type]
    assert _data_keys(storage) == []


# -- reading ---------------------------------------------------------------------------------


def test_fetch_gives_a_verified_local_copy(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    local = storage.fetch(location, checksum)
    assert isinstance(local, Path) and local.is_dir()
    assert (local / "weights.bin").read_bytes() == bytes(range(256)) * 8
    assert (local / "opt" / "state.json").read_text() == '{"lr": 0.1}'
    assert storage.fetch(location, checksum) == local  # a second fetch: the same copy
    with pytest.raises(CheckpointError, match="checksum"):
        storage.fetch(location, "0" * 64)


def _truncate(raw: RawAccess, cid: int) -> None:
    key = raw.data_key(cid, "weights.bin")
    raw.write(key, raw.read(key)[:100])


def _flip(raw: RawAccess, cid: int) -> None:
    key = raw.data_key(cid, "weights.bin")
    data = bytearray(raw.read(key))
    data[1000] ^= 0x01
    raw.write(key, bytes(data))


def _edit_manifest(change: Callable[[dict[str, Any]], object]) -> Callable[[RawAccess, int], None]:
    def edit(raw: RawAccess, cid: int) -> None:
        manifest = json.loads(raw.read(raw.manifest_key(cid)))
        change(manifest)
        raw.write(raw.manifest_key(cid), json.dumps(manifest).encode())

    return edit


DAMAGE: dict[str, tuple[Callable[[RawAccess, int], None], str]] = {
    "truncated": (_truncate, r"weights\.bin \(100 bytes\) fails its checksum"),
    "flipped": (_flip, r"weights\.bin \(2048 bytes\) fails its checksum"),
    "removed": (lambda raw, c: raw.remove(raw.data_key(c, "opt/state.json")),
                r"missing: \['opt/state.json'\]; extra: none"),
    "extra": (lambda raw, c: raw.write(raw.data_key(c, "stray.tmp"), b""),
              r"missing: none; extra: \['stray.tmp'\]"),
    "tags": (_edit_manifest(lambda m: m["tags"]["hparams"].update(lr=0.2)), "tags"),
    "newer": (_edit_manifest(lambda m: m.update(format=CHECKPOINT_FORMAT + 1)),
              "format version 2 is newer"),
    "not json": (lambda raw, c: raw.write(raw.manifest_key(c), b"{not json"),
                 "manifest unreadable"),
    "fields": (lambda raw, c: raw.write(raw.manifest_key(c), b'{"format": 1}'),
               "manifest unreadable"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_caught_by_verify_and_fetch(storage: CheckpointStorage, damage: str) -> None:
    location, checksum = storage.write(7, save_two_files, TAGS)
    harm, message = DAMAGE[damage]
    harm(raw_access(storage), 7)
    for read in (storage.verify, storage.fetch):
        with pytest.raises(CheckpointError, match=f"c000000007.*{message}") as info:
            read(location, checksum)
        if damage == "newer":
            assert isinstance(info.value, CheckpointFormatError)
            assert isinstance(info.value, FormatVersionError)


def test_missing_and_wrong_checksum_are_named(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    missing = storage.location(99)
    for read in (storage.verify, storage.fetch):
        with pytest.raises(CheckpointError, match=rf"{missing} is missing"):
            read(missing, checksum)
        with pytest.raises(CheckpointError, match=f"checksum {checksum} != expected {'0' * 64}"):
            read(location, "0" * 64)
    with pytest.raises(CheckpointError, match=rf"{missing} is missing"):
        storage.read_tags(missing)


def test_location_and_id_of_round_trip(storage: CheckpointStorage, tmp_path: Path) -> None:
    assert storage.id_of(storage.location(5)) == 5
    assert storage.id_of(storage.location(5) + "/") == 5
    assert storage.id_of(f"{storage.url}/c5x") is None
    assert storage.id_of(f"{storage.url}/owner.json") is None
    assert storage.id_of(str(tmp_path / "elsewhere" / "c000000005")) is None
    assert storage.id_of(f"{storage.url}/sub/c000000005") is None


def test_reopening_the_url_sees_the_same_checkpoints(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(3, save_two_files, TAGS)
    again = open_storage(storage.url)
    assert type(again) is type(storage) and again.url == storage.url
    assert again.ids() == [3] and again.location(3) == location
    assert again.verify(location, checksum) == TAGS


# -- deleting and orphans --------------------------------------------------------------------


def test_delete_hides_at_once_and_is_idempotent(storage: CheckpointStorage) -> None:
    location, checksum = storage.write(1, save_two_files, TAGS)
    storage.write(2, save_two_files, TAGS)
    storage.delete(1)
    assert not storage.exists(1) and storage.ids() == [2]
    assert not [k for k in _data_keys(storage) if k.startswith("c000000001")]
    with pytest.raises(CheckpointError, match="is missing"):
        storage.verify(location, checksum)
    storage.delete(1)  # idempotent
    storage.delete(42)  # never written: fine too
    assert storage.ids() == [2]


def test_a_write_in_progress_is_invisible_and_spared(
    storage: CheckpointStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers and the orphan sweep see a write that is one step from its commit."""
    seen: dict[str, Any] = {}
    module = sys.modules[type(storage).__module__]
    real = module.crash_point

    def at(name: str) -> None:
        if name == "checkpoint.before_rename":
            seen.update(ids=storage.ids(), exists=storage.exists(2),
                        kinds=[(e.checkpoint, e.kind) for e in storage.entries()],
                        removed=storage.clean_orphans())
        real(name)

    storage.write(1, save_two_files, TAGS)
    monkeypatch.setattr(module, "crash_point", at)
    location, checksum = storage.write(2, save_two_files, TAGS)
    assert seen["ids"] == [1] and not seen["exists"]
    assert (1, "checkpoint") in seen["kinds"] and ("writing" in {k for _, k in seen["kinds"]})
    assert seen["removed"] == []
    assert storage.verify(location, checksum) == TAGS  # the sweep left the write whole


_CHILD = (
    "import sys\n"
    "from firepbt.storage import open_storage\n"
    "s = open_storage(sys.argv[1])\n"
    "for cid in map(int, sys.argv[2:]):\n"
    "    s.write(cid, lambda p: (p / 'w.bin').write_bytes(b'%d' % cid), {'id': cid})\n"
    "    print(cid, flush=True)\n"
)


@pytest.mark.parametrize("point", ["checkpoint.before_rename", "checkpoint.after_write"])
def test_a_killed_writer_leaves_only_an_orphan(
    storage_factory: StorageFactory, storage: CheckpointStorage, point: str
) -> None:
    if not storage_factory.cross_process:
        pytest.skip("another process cannot see this backend's data")
    location, checksum = storage.write(1, save_two_files, TAGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREPBT_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, storage.url, "2", "3"],
        env=env | {faults.CRASH_AT_ENV: f"{point}:2"}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["2"]  # the first write finished, the second was killed
    assert storage.ids() == [1, 2] and not storage.exists(3)
    orphans = [e.name for e in storage.entries() if e.kind == "orphan"]
    assert len(orphans) == 1, storage.entries()
    assert storage.verify(location, checksum) == TAGS

    assert storage.clean_orphans() == orphans
    assert [e.kind for e in storage.entries()] == ["checkpoint", "checkpoint"]
    assert storage.clean_orphans() == []
    storage.write(3, save_two_files, TAGS)  # the killed id can be written afresh
    assert storage.ids() == [1, 2, 3]


def test_readers_never_see_a_half_checkpoint(storage: CheckpointStorage) -> None:
    _, checksum = storage.write(0, save_two_files, TAGS)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for cid in range(1, 25):
                storage.write(cid, save_two_files, TAGS)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    checked = 0
    while not done.is_set():
        for cid in storage.ids():
            # Every visible checkpoint is whole: its files all there, every hash right.
            assert storage.verify(storage.location(cid), checksum) == TAGS
            checked += 1
    thread.join()
    assert not errors and storage.ids() == list(range(25)) and checked > 0


def test_a_racing_writer_of_the_same_id_loses(storage: CheckpointStorage) -> None:
    barrier = threading.Barrier(2)
    results: list[tuple[str, str] | BaseException] = []

    def write(payload: bytes) -> None:
        def save(path: Path) -> None:
            (path / "weights.bin").write_bytes(payload)
            barrier.wait(timeout=30)

        try:
            results.append(storage.write(9, save, TAGS))
        except CheckpointError as exc:
            results.append(exc)

    threads = [threading.Thread(target=write, args=(bytes([b]) * 4096,)) for b in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, tuple)]
    lost = [r for r in results if isinstance(r, CheckpointError)]
    # Exactly one commit; the winner's checksum is what the storage holds, and the loser
    # left nothing the sweep would not remove.
    assert len(won) == 1 and len(lost) == 1 and "immutable" in str(lost[0])
    location, checksum = won[0]
    assert storage.verify(location, checksum)
    assert [e.kind for e in storage.entries()] == ["checkpoint"]


# -- ownership -------------------------------------------------------------------------------


def test_claim_writes_the_owner_and_refuses_another_store(storage: CheckpointStorage) -> None:
    assert storage.owner() is None
    storage.claim("/s/a.db", "e1", {})
    assert storage.owner() == {"store": "/s/a.db", "experiment": "e1"}
    assert raw_access(storage).names() == [OWNER_FILE]  # atomically: no temporary file left
    storage.claim("/s/a.db", "e1", {})  # idempotent
    with pytest.raises(CheckpointError, match=r"belongs to store '/s/a\.db' \(experiment e1\), "
                                              r"not to store '/s/b\.db' \(experiment e2\)"):
        storage.claim("/s/b.db", "e2", {})
    storage.claim("/s/a.db", "e3", {})  # the same store file made anew: taken over
    assert storage.owner() == {"store": "/s/a.db", "experiment": "e3"}


def test_claim_of_an_unmarked_root_checks_its_checkpoints(storage: CheckpointStorage) -> None:
    _, checksum = storage.write(1, save_two_files, TAGS)
    with pytest.raises(CheckpointError, match=r"no owner\.json .* 1 checkpoint\(s\) .*\(ids 1\)"):
        storage.claim("/s/a.db", "e1", {})  # not this store's: maybe another store's
    with pytest.raises(CheckpointError, match="does not know"):
        storage.claim("/s/a.db", "e1", {1: "another checksum"})
    storage.claim("/s/a.db", "e1", {1: checksum})  # all known: an older layout of this store
    assert storage.owner() == {"store": "/s/a.db", "experiment": "e1"}


def test_unreadable_owner_marker_is_an_error_naming_it(storage: CheckpointStorage) -> None:
    raw_access(storage).write(OWNER_FILE, b"{not json")
    with pytest.raises(CheckpointError, match=f"{OWNER_FILE}: owner marker unreadable"):
        storage.claim("/s/a.db", "e1", {})
