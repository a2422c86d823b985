"""Immutable, checksummed checkpoint directories with atomic writes, and the retention policy.

A checkpoint is a directory ``<root>/c<id:09d>`` holding the files a trainable saved plus a
``manifest.json``::

    {"format": 1, "id": 7, "tags": {...}, "tags_sha256": "...",
     "files": {"model.pt": "<sha256>", ...}, "checksum": "<sha256>"}

The checkpoint's *checksum* is the SHA-256 of its sorted ``(relpath, file sha256)`` pairs, each
encoded as ``relpath NUL hexdigest LF`` in UTF-8; the store records it, and :meth:`verify`
recomputes it from the bytes on disk before anything is loaded. ``tags_sha256`` guards the tags
(hyperparameters, parent, ...), which the checksum leaves out so that a copy under new tags keeps
its files' checksum.

Writes are atomic: everything is written into ``<root>/.tmp-<id>-<pid>-<rand>``, fsynced, and
renamed into place, so a reader sees either no checkpoint or a complete one. A writer killed
half-way leaves only a ``.tmp-*`` directory, which :meth:`CheckpointDir.clean_orphans` removes.
Deletion renames the checkpoint to a ``.tmp-*`` name before removing it, for the same reason.

A folder belongs to exactly one store: :meth:`CheckpointDir.claim` writes ``owner.json`` (the
store and its experiment id, atomically) and refuses a folder that another store owns, since a
controller's start-up sweep deletes every checkpoint its own store does not know.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.errors import CheckpointError, ConfigError, FormatVersionError
from firepbt.faults import crash_point

CHECKPOINT_FORMAT = 1
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
#: The marker naming the one store (and experiment) a checkpoint folder belongs to.
OWNER_FILE = "owner.json"
_CHUNK = 1 << 20


class CheckpointFormatError(CheckpointError, FormatVersionError):
    """A checkpoint written by an unknown (newer) format version; refused, never guessed at.

    A CheckpointError, so callers falling back to an older valid version catch it too.
    """


def _check_id(checkpoint_id: int) -> int:
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int) or checkpoint_id < 0:
        raise ConfigError(f"checkpoint_id={checkpoint_id!r}: must be an integer >= 0")
    return checkpoint_id


def _file_sha256(path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename or a new file is durable only once its directory entry is on disk too.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def combined_checksum(files: Mapping[str, str]) -> str:
    """The checkpoint checksum of a ``{relpath: file sha256}`` mapping."""
    digest = hashlib.sha256()
    for relpath, file_sha in sorted(files.items()):
        digest.update(f"{relpath}\0{file_sha}\n".encode())
    return digest.hexdigest()


def _canonical_tags(tags: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """JSON-normalised tags and their SHA-256; ConfigError when they are not JSON-able."""
    try:
        text = json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tags={tags!r}: must be a JSON-serialisable mapping ({exc})") from None
    normal = json.loads(text)
    # Hash the normalised form: that is what verify() sees after reading the manifest back.
    return normal, _tags_sha256(normal)


def _tags_sha256(tags: Mapping[str, Any]) -> str:
    text = json.dumps(tags, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _scan(directory: Path) -> list[str]:
    """Relative POSIX paths of the data files under ``directory`` (the manifest excluded).

    Raises:
        CheckpointError: a symlink or special file, which would make the checkpoint depend on
            something outside itself.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        here = Path(dirpath)
        for name in dirnames + filenames:
            entry = here / name
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                raise CheckpointError(
                    f"checkpoint {directory}: {entry.relative_to(directory)} is a symlink or "
                    "special file; only regular files and directories are allowed"
                )
        for name in filenames:
            rel = (here / name).relative_to(directory).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


