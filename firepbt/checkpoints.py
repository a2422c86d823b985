"""Checkpoint roots as the controller sees them, and the retention policy.

The storage itself (the contract, the local-directory and fsspec backends, the manifest and
checksum format) lives in :mod:`firepbt.storage`; the names below are re-exported from there so
existing imports keep working.

A root belongs to exactly one store: ``claim`` writes ``owner.json`` (the store and its
experiment id, atomically) and refuses a root that another store owns, since a controller's
start-up sweep deletes every checkpoint its own store does not know.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.errors import CheckpointError, ConfigError
from firepbt.storage import (
    CHECKPOINT_FORMAT,
    MANIFEST,
    OWNER_FILE,
    TMP_PREFIX,
    CheckpointFormatError,
    CheckpointStorage,
    LocalCheckpointStorage,
    combined_checksum,
    open_storage,
    pid_alive,
    writer_alive,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "MANIFEST",
    "OWNER_FILE",
    "TMP_PREFIX",
    "CheckpointDir",
    "CheckpointFormatError",
    "collectable",
    "combined_checksum",
    "default_root",
    "pid_alive",
    "store_identity",
    "writer_alive",
]


class CheckpointDir:
    """The controller's handle on its checkpoint root, until it uses :class:`CheckpointStorage`.

    A thin adapter over :func:`firepbt.storage.open_storage`: a plain path is the local
    directory backend, a URL the fsspec one. It keeps the path-based methods the controller and
    the local executor call today (``path_for``, ``delete(path)``, ``root``).

    Args:
        root: a directory path (created when missing) or an fsspec URL.

    Raises:
        CheckpointError: a local ``root`` that is not a directory, or cannot be created.
        ConfigError: a URL while fsspec or its driver is missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.storage: CheckpointStorage = open_storage(root)

    @property
    def root(self) -> Path | str:
        """The local directory (a Path), or the canonical URL of a URL root."""
        s = self.storage
        return s.root if isinstance(s, LocalCheckpointStorage) else s.url

    def path_for(self, checkpoint_id: int) -> Any:
        """Where checkpoint ``checkpoint_id`` is: a Path for a local root, else its URL.

        Typed ``Any`` while the controller, which treats it as a Path, moves to
        ``CheckpointStorage.location``.
        """
        s = self.storage
        if isinstance(s, LocalCheckpointStorage):
            return s.path_for(checkpoint_id)
        return s.location(checkpoint_id)

    def owner(self) -> dict[str, Any] | None:
        return self.storage.owner()

    def claim(self, store: str, experiment: str, known: Mapping[int, str]) -> None:
        self.storage.claim(store, experiment, known)

    def ids(self) -> list[int]:
        return self.storage.ids()

    def exists(self, checkpoint_id: int) -> bool:
        return self.storage.exists(checkpoint_id)

    def write(
        self, checkpoint_id: int, writer: Callable[[Path], object], tags: Mapping[str, Any]
    ) -> tuple[str, str]:
        return self.storage.write(checkpoint_id, writer, tags)

    def read_tags(self, path: str | Path) -> dict[str, Any]:
        return self.storage.read_tags(str(path))

    def verify(self, path: str | Path, checksum: str) -> dict[str, Any]:
        return self.storage.verify(str(path), checksum)

    def delete(self, path: str | Path) -> None:
        """Remove the checkpoint at ``path``; a missing one is fine (idempotent).

        Raises:
            CheckpointError: ``path`` is not a checkpoint location of this root (refusing to
                remove anything else).
        """
        cid = self.storage.id_of(str(path))
        if cid is None:
            raise CheckpointError(
                f"checkpoint {path}: not a checkpoint of {self.storage.url}; refusing to delete it"
            )
        self.storage.delete(cid)

    def clean_orphans(self) -> list[str]:
        return self.storage.clean_orphans()


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
