"""What only the fsspec URL backend does: choosing it, its download cache, and telling another
host's write in progress from an orphan."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firepbt import faults
from firepbt.errors import CheckpointError, ConfigError
from firepbt.storage import LocalCheckpointStorage, open_storage, root_of, storage_of
from firepbt.storage.base import this_host
from firepbt.storage.conformance import TAGS, raw_access, save_two_files

pytest.importorskip("fsspec", reason="fsspec is not installed (the fsspec extra)")
from firepbt.storage.remote import FsspecCheckpointStorage  # noqa: E402


def memory_url() -> str:
    return f"memory://firepbt-test-{secrets.token_hex(6)}"


def test_open_storage_picks_the_backend_by_the_root(tmp_path: Path) -> None:
    assert isinstance(open_storage(tmp_path / "a"), LocalCheckpointStorage)
    assert isinstance(open_storage(str(tmp_path / "b")), LocalCheckpointStorage)
    file_url = open_storage((tmp_path / "c").as_uri())
    assert isinstance(file_url, FsspecCheckpointStorage)
    assert file_url.url == (tmp_path / "c").as_uri() and (tmp_path / "c").is_dir()
    name = memory_url()[len("memory://"):]
    # Both spellings name one place, so locations compare equal whichever a user wrote.
    assert open_storage(f"memory://{name}").url == open_storage(f"memory:///{name}/").url
    assert root_of(file_url.location(3)) == file_url.url
    assert storage_of(file_url.location(3)).url == file_url.url


@pytest.mark.parametrize(("url", "names"), [("s3://bucket/ckpt", "s3fs"),
                                            ("gs://bucket/ckpt", "gcsfs"),
                                            ("nosuch://x", "Protocol not known")])
def test_a_missing_driver_is_a_config_error_naming_it(url: str, names: str) -> None:
    with pytest.raises(ConfigError, match=rf"checkpoint root '{url}': .*{names}"):
        open_storage(url)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cache_keep=0"):
        FsspecCheckpointStorage(memory_url(), cache_keep=0)
    with pytest.raises(ConfigError, match="orphan_after_s=0"):
        FsspecCheckpointStorage(memory_url(), orphan_after_s=0)


def test_fetch_caches_a_few_verified_copies(tmp_path: Path) -> None:
    storage = FsspecCheckpointStorage(memory_url(), cache_dir=tmp_path / "cache", cache_keep=2)
    written = [storage.write(c, save_two_files, TAGS) for c in range(4)]
    fetched = [storage.fetch(loc, checksum) for loc, checksum in written]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        p.name for p in fetched[-2:])  # the least recently used went
    # A cached copy damaged on local disk is fetched afresh, never loaded.
    (fetched[3] / "weights.bin").write_bytes(b"rot")
    again = storage.fetch(*written[3])
    assert (again / "weights.bin").read_bytes() == bytes(range(256)) * 8
    # A deleted checkpoint is not served from the cache.
    storage.delete(3)
    with pytest.raises(CheckpointError, match="c000000003 is missing"):
        storage.fetch(*written[3])


def test_a_dead_process_cache_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = tmp_path / f"firepbt-cache-{os.getuid()}" / "999999999-abc-def"
    dead.mkdir(parents=True)
    storage = FsspecCheckpointStorage(memory_url())
    assert not dead.exists()
    assert storage.cache_dir.parent == dead.parent and str(os.getpid()) in storage.cache_dir.name


def _data_folder(started: float, host: str, pid: int) -> str:
    return f"d-{int(started)}-{host}-{pid}-abcd"


def test_another_hosts_young_write_is_spared_and_an_old_one_swept(tmp_path: Path) -> None:
    url = (tmp_path / "ck").as_uri()
    storage = FsspecCheckpointStorage(url, orphan_after_s=60)
    raw = raw_access(storage)
    young = f"c000000005/{_data_folder(time.time(), 'other-host', 1)}/w.bin"
    old = f"c000000006/{_data_folder(time.time() - 120, 'other-host', 1)}/w.bin"
    raw.write(young, b"x")
    raw.write(old, b"x")
    kinds = {e.name.split("/")[0]: e.kind for e in storage.entries()}
    assert kinds == {"c000000005": "writing", "c000000006": "orphan"}
    assert storage.clean_orphans() == [old.rsplit("/", 1)[0]]
    assert storage.ids() == [] and raw.names() == [young]


def test_a_live_writer_on_this_host_is_spared_until_it_exits(tmp_path: Path) -> None:
    storage = FsspecCheckpointStorage((tmp_path / "ck").as_uri())
    raw = raw_access(storage)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    key = f"c000000002/{_data_folder(time.time(), this_host(), child.pid)}/w.bin"
    raw.write(key, b"x")
    try:
        assert [e.kind for e in storage.entries()] == ["writing"]
        assert storage.clean_orphans() == []
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert [e.kind for e in storage.entries()] == ["orphan"]
    assert storage.clean_orphans() == [key.rsplit("/", 1)[0]]
    assert raw.names() == [] and not (tmp_path / "ck" / "c000000002").exists()


def test_a_deleter_killed_half_way_leaves_an_orphan(tmp_path: Path) -> None:
    """Killed after the manifest went: the data's writer (this process) is alive, yet the
    data is no write in progress; the next sweep removes it."""
    url = (tmp_path / "ck").as_uri()
    storage = FsspecCheckpointStorage(url)
    storage.write(1, save_two_files, TAGS)
    storage.write(2, save_two_files, TAGS)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from firepbt.storage import open_storage; "
         "open_storage(sys.argv[1]).delete(1)", url],
        env={k: v for k, v in os.environ.items() if not k.startswith("FIREPBT_")}
        | {faults.CRASH_AT_ENV: "checkpoint.mid_delete"}, capture_output=True, timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert storage.ids() == [2] and not storage.exists(1)
    assert [(e.name, e.kind) for e in storage.entries()] == [
        ("c000000001", "orphan"), ("c000000002", "checkpoint")]
    assert storage.clean_orphans() == ["c000000001"]
    assert not [k for k in raw_access(storage).names() if k.startswith("c000000001")]
    storage.delete(1)  # idempotent after all that
