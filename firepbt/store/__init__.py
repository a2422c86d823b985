"""Experiment stores: one contract (:mod:`firepbt.store.base`), several backends.

``open_store(url)`` picks the backend from a URL:

* ``"memory://"``: :class:`MemoryStore`, lives in this process only.
* ``"sqlite:///runs/x.db"`` (relative) or ``"sqlite:////abs/x.db"`` (absolute, SQLAlchemy's
  convention), or a plain path such as ``"runs/x.db"``: :class:`SQLiteStore`.
* ``"postgresql://user@host:port/db?experiment=NAME"``: :class:`PostgresStore` (needs the
  ``postgres`` extra, psycopg 3); one database holds many experiments, one schema each.
"""

from __future__ import annotations

import os

from firepbt.errors import ConfigError
from firepbt.store.base import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DONE,
    EVALUATOR,
    FAILED,
    FORMAT_VERSION,
    IDLE,
    MEMBER,
    PENDING,
    SEG_FAILED,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)
from firepbt.store.codec import FrozenDict
from firepbt.store.memory import MemoryStore
from firepbt.store.sqlite import SQLiteStore

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "DONE",
    "EVALUATOR",
    "FAILED",
    "FORMAT_VERSION",
    "IDLE",
    "MEMBER",
    "PENDING",
    "SEG_FAILED",
    "CheckpointRecord",
    "EventRecord",
    "FrozenDict",
    "LockHolder",
    "MemoryStore",
    "MetricRow",
    "SQLiteStore",
    "SegmentRecord",
    "Store",
    "WorkerRecord",
    "open_store",
]

_SUPPORTED = (
    "'memory://', 'sqlite:///path/to/file.db', a plain file path or "
    "'postgresql://user@host:port/db?experiment=NAME'"
)


def open_store(url: str | os.PathLike[str], *, create: bool = True) -> Store:
    """Open (or create) the experiment store named by ``url``.

    Args:
        url: ``"memory://"``, ``"sqlite:///<path>"``, a plain file path or
            ``"postgresql://user@host:port/db?experiment=NAME"``.
        create: For file stores, create a missing file (for PostgreSQL, a missing experiment
            schema); if False a missing one raises ``StoreError`` (what read-only tools want).
            Ignored for ``memory://``.

    Raises:
        ConfigError: An unknown or malformed URL; the message names the supported schemes.
    """
    text = os.fspath(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        if not text:
            raise ConfigError(f"store url {text!r}: empty; use {_SUPPORTED}")
        return SQLiteStore(text, create=create)
    if scheme == "memory" and not rest:
        return MemoryStore()
    if scheme == "sqlite" and rest.startswith("/") and rest[1:] not in ("", ":memory:"):
        return SQLiteStore(rest[1:], create=create)
    if scheme in ("postgresql", "postgres"):
        try:
            # Imported here: psycopg is an optional dependency (the postgres extra).
            from firepbt.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"store url {text!r}: PostgreSQL stores need psycopg 3 ({exc}); install it "
                "with: pip install 'firepbt[postgres]'"
            ) from None
        return PostgresStore(text, create=create)
    raise ConfigError(f"store url {text!r}: unsupported; use {_SUPPORTED}")