class CheckpointDir:
    """One experiment's checkpoint folder.

    Args:
        root: the folder; created (with parents) when missing.

    Raises:
        CheckpointError: ``root`` exists and is not a directory, or cannot be created.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"checkpoint root {self.root}: cannot create it ({exc})") from exc

    def owner(self) -> dict[str, Any] | None:
        """The ``owner.json`` marker (``{"store": ..., "experiment": ...}``), or None.

        Raises:
            CheckpointError: the marker exists but is unreadable.
        """
        path = self.root / OWNER_FILE
        try:
            owner = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path}: owner marker unreadable ({exc})") from None
        if not isinstance(owner, dict) or not all(
            isinstance(owner.get(k), str) for k in ("store", "experiment")
        ):
            raise CheckpointError(f"{path}: owner marker malformed: {owner!r}")
        return owner

    def claim(self, store: str, experiment: str, known: Mapping[int, str]) -> None:
        """Make this folder belong to ``experiment`` of ``store``; refuse another store's folder.

        Args:
            store: the store's identity (:func:`store_identity`).
            experiment: the store's experiment id.
            known: ``{checkpoint id: checksum}`` of the store's live checkpoint records.

        Raises:
            CheckpointError: the folder belongs to another store (the message names both); or
                it has no marker (written before markers existed) yet holds complete
                checkpoints this store does not know, so it may be shared with another store.
        """
        owner = self.owner()
        if owner is not None:
            if owner["experiment"] == experiment and owner["store"] == store:
                return
            if owner["store"] != store or store.startswith("memory://"):
                raise CheckpointError(
                    f"checkpoint folder {self.root} belongs to store {owner['store']!r} "
                    f"(experiment {owner['experiment']}), not to store {store!r} (experiment "
                    f"{experiment}); a checkpoint folder serves exactly one store, so give "
                    "this store its own folder"
                )
            # Same store file, another experiment: the file was deleted and created anew, so
            # the old experiment (and whoever could refer to its checkpoints) is gone.
        else:
            foreign = [c for c in self.ids() if known.get(c) != self._manifest_checksum(c)]
            if foreign:
                shown = ", ".join(map(str, foreign[:5])) + (" ..." if len(foreign) > 5 else "")
                raise CheckpointError(
                    f"checkpoint folder {self.root} has no {OWNER_FILE} (an older firepbt wrote "
                    f"it) and holds {len(foreign)} checkpoint(s) that store {store!r} does not "
                    f"know (ids {shown}): it may belong to another store too. Refusing to use "
                    "it, since start-up would delete them; move or delete the unknown "
                    "checkpoints, then resume"
                )
        text = json.dumps({"store": store, "experiment": experiment}, sort_keys=True)
        tmp = self.root / f"{TMP_PREFIX}owner-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / OWNER_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def _manifest_checksum(self, checkpoint_id: int) -> str | None:
        try:
            return str(self._read_manifest(self.path_for(checkpoint_id))["checksum"])
        except CheckpointError:
            return None

    def path_for(self, checkpoint_id: int) -> Path:
        """The final directory of checkpoint ``checkpoint_id``."""
        return self.root / f"c{_check_id(checkpoint_id):09d}"

    def ids(self) -> list[int]:
        """Ids of the complete checkpoints present on disk, ascending (for leak scans)."""
        found = []
        for entry in self.root.iterdir():
            name = entry.name
            if name.startswith("c") and name[1:].isdigit() and (entry / MANIFEST).is_file():
                found.append(int(name[1:]))
        return sorted(found)

    # -- writing --------------------------------------------------------------------------------

    def write(
        self, checkpoint_id: int, writer: Callable[[Path], object], tags: Mapping[str, Any]
    ) -> tuple[str, str]:
        """Atomically create checkpoint ``checkpoint_id`` from what ``writer`` saves.

        Args:
            checkpoint_id: the new checkpoint's id; its directory must not exist yet.
            writer: called with an empty temporary directory to save files into.
            tags: JSON-able facts stored in the manifest (hyperparameters, parent, step, ...).

        Returns:
            (final directory as a string, checkpoint checksum).

        Raises:
            CheckpointError: the checkpoint exists already (checkpoints are immutable), or the
                writer left a symlink or special file.
            ConfigError: a bad id or non-JSON-able tags.
            Exception: whatever ``writer`` or the file system raised (e.g. OSError ENOSPC);
                the temporary directory is removed first, so nothing partial is left.
        """
        return self._write(checkpoint_id, writer, tags, known={})

    def link_copy(
        self, src: str | Path, checkpoint_id: int, tags: Mapping[str, Any]
    ) -> tuple[str, str]:
        """Materialise checkpoint ``src`` again under ``checkpoint_id`` with new ``tags``.

        Files are hard-linked (copied where the file system refuses links), so the copy costs
        no space; that is safe only because checkpoint files are never modified in place. The
        file hashes are taken from ``src``'s manifest, so the checksum is unchanged; a corrupt
        ``src`` therefore yields a copy that fails :meth:`verify` too - verify ``src`` first when
        that matters.

        Returns:
            (final directory as a string, checkpoint checksum).

        Raises:
            CheckpointError: ``src`` is missing or its manifest unreadable, or the new id exists.
        """
        src_path = Path(src)
        manifest = self._read_manifest(src_path)
        files: dict[str, str] = manifest["files"]

        def fill(tmp: Path) -> None:
            for rel in files:
                source, target = src_path / rel, tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except FileNotFoundError:
                    raise CheckpointError(
                        f"checkpoint {src_path}: file {rel} listed in the manifest is missing"
                    ) from None
                except OSError:
                    # Cross-device, no hard-link support, or too many links: pay for a copy.
                    shutil.copyfile(source, target)

        crash_point("exploit.copy")
        return self._write(checkpoint_id, fill, tags, known=files)

    def _write(
        self,
        checkpoint_id: int,
        fill: Callable[[Path], object],
        tags: Mapping[str, Any],
        known: Mapping[str, str],
    ) -> tuple[str, str]:
        final = self.path_for(checkpoint_id)
        normal_tags, tags_sha = _canonical_tags(tags)
        if final.exists():
            raise CheckpointError(f"checkpoint {final} exists already; checkpoints are immutable")
        tmp = self.root / f"{TMP_PREFIX}{checkpoint_id}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            fill(tmp)
            files = {}
            for rel in _scan(tmp):
                if rel in known:
                    _fsync_file(tmp / rel)
                    files[rel] = known[rel]
                else:
                    files[rel] = _file_sha256(tmp / rel, fsync=True)
            checksum = combined_checksum(files)
            manifest = {
                "format": CHECKPOINT_FORMAT,
                "id": checkpoint_id,
                "tags": normal_tags,
                "tags_sha256": tags_sha,
                "files": files,
                "checksum": checksum,
            }
            if (tmp / MANIFEST).exists():
                raise CheckpointError(
                    f"checkpoint {final}: the writer created {MANIFEST}, a name firepbt reserves"
                )
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, sort_keys=True, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            crash_point("checkpoint.after_write")
            for dirpath, _, _ in os.walk(tmp):
                _fsync_dir(Path(dirpath))
            crash_point("checkpoint.before_rename")
            try:
                # Renaming onto a non-empty directory fails, so a racing writer of the same id
                # can never replace a complete checkpoint.
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise CheckpointError(
                        f"checkpoint {final} exists already; checkpoints are immutable"
                    ) from None
                raise
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(final), checksum

    # -- reading --------------------------------------------------------------------------------

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        """The parsed, shape-checked manifest of ``path`` (format refused when newer)."""
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} is missing")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: manifest unreadable ({exc})") from None
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT:
            raise CheckpointFormatError(
                f"checkpoint {path}: format version {fmt} is newer than this firepbt "
                f"understands ({CHECKPOINT_FORMAT}); refusing to load it"
            )
        if (
            fmt != CHECKPOINT_FORMAT
            or not isinstance(manifest.get("tags"), dict)
            or not isinstance(manifest.get("files"), dict)
            or not all(isinstance(v, str) for v in manifest["files"].values())
            or not isinstance(manifest.get("checksum"), str)
            or not isinstance(manifest.get("tags_sha256"), str)
        ):
            raise CheckpointError(
                f"checkpoint {path}: manifest unreadable (format {fmt!r} or fields malformed)"
            )
        return manifest

    def read_tags(self, path: str | Path) -> dict[str, Any]:
        """The tags in ``path``'s manifest, without checking the files (cheap).

        Raises:
            CheckpointError: missing, manifest unreadable, or a newer format version.
        """
        return dict(self._read_manifest(Path(path))["tags"])

    def verify(self, path: str | Path, checksum: str) -> dict[str, Any]:
        """Recompute every hash of checkpoint ``path`` and return its tags.

        Args:
            path: the checkpoint directory.
            checksum: the checksum recorded when it was written.

        Raises:
            CheckpointError: naming the path and the fault - missing, manifest unreadable,
                newer format (a CheckpointFormatError), missing/extra files, a file whose bytes
                changed (truncated, flipped), tags altered, or a checksum other than expected.
        """
        path = Path(path)
        manifest = self._read_manifest(path)
        listed: dict[str, str] = manifest["files"]
        present = set(_scan(path))
        missing = sorted(set(listed) - present)
        extra = sorted(present - set(listed))
        if missing or extra:
            raise CheckpointError(
                f"checkpoint {path}: files differ from the manifest "
                f"(missing: {missing or 'none'}; extra: {extra or 'none'})"
            )
        for rel, want in sorted(listed.items()):
            got = _file_sha256(path / rel)
            if got != want:
                size = (path / rel).stat().st_size
                raise CheckpointError(
                    f"checkpoint {path}: file {rel} ({size} bytes) fails its checksum "
                    f"(sha256 {got}, manifest says {want})"
                )
        if _tags_sha256(manifest["tags"]) != manifest["tags_sha256"]:
            raise CheckpointError(f"checkpoint {path}: tags in the manifest fail their checksum")
        actual = combined_checksum(listed)
        if actual != manifest["checksum"] or actual != checksum:
            raise CheckpointError(
                f"checkpoint {path}: checksum {actual} != expected {checksum}"
                + (" (manifest disagrees too)" if actual != manifest["checksum"] else "")
            )
        return dict(manifest["tags"])

    # -- removing -------------------------------------------------------------------------------

    def delete(self, path: str | Path) -> None:
        """Remove a checkpoint of this folder; a missing one is fine (idempotent).

        It is first renamed to a ``.tmp-*`` name, so a kill mid-removal leaves an orphan for
        :meth:`clean_orphans`, never a half-deleted checkpoint that looks real.

        Raises:
            CheckpointError: ``path`` is not directly inside this folder (refusing to remove
                anything else).
        """
        path = Path(path).absolute()
        if path.parent != self.root or path.name.startswith(TMP_PREFIX):
            raise CheckpointError(
                f"checkpoint {path}: not a checkpoint of {self.root}; refusing to delete it"
            )
        doomed = self.root / f"{TMP_PREFIX}del-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def clean_orphans(self) -> list[str]:
        """Remove ``.tmp-*`` directories left by killed writers and deleters.

        A directory whose writer process (the pid in its name) is still alive on this machine
        is left alone: it may be a write in progress.

        Returns:
            The names removed, sorted.
        """
        removed = []
        for entry in sorted(self.root.iterdir()):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            if writer_alive(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed


def store_identity(url: str) -> str:
    """What names a store in an ``owner.json`` marker: the absolute file path, or the URL."""
    if url.startswith("sqlite:///"):
        return str(Path(url[len("sqlite:///"):]).resolve())
    return url


def default_root(store_file: str | Path) -> Path:
    """The checkpoint folder of a store file: its full name plus ``.ckpt``.

    ``runs/x.db`` keeps its checkpoints in ``runs/x.db.ckpt/``. The full name, not the stem:
    ``sweep.1`` and ``sweep.2`` must never share ``sweep.ckpt``.
    """
    path = Path(store_file)
    return path.with_name(f"{path.name}.ckpt")


def writer_alive(tmp_name: str) -> bool:
    """Whether the pid in ``.tmp-<what>-<pid>-<rand>`` is a live process here."""
    parts = tmp_name.split("-")
    if len(parts) < 4 or not parts[-2].isdigit():
        return False
    pid = int(parts[-2])
    return pid == os.getpid() or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and has not exited.

    An exited process nobody has reaped yet (a zombie) counts as gone: it can write nothing
    more. That matters right after a controller is killed: its workers exit, but their new
    parent may reap them only later.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # The field after the parenthesised command name is the state; Z or X: exited.
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def collectable(
    checkpoints: Sequence[tuple[int, int, int]], pinned: Collection[int], keep_last: int
) -> list[int]:
    """The checkpoints retention may delete now.

    Lineage-aware: a checkpoint another worker adopted (exploit, transfer) is pinned by that
    worker's pointer, whoever wrote it, so retention never deletes what someone may still load
    or copy.

    Args:
        checkpoints: ``(checkpoint_id, writer_worker_id, step)`` of every live checkpoint.
        pinned: ids that must survive: some worker's current checkpoint, the source of pending
            or in-flight work, a recorded donor not yet copied. Unknown ids are ignored.
        keep_last: how many of each writer's newest checkpoints to keep (newest = highest
            step, then highest id).

    Returns:
        Deletable ids, ascending: every unpinned checkpoint outside its writer's newest
        ``keep_last``.

    Raises:
        ConfigError: ``keep_last`` is not an integer >= 0, or an id appears twice.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ConfigError(f"keep_last={keep_last!r}: must be an integer >= 0")
    by_writer: dict[int, list[tuple[int, int]]] = defaultdict(list)
    seen: set[int] = set()
    for checkpoint_id, writer, step in checkpoints:
        if checkpoint_id in seen:
            raise ConfigError(f"checkpoints: id {checkpoint_id} appears twice; ids are unique")
        seen.add(checkpoint_id)
        by_writer[writer].append((step, checkpoint_id))
    pins = set(pinned)
    doomed: list[int] = []
    for entries in by_writer.values():
        entries.sort(reverse=True)
        doomed.extend(cid for _, cid in entries[keep_last:] if cid not in pins)
    return sorted(doomed)
