"""Checkpoint storage: one contract (:class:`CheckpointStorage`), two backends, one factory.

``open_storage(root)`` picks the backend from the root:

* a plain path (``runs/x.db.ckpt``, ``/mnt/nfs/ckpt``): :class:`LocalCheckpointStorage`, a
  directory with atomic renames and fsync (also right for an NFS-style shared directory);
* a URL (``file:///abs/dir``, ``memory://name``, ``s3://bucket/prefix``, ``gs://...``):
  :class:`FsspecCheckpointStorage`, objects plus a manifest written last. ``file://`` gets these
  object-store semantics too (it is how the fsspec backend is tested across processes); write a
  plain path for the local backend.
"""

from __future__ import annotations

from pathlib import Path

from firepbt.storage.base import (
    CHECKPOINT_FORMAT,
    MANIFEST,
    OWNER_FILE,
    TMP_PREFIX,
    CheckpointFormatError,
    CheckpointStorage,
    Entry,
    combined_checksum,
    pid_alive,
    writer_alive,
)
from firepbt.storage.local import LocalCheckpointStorage

__all__ = [
    "CHECKPOINT_FORMAT",
    "MANIFEST",
    "OWNER_FILE",
    "TMP_PREFIX",
    "CheckpointFormatError",
    "CheckpointStorage",
    "Entry",
    "LocalCheckpointStorage",
    "combined_checksum",
    "discard_unreported",
    "is_url",
    "open_storage",
    "pid_alive",
    "root_of",
    "storage_of",
    "writer_alive",
]


def is_url(root: str | Path) -> bool:
    """Whether ``root`` is a URL (``scheme://...``) rather than a plain path."""
    return isinstance(root, str) and "://" in root


def open_storage(root_or_url: str | Path, *, create: bool = True) -> CheckpointStorage:
    """The checkpoint storage at ``root_or_url``: a plain path is local, a URL goes to fsspec.

    Args:
        root_or_url: a directory path, or an fsspec URL (``file://``, ``memory://``, ``s3://``).
        create: make the root when missing; read-only tools pass false (a missing local root
            is then a CheckpointError).

    Raises:
        ConfigError: a URL while fsspec (the ``fsspec`` extra) or its driver is missing.
        CheckpointError: a local root that is not a directory or cannot be created.
    """
    if is_url(root_or_url):
        from firepbt.storage.remote import FsspecCheckpointStorage

        return FsspecCheckpointStorage(str(root_or_url), create=create)
    return LocalCheckpointStorage(root_or_url, create=create)


def root_of(location: str | Path) -> str:
    """The root a checkpoint location lies in (``<root>/c<id>`` without its last part)."""
    if is_url(location):
        return str(location).rstrip("/").rpartition("/")[0]
    return str(Path(location).absolute().parent)


def storage_of(location: str | Path, *, create: bool = False) -> CheckpointStorage:
    """The storage holding the checkpoint at ``location`` (for readers that have only a record).

    Raises:
        CheckpointError: a local root that is missing (unless ``create``).
    """
    return open_storage(root_of(location), create=create)


def discard_unreported(root: str, checkpoint_id: int) -> None:
    """Remove what a writer killed mid-segment may have left: its checkpoint, possibly complete
    but never reported (nobody will record it), and its half-written leftovers.

    Executors call this when they kill or lose a worker, so that a finished run leaks no
    files; anything this misses, the next controller start sweeps.
    """
    storage = open_storage(root, create=False)
    storage.delete(checkpoint_id)
    storage.clean_orphans()
