"""The checkpoint-storage contract shared by every backend, and the manifest both backends write.

A checkpoint is an immutable, checksummed set of files a trainable saved, addressed by an integer
id and by a *location* string (``<root>/c<id:09d>``). Its ``manifest.json``::

    {"format": 1, "id": 7, "tags": {...}, "tags_sha256": "...",
     "files": {"model.pt": "<sha256>", ...}, "checksum": "<sha256>"}

The checkpoint's *checksum* is the SHA-256 of its sorted ``(relpath, file sha256)`` pairs, each
encoded as ``relpath NUL hexdigest LF`` in UTF-8; the store records it, and readers recompute it
from the bytes before anything is loaded. ``tags_sha256`` guards the tags (hyperparameters,
parent, ...), which the checksum leaves out.

Every backend guarantees: a reader sees either no checkpoint or a complete one (never a half
one); a written checkpoint never changes (a second write of its id fails); delete is idempotent;
what a killed writer or deleter left behind is an *orphan* that :meth:`clean_orphans` removes,
while a write in progress is left alone; a root belongs to exactly one store (``owner.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from firepbt.errors import CheckpointError, ConfigError, FormatVersionError

CHECKPOINT_FORMAT = 1
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
#: The marker naming the one store (and experiment) a checkpoint root belongs to.
OWNER_FILE = "owner.json"
CHUNK = 1 << 20


class CheckpointFormatError(CheckpointError, FormatVersionError):
    """A checkpoint written by an unknown (newer) format version; refused, never guessed at.

    A CheckpointError, so callers falling back to an older valid version catch it too.
    """


EntryKind = Literal["checkpoint", "incomplete", "orphan", "writing"]


@dataclass(frozen=True)
class Entry:
    """One thing found under a checkpoint root (what ``firepbt check`` compares with the store).

    Attributes:
        name: its name relative to the root, for messages and :meth:`clean_orphans`' report.
        checkpoint: the checkpoint id it belongs to, where it names one.
        kind: ``checkpoint`` (committed: the manifest is there), ``incomplete`` (a checkpoint
            name without a manifest, which no firepbt writer leaves), ``orphan`` (what a dead
            writer or deleter left; :meth:`CheckpointStorage.clean_orphans` removes it) or
            ``writing`` (a live writer's write in progress; left alone).
    """

    name: str
    checkpoint: int | None
    kind: EntryKind


def check_id(checkpoint_id: int) -> int:
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int) or checkpoint_id < 0:
        raise ConfigError(f"checkpoint_id={checkpoint_id!r}: must be an integer >= 0")
    return checkpoint_id


def checkpoint_name(checkpoint_id: int) -> str:
    return f"c{check_id(checkpoint_id):09d}"


def parse_name(name: str) -> int | None:
    """The id in a checkpoint name ``c<digits>``, else None."""
    if name.startswith("c") and name[1:].isdigit():
        return int(name[1:])
    return None


def combined_checksum(files: Mapping[str, str]) -> str:
    """The checkpoint checksum of a ``{relpath: file sha256}`` mapping."""
    digest = hashlib.sha256()
    for relpath, file_sha in sorted(files.items()):
        digest.update(f"{relpath}\0{file_sha}\n".encode())
    return digest.hexdigest()


def canonical_tags(tags: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """JSON-normalised tags and their SHA-256; ConfigError when they are not JSON-able."""
    try:
        text = json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tags={tags!r}: must be a JSON-serialisable mapping ({exc})") from None
    normal = json.loads(text)
    # Hash the normalised form: that is what a reader sees after reading the manifest back.
    return normal, tags_sha256(normal)


def tags_sha256(tags: Mapping[str, Any]) -> str:
    text = json.dumps(tags, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def scan_files(directory: Path) -> list[str]:
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


def new_manifest(
    checkpoint_id: int, tags: Mapping[str, Any], files: Mapping[str, str], **extra: Any
) -> dict[str, Any]:
    normal, tags_sha = canonical_tags(tags)
    return {
        "format": CHECKPOINT_FORMAT,
        "id": checkpoint_id,
        "tags": normal,
        "tags_sha256": tags_sha,
        "files": dict(files),
        "checksum": combined_checksum(files),
        **extra,
    }


def parse_manifest(text: str | bytes, where: str) -> dict[str, Any]:
    """The parsed, shape-checked manifest of checkpoint ``where`` (format refused when newer).

    Raises:
        CheckpointFormatError: a newer format version.
        CheckpointError: not JSON, or fields missing or malformed.
    """
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {where}: manifest unreadable ({exc})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"checkpoint {where}: format version {fmt} is newer than this firepbt "
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
            f"checkpoint {where}: manifest unreadable (format {fmt!r} or fields malformed)"
        )
    return manifest


def check_contents(
    where: str,
    manifest: Mapping[str, Any],
    present: Mapping[str, int],
    sha_of: Callable[[str], str],
    checksum: str,
) -> dict[str, Any]:
    """Compare a checkpoint's bytes with its manifest and the expected checksum; its tags.

    Args:
        where: the checkpoint's location, for messages.
        manifest: its parsed manifest.
        present: ``{relpath: size}`` of the data files actually there.
        sha_of: the SHA-256 of one present file (reads its bytes).
        checksum: the checksum the store recorded.

    Raises:
        CheckpointError: naming ``where`` and the fault - missing/extra files, a file whose bytes
            changed (truncated, flipped), tags altered, or a checksum other than expected.
    """
    listed: dict[str, str] = manifest["files"]
    missing = sorted(set(listed) - set(present))
    extra = sorted(set(present) - set(listed))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {where}: files differ from the manifest "
            f"(missing: {missing or 'none'}; extra: {extra or 'none'})"
        )
    for rel, want in sorted(listed.items()):
        got = sha_of(rel)
        if got != want:
            raise CheckpointError(
                f"checkpoint {where}: file {rel} ({present[rel]} bytes) fails its checksum "
                f"(sha256 {got}, manifest says {want})"
            )
    if tags_sha256(manifest["tags"]) != manifest["tags_sha256"]:
        raise CheckpointError(f"checkpoint {where}: tags in the manifest fail their checksum")
    actual = combined_checksum(listed)
    if actual != manifest["checksum"] or actual != checksum:
        raise CheckpointError(
            f"checkpoint {where}: checksum {actual} != expected {checksum}"
            + (" (manifest disagrees too)" if actual != manifest["checksum"] else "")
        )
    return dict(manifest["tags"])


def owner_text(identity: str, experiment: str) -> str:
    return json.dumps({"store": identity, "experiment": experiment}, sort_keys=True)


def parse_owner(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        owner = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: owner marker unreadable ({exc})") from None
    if not isinstance(owner, dict) or not all(
        isinstance(owner.get(k), str) for k in ("store", "experiment")
    ):
        raise CheckpointError(f"{where}: owner marker malformed: {owner!r}")
    return owner


# -- who is writing ----------------------------------------------------------------------------


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


def writer_alive(tmp_name: str) -> bool:
    """Whether the pid in ``.tmp-<what>-<pid>-<rand>`` is a live process here."""
    parts = tmp_name.split("-")
    if len(parts) < 4 or not parts[-2].isdigit():
        return False
    pid = int(parts[-2])
    return pid == os.getpid() or pid_alive(pid)


def this_host() -> str:
    """This machine's name as writer tokens spell it (``-`` and ``/`` would break parsing)."""
    return "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname()) or "_"


def now() -> float:
    return time.time()


# -- the contract ------------------------------------------------------------------------------


class CheckpointStorage(ABC):
    """Where one experiment's checkpoints live: a local directory or an fsspec URL.

    Controller-facing: :meth:`claim`, :meth:`clean_orphans`, :meth:`ids`, :meth:`exists`,
    :meth:`delete`, :meth:`location`, :meth:`id_of` and :attr:`url` (what
    ``SegmentSpec.checkpoint_root`` carries to workers; :func:`firepbt.storage.open_storage`
    of it opens the same storage). Worker-facing: :meth:`write`, :meth:`fetch` (a verified
    local directory for ``load(path)``), :meth:`verify`, :meth:`read_tags`. Checker-facing:
    :meth:`owner`, :meth:`entries`.
    """

    @property
    @abstractmethod
    def url(self) -> str:
        """The root: an absolute path (local directory) or a canonical URL (fsspec)."""

    @abstractmethod
    def location(self, checkpoint_id: int) -> str:
        """Where checkpoint ``checkpoint_id`` is (or would be): ``<url>/c<id:09d>``."""

    @abstractmethod
    def id_of(self, location: str) -> int | None:
        """The id of ``location`` when it is a checkpoint location of this storage, else None."""

    @abstractmethod
    def ids(self) -> list[int]:
        """Ids of the complete (committed) checkpoints present, ascending."""

    @abstractmethod
    def exists(self, checkpoint_id: int) -> bool:
        """Whether checkpoint ``checkpoint_id`` is committed (its manifest is there)."""

    @abstractmethod
    def delete(self, checkpoint_id: int) -> None:
        """Remove a checkpoint; a missing one is fine (idempotent).

        The checkpoint stops being visible first; a kill half-way leaves an orphan for
        :meth:`clean_orphans`, never a half-deleted checkpoint that looks real.
        """

    @abstractmethod
    def entries(self) -> list[Entry]:
        """Everything under the root that is a checkpoint or a leftover, sorted by name."""

    @abstractmethod
    def clean_orphans(self) -> list[str]:
        """Remove what killed writers and deleters left (live writers' files are spared).

        Returns:
            The names removed (relative to the root), sorted.
        """

    @abstractmethod
    def write(
        self, checkpoint_id: int, save: Callable[[Path], object], tags: Mapping[str, Any]
    ) -> tuple[str, str]:
        """Create checkpoint ``checkpoint_id`` from what ``save`` writes into a local directory.

        Args:
            checkpoint_id: the new checkpoint's id; it must not exist yet.
            save: called with an empty local directory to save files into (user code's
                ``save(path)``).
            tags: JSON-able facts stored in the manifest (hyperparameters, parent, step, ...).

        Returns:
            (location, checksum).

        Raises:
            CheckpointError: the checkpoint exists already (checkpoints are immutable), or
                ``save`` left a symlink, a special file or a ``manifest.json``.
            ConfigError: a bad id or non-JSON-able tags.
            Exception: whatever ``save`` or the storage raised (e.g. OSError ENOSPC); nothing
                partial is left visible, and this writer's leftovers are removed.
        """

    @abstractmethod
    def verify(self, location: str, checksum: str) -> dict[str, Any]:
        """Recompute every hash of the checkpoint at ``location``; its tags.

        Raises:
            CheckpointError: naming the location and the fault - missing, manifest unreadable,
                newer format (a CheckpointFormatError), missing/extra files, a file whose bytes
                changed, tags altered, or a checksum other than ``checksum``.
        """

    @abstractmethod
    def fetch(self, location: str, checksum: str) -> Path:
        """A local directory holding the checkpoint's files, verified against ``checksum``.

        The local backend hands back the checkpoint's own directory; a remote one downloads
        into a local cache. Treat the directory as read-only; it stays valid at least until
        this storage fetches another checkpoint.

        Raises:
            CheckpointError: as :meth:`verify`.
        """

    @abstractmethod
    def read_tags(self, location: str) -> dict[str, Any]:
        """The tags in the checkpoint's manifest, without checking the files (cheap).

        Raises:
            CheckpointError: missing, manifest unreadable, or a newer format version.
        """

    # -- ownership (shared: only reading and writing the marker differs) -----------------------

    @abstractmethod
    def _read_owner(self) -> str | bytes | None:
        """The raw ``owner.json`` text, or None when there is none."""

    @abstractmethod
    def _write_owner(self, text: str) -> None:
        """Replace ``owner.json`` atomically."""

    @abstractmethod
    def _manifest_checksum(self, checkpoint_id: int) -> str | None:
        """The checksum a checkpoint's manifest states, or None when unreadable."""

    def owner(self) -> dict[str, Any] | None:
        """The ``owner.json`` marker (``{"store": ..., "experiment": ...}``), or None.

        Raises:
            CheckpointError: the marker exists but is unreadable.
        """
        text = self._read_owner()
        if text is None:
            return None
        return parse_owner(text, f"{self.url}/{OWNER_FILE}")

    def claim(self, identity: str, experiment: str, known: Mapping[int, str]) -> None:
        """Make this root belong to ``experiment`` of store ``identity``; refuse another's.

        A controller's start-up sweep deletes every checkpoint its own store does not know, so
        a root must never serve two stores.

        Args:
            identity: the store's identity (:func:`firepbt.checkpoints.store_identity`).
            experiment: the store's experiment id.
            known: ``{checkpoint id: checksum}`` of the store's live checkpoint records.

        Raises:
            CheckpointError: the root belongs to another store (the message names both); or
                it has no marker (written before markers existed) yet holds complete
                checkpoints this store does not know, so it may be shared with another store.
        """
        owner = self.owner()
        if owner is not None:
            if owner["experiment"] == experiment and owner["store"] == identity:
                return
            if owner["store"] != identity or identity.startswith("memory://"):
                raise CheckpointError(
                    f"checkpoint folder {self.url} belongs to store {owner['store']!r} "
                    f"(experiment {owner['experiment']}), not to store {identity!r} (experiment "
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
                    f"checkpoint folder {self.url} has no {OWNER_FILE} (an older firepbt wrote "
                    f"it) and holds {len(foreign)} checkpoint(s) that store {identity!r} does "
                    f"not know (ids {shown}): it may belong to another store too. Refusing to "
                    "use it, since start-up would delete them; move or delete the unknown "
                    "checkpoints, then resume"
                )
        self._write_owner(owner_text(identity, experiment))
