"""Checkpoints on shared or object storage addressed by an fsspec URL (``file://``, ``memory://``,
``s3://``, ``gs://``, ... where the user installed that driver).

Object stores have no rename, so a checkpoint is a folder of objects plus a manifest written
LAST, which is the commit::

    <url>/c000000007/d-<time>-<host>-<pid>-<rand>/model.pt     the data, under its writer's token
    <url>/c000000007/manifest.json                            {..., "data": "d-..."}

A reader sees a checkpoint only once its manifest is there, and the manifest names the one data
folder it vouches for, so two writers of one id (a stale worker and its replacement) can never
mix their files. User code keeps saving into and loading from local directories: ``write`` saves
into a local temporary directory and uploads it; ``fetch`` downloads into a local cache
directory, verifying every file's SHA-256 on the way, and hands back that directory (on
``file://`` the data folder itself, verified in place: it is local already).

Deleting puts a ``.deleted`` marker, removes the manifest (the checkpoint disappears at once),
then the rest; a kill in between leaves marked data: an orphan. A data folder no manifest names
is an orphan once its writer is gone: on this host, when its pid has exited; from another host,
once it is older than ``orphan_after_s`` (its writer's liveness cannot be checked from here).

Durability and atomicity are the underlying store's: an object PUT is atomic on object stores
and in memory; on ``file://`` the manifest is committed by a hard link (atomic, and it fails if
the manifest exists, so immutability holds even against a racing writer) and everything is
fsynced first. Elsewhere the manifest PUT uses fsspec's ``mode="create"`` (put-if-absent where
the store supports it; a check just before the PUT where it does not).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import json
import os
import posixpath
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from firepbt.errors import CheckpointError, ConfigError
from firepbt.faults import crash_point
from firepbt.storage.base import (
    CHUNK,
    MANIFEST,
    OWNER_FILE,
    CheckpointStorage,
    Entry,
    EntryKind,
    check_contents,
    check_id,
    checkpoint_name,
    file_sha256,
    new_manifest,
    now,
    parse_manifest,
    parse_name,
    pid_alive,
    scan_files,
    this_host,
)
from firepbt.storage.local import write_atomically

#: Data folders are named ``d-<unix time>-<host>-<pid>-<rand>``.
DATA_PREFIX = "d-"
#: A manifest being committed on ``file://``: ``.m-<data folder name>``.
PENDING_MANIFEST = ".m-"
#: Put before a checkpoint's manifest is removed: what remains is a deleter's leftover.
DELETED = ".deleted"


def _token() -> str:
    return f"{DATA_PREFIX}{int(now())}-{this_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _token_alive(token: str, orphan_after_s: float) -> bool:
    """Whether the writer of data folder ``token`` may still be writing."""
    parts = token.split("-")
    if len(parts) < 5 or not parts[1].isdigit() or not parts[-2].isdigit():
        return False  # not a name firepbt writes: nobody is writing it
    started, pid, host = int(parts[1]), int(parts[-2]), "-".join(parts[2:-2])
    if now() - started > orphan_after_s:
        return False
    if host == this_host():
        return pid == os.getpid() or pid_alive(pid)
    return True  # another host's writer, young enough that it may still be uploading


def _cache_base() -> Path:
    return Path(tempfile.gettempdir()) / f"firepbt-cache-{os.getuid()}"


def _sweep_dead_caches(base: Path) -> None:
    # Each process caches under <pid>-...; a killed worker never ran its atexit clean-up.
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


class FsspecCheckpointStorage(CheckpointStorage):
    """One experiment's checkpoints under an fsspec URL.

    Args:
        url: ``file:///abs/dir``, ``memory://name``, ``s3://bucket/prefix``, ...; fsspec's
            in-memory file system lives in one process, so ``memory://`` suits in-process runs.
        cache_dir: where :meth:`fetch` keeps downloaded checkpoints (default: a per-process
            folder under the system temp dir, removed at exit).
        cache_keep: how many fetched checkpoints the cache keeps (least recently used go).
        orphan_after_s: age after which another host's unnamed data folder is an orphan.
        create: make the root folder (file systems with folders) when missing.

    Raises:
        ConfigError: fsspec (the ``fsspec`` extra) or the URL's driver is not installed, or
            the URL or a number is malformed.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | Path | None = None,
        cache_keep: int = 4,
        orphan_after_s: float = 6 * 3600.0,
        create: bool = True,
    ) -> None:
        try:
            import fsspec.core
        except ImportError:
            raise ConfigError(
                f"checkpoint root {url!r}: a URL root needs fsspec; pip install 'firepbt[fsspec]' "
                "(plus s3fs or gcsfs for s3:// or gs://)"
            ) from None
        if isinstance(cache_keep, bool) or not isinstance(cache_keep, int) or cache_keep < 1:
            raise ConfigError(f"cache_keep={cache_keep!r}: must be an integer >= 1")
        if not orphan_after_s > 0:
            raise ConfigError(f"orphan_after_s={orphan_after_s!r}: must be > 0 seconds")
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"checkpoint root {url!r}: fsspec cannot open it ({exc}); install the driver "
                "for its protocol (e.g. s3fs, gcsfs)"
            ) from None
        self.fs = fs
        self.path = path.rstrip("/") or "/"
        self._url = fs.unstrip_protocol(self.path).rstrip("/")
        self._local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.cache_keep = cache_keep
        self.orphan_after_s = float(orphan_after_s)
        if cache_dir is None:
            base = _cache_base()
            _sweep_dead_caches(base)
            digest = hashlib.sha256(self._url.encode()).hexdigest()[:12]
            self.cache_dir = base / f"{os.getpid()}-{digest}-{secrets.token_hex(4)}"
            atexit.register(shutil.rmtree, self.cache_dir, True)
        else:
            self.cache_dir = Path(cache_dir).absolute()
        if create:
            with contextlib.suppress(FileExistsError):
                self.fs.makedirs(self.path, exist_ok=True)

    def __repr__(self) -> str:
        return f"FsspecCheckpointStorage({self._url!r})"

    @property
    def url(self) -> str:
        return self._url

    def _key(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def location(self, checkpoint_id: int) -> str:
        return f"{self._url}/{checkpoint_name(checkpoint_id)}"

    def id_of(self, location: str) -> int | None:
        head, _, name = str(location).rstrip("/").rpartition("/")
        cid = parse_name(name)
        if cid is None:
            return None
        if head == self._url:
            return cid
        if "://" not in head:
            return None  # a plain path is the local backend's location, never ours
        try:
            import fsspec.core

            fs, path = fsspec.core.url_to_fs(head)
        except (ImportError, ValueError):
            return None
        same = type(fs) is type(self.fs) and fs.unstrip_protocol(path).rstrip("/") == self._url
        return cid if same else None

    def _cid(self, location: str) -> int:
        cid = self.id_of(location)
        if cid is None:
            raise CheckpointError(
                f"checkpoint {location}: not a checkpoint location of {self._url} (want "
                f"{self._url}/c<9 digits>)"
            )
        return cid

    # -- listing --------------------------------------------------------------------------------

    def _objects(self) -> dict[str, list[str]]:
        """``{checkpoint name: [paths below it]}`` for every object under a checkpoint name."""
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return {}
        by_name: dict[str, list[str]] = {}
        prefix = self.path.rstrip("/") + "/"
        for full in found:
            rel = full[len(prefix):] if full.startswith(prefix) else full
            name, _, below = rel.partition("/")
            if parse_name(name) is not None and below:
                by_name.setdefault(name, []).append(below)
        return by_name

    def entries(self) -> list[Entry]:
        found: list[Entry] = []
        for name, below in sorted(self._objects().items()):
            cid = parse_name(name)
            committed: str | None = None
            tops = {b.split("/", 1)[0] for b in below if b != MANIFEST}
            if MANIFEST in below:
                found.append(Entry(name, cid, "checkpoint"))
                if len(tops) <= 1:
                    continue  # only the committed data: no manifest read (a request) needed
                try:
                    committed = self._read_manifest(name).get("data")
                except CheckpointError:
                    continue  # its data cannot be told from leftovers: touch nothing
            if committed is None and DELETED in below:
                # A deleter died half-way: none of this is anybody's write in progress.
                found.append(Entry(name, cid, "orphan"))
                continue
            for top in sorted(tops):
                if top == committed:
                    continue
                token = top[len(PENDING_MANIFEST):] if top.startswith(PENDING_MANIFEST) else top
                if not token.startswith(DATA_PREFIX):
                    if committed is None and MANIFEST not in below:
                        found.append(Entry(f"{name}/{top}", cid, "incomplete"))
                    continue
                kind: EntryKind = (
                    "writing" if _token_alive(token, self.orphan_after_s) else "orphan"
                )
                found.append(Entry(f"{name}/{top}", cid, kind))
        return found

    def ids(self) -> list[int]:
        # Cheap: one listing, no manifest reads (on object stores a read is a request).
        return sorted(c for name, below in self._objects().items()
                      if MANIFEST in below and (c := parse_name(name)) is not None)

    def exists(self, checkpoint_id: int) -> bool:
        return bool(self.fs.exists(self._key(checkpoint_name(checkpoint_id), MANIFEST)))

    # -- writing --------------------------------------------------------------------------------

    def write(
        self, checkpoint_id: int, save: Callable[[Path], object], tags: Mapping[str, Any]
    ) -> tuple[str, str]:
        name = checkpoint_name(checkpoint_id)
        location = self.location(checkpoint_id)
        new_manifest(checkpoint_id, tags, {})  # refuse bad tags before any work
        if self.exists(checkpoint_id):
            raise _immutable(location)
        token = _token()
        data = self._key(name, token)
        with tempfile.TemporaryDirectory(prefix="firepbt-save-") as staging:
            local = Path(staging)
            save(local)
            if (local / MANIFEST).exists():
                raise CheckpointError(
                    f"checkpoint {location}: the writer created {MANIFEST}, a name firepbt "
                    "reserves"
                )
            files = {rel: file_sha256(local / rel) for rel in scan_files(local)}
            manifest = new_manifest(checkpoint_id, tags, files, data=token)
            try:
                for rel in files:
                    target = f"{data}/{rel}"
                    self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
                    self.fs.put_file(str(local / rel), target)
                    if self._local:
                        _fsync_path(target)
                crash_point("checkpoint.after_write")
                text = json.dumps(manifest, sort_keys=True, indent=1)
                crash_point("checkpoint.before_rename")
                self._commit(name, token, text, location)
            except BaseException:
                self._remove(data)
                self._remove_if_empty(name)
                raise
        return location, manifest["checksum"]

    def _commit(self, name: str, token: str, text: str, location: str) -> None:
        """Make the manifest visible in one step; refuse when one is there already."""
        final = self._key(name, MANIFEST)
        if self._local:
            # A hard link is atomic and fails when the target exists: true immutability.
            pending = Path(self._key(name, PENDING_MANIFEST + token))
            try:
                with open(pending, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(pending, final)
            except FileExistsError:
                raise _immutable(location) from None
            finally:
                pending.unlink(missing_ok=True)
            _fsync_path(posixpath.dirname(final))
            return
        try:
            # "create" is an atomic put-if-absent where the store has one (memory, recent
            # s3fs); elsewhere fsspec checks just before the PUT.
            self.fs.pipe_file(final, text.encode(), mode="create")
        except FileExistsError:
            raise _immutable(location) from None

    # -- reading --------------------------------------------------------------------------------

    def _read_manifest(self, name: str) -> dict[str, Any]:
        where = f"{self._url}/{name}"
        try:
            text = self.fs.cat_file(self._key(name, MANIFEST))
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {where} is missing") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {where}: manifest unreadable ({exc})") from None
        manifest = parse_manifest(text, where)
        if not isinstance(manifest.get("data"), str) or not manifest["data"].startswith(
            DATA_PREFIX
        ):
            raise CheckpointError(
                f"checkpoint {where}: manifest unreadable (no data folder named: "
                f"{manifest.get('data')!r})"
            )
        return manifest

    def _manifest_checksum(self, checkpoint_id: int) -> str | None:
        try:
            return str(self._read_manifest(checkpoint_name(checkpoint_id))["checksum"])
        except CheckpointError:
            return None

    def read_tags(self, location: str) -> dict[str, Any]:
        cid = self._cid(location)
        return dict(self._read_manifest(checkpoint_name(cid))["tags"])

    def _check(
        self, location: str, checksum: str, into: Path | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Hash every data object (copying it under ``into`` when given); tags and manifest."""
        name = checkpoint_name(self._cid(location))
        manifest = self._read_manifest(name)
        data = self._key(name, manifest["data"])
        try:
            listing = self.fs.find(data, detail=True)
        except FileNotFoundError:
            listing = {}
        present = {full[len(data) + 1:]: int(info.get("size") or 0)
                   for full, info in listing.items() if full.startswith(data + "/")}
        hashes: dict[str, str] = {}

        def sha_of(rel: str) -> str:
            if rel not in hashes:
                hashes[rel] = self._download(f"{data}/{rel}", None if into is None else into / rel)
            return hashes[rel]

        return check_contents(location, manifest, present, sha_of, checksum), manifest

    def _download(self, key: str, target: Path | None) -> str:
        digest = hashlib.sha256()
        out = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb")  # noqa: SIM115 - closed below, in finally
        try:
            with self.fs.open(key, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint object {key} vanished while reading it") from None
        finally:
            if out is not None:
                out.close()
        return digest.hexdigest()

    def verify(self, location: str, checksum: str) -> dict[str, Any]:
        return self._check(location, checksum, into=None)[0]

    def fetch(self, location: str, checksum: str) -> Path:
        cid = self._cid(location)
        if self._local:
            # file:// data is a local folder already (a shared mount, say): verify it in place
            # and hand it over, as the local backend does, instead of copying it.
            name = checkpoint_name(cid)
            data = self._read_manifest(name)["data"]
            self.verify(location, checksum)
            return Path(self._key(name, data))
        entry = self.cache_dir / f"{checkpoint_name(cid)}-{checksum[:16]}"
        # The cache serves only a checkpoint that is still there under the same checksum (one
        # manifest read): a deleted or rewritten one is never loaded from a stale copy.
        if entry.is_dir() and self._manifest_checksum(cid) == checksum:
            try:
                # Cached copies are re-hashed too: a local disk can corrupt them as well.
                _verify_local_copy(entry, location, checksum)
                os.utime(entry)
                return entry
            except CheckpointError:
                shutil.rmtree(entry, ignore_errors=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            _, manifest = self._check(location, checksum, into=tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            try:
                os.rename(tmp, entry)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another thread of this process fetched (and verified) it meanwhile.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._evict()
        return entry

    def _evict(self) -> None:
        cached = sorted((p for p in self.cache_dir.iterdir() if not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in cached[self.cache_keep:]:
            shutil.rmtree(old, ignore_errors=True)

    # -- ownership ------------------------------------------------------------------------------

    def _read_owner(self) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._key(OWNER_FILE)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(
                f"{self._url}/{OWNER_FILE}: owner marker unreadable ({exc})"
            ) from None

    def _write_owner(self, text: str) -> None:
        if self._local:
            write_atomically(Path(self._key(OWNER_FILE)), text)
        else:
            self.fs.pipe_file(self._key(OWNER_FILE), text.encode())

    # -- removing -------------------------------------------------------------------------------

    def _remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(key, recursive=True)

    def _remove_if_empty(self, name: str) -> None:
        # Folder-ful file systems (file://, memory://) keep an empty checkpoint folder around.
        key = self._key(name)
        with contextlib.suppress(OSError):
            if self.fs.isdir(key) and not self.fs.ls(key, detail=False):
                self.fs.rmdir(key)

    def delete(self, checkpoint_id: int) -> None:
        name = checkpoint_name(check_id(checkpoint_id))
        if not self.fs.exists(self._key(name, MANIFEST)):
            self._remove(self._key(name))  # nothing committed: at most a killed deleter's rest
            return
        # A marker, then the manifest: the checkpoint is gone at once, and a kill now leaves
        # data the marker shows to be no write in progress (an orphan, even while the process
        # that wrote it lives on), never a checkpoint that looks whole but is not.
        self.fs.pipe_file(self._key(name, DELETED), b"")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._key(name, MANIFEST))
        crash_point("checkpoint.mid_delete")
        self._remove(self._key(name))

    def clean_orphans(self) -> list[str]:
        removed = []
        for e in self.entries():
            if e.kind == "orphan":
                self._remove(self._key(e.name))
                if not self.fs.exists(self._key(e.name.split("/")[0], MANIFEST)):
                    self._remove_if_empty(e.name.split("/")[0])
                removed.append(e.name)
        return removed


def _immutable(location: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {location} exists already; checkpoints are immutable")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot fsync a directory
            raise
    finally:
        os.close(fd)


def _verify_local_copy(entry: Path, location: str, checksum: str) -> None:
    from firepbt.storage.local import LocalCheckpointStorage

    try:
        LocalCheckpointStorage(entry.parent, create=False).verify(entry, checksum)
    except CheckpointError as exc:
        raise CheckpointError(f"cached copy of {location}: {exc}") from None
