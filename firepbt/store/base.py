"""The storage contract every backend implements (in-memory, SQLite, later PostgreSQL).

Rules of the contract (the conformance suite in ``firepbt.store.conformance`` checks each):

* **Atomicity.** Writes made inside ``with store.transaction():`` become visible to other
  connections together or not at all; an exception inside the block rolls all of them back.
  Writes outside a transaction are each atomic on their own. Transactions do not nest
  (a nested ``transaction()`` raises ``StoreError``).
* **Immutability.** Checkpoint records, metric rows and events are append-only: adding one whose
  key already exists raises ``StoreError`` (never a silent overwrite). The only change allowed to
  a checkpoint record is ``mark_checkpoint_deleted``.
* **Upserts.** Worker and segment records are replaced whole by ``put_worker``/``put_segment``.
* **Reads** return frozen records ordered by id (metrics by worker, segment, step); unknown ids
  raise ``KeyError``.
* **Metric values.** A metric row's ``value`` and each value of its ``extra`` mapping is a
  finite float or None: NaN (and, in ``extra``, +-inf) is stored as None, an invalid
  observation.
* **Versions.** A store written by a newer ``FORMAT_VERSION`` is refused with
  ``FormatVersionError``; an older one opens (a version 1 store, from before metric rows had
  ``extra``, reads back empty ``extra`` mappings, and is upgraded in place by SQLite's first
  metric write or PostgreSQL's opening); a file that is not a store raises ``StoreCorrupt``
  naming the file and is never overwritten.
* **Lock.** ``acquire_lock`` raises ``ExperimentLocked`` naming pid, host and since-time while
  another holder's lock is fresher than ``stale_after_s``; a stale lock is taken over.
* **Fencing.** ``transaction(fence=holder)`` checks, inside the transaction and so atomically
  with its commit, that ``holder`` (compared by token) still holds the lock. If another holder
  took it over (a controller paused past the lock's expiry, then resumed), it raises
  ``LockLost`` (an ``ExperimentLocked``) naming both holders, and nothing of the block commits.
  The check runs before the block (memory, SQLite) or at the transaction's first read or its
  commit (PostgreSQL: one round trip per transaction instead of two), so a lost holder's block
  may run, partly or whole, before ``LockLost``. Two things hold either way: a read inside a
  fenced block never returns to a holder that lost the lock, and what the block got without a
  read (ids from ``next_id`` and ``add_event``) must not be acted on outside the store before
  the commit returns (the controller dispatches work only after it).
* **One writer under the fence.** A fenced transaction's holder is the experiment's only
  writer. If another connection writes ids, events, checkpoints or metrics anyway, a backend
  may refuse the fenced commit with ``StoreError`` (committing nothing) rather than commit ids
  that collide; memory and SQLite never need to.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from firepbt.states import (  # noqa: F401 - re-exported: the store's vocabulary
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DONE,
    EVALUATOR,
    FAILED,
    IDLE,
    MEMBER,
    PENDING,
    SEG_FAILED,
)

# 2: metric rows carry ``extra`` (the other named metrics); segments lost the unused ``owner``.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class WorkerRecord:
    """A population member or an evaluator (FIRE PBT)."""

    id: int
    role: str  # MEMBER | EVALUATOR
    subpop: int  # 1..n for members; the evaluated parent's sub-population for evaluators
    hparams: Mapping[str, Any]
    step: int  # training steps contained in the current weights
    checkpoint: int | None  # current checkpoint id (None before the first segment)
    status: str = ACTIVE
    failures: int = 0
    overwrites: int = 0  # times its weights were replaced (exploit / transfer)
    info: Mapping[str, Any] = field(default_factory=dict)  # algorithm-owned, JSON-able


@dataclass(frozen=True)
class CheckpointRecord:
    """An immutable checkpoint version; tags are stored in the checkpoint's manifest too."""

    id: int
    worker: int  # who wrote it
    step: int
    path: str
    checksum: str
    hparams: Mapping[str, Any]  # the hyperparameters it was trained with
    parent: int | None  # checkpoint it was trained from (lineage)
    created: float
    deleted: bool = False


@dataclass(frozen=True)
class SegmentRecord:
    """One unit of work: train ``worker`` from ``from_checkpoint`` for end-start steps."""

    id: int
    worker: int
    epoch: int  # lease: results carrying another epoch are stale
    start_step: int
    end_step: int
    from_checkpoint: int | None
    hparams: Mapping[str, Any]
    status: str = PENDING
    attempts: int = 0
    to_checkpoint: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class MetricRow:
    """One point of a learning curve; value None marks an invalid (NaN/None) observation.

    ``value`` is the run's metric (the fitness, as the task reported it); ``extra`` holds the
    other named metrics ``evaluate()`` returned at this point (name -> value, None where it was
    NaN, infinite or not a number), empty when it returned one number.
    """

    worker: int
    segment: int
    step: int
    value: float | None
    time: float
    extra: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    """A lineage or life-cycle event (init, exploit, transfer, start/stop evaluator, fail...)."""

    id: int  # assigned by the store; pass 0
    kind: str
    worker: int
    step: int
    time: float
    donor: int | None = None
    donor_checkpoint: int | None = None
    old_hparams: Mapping[str, Any] | None = None
    new_hparams: Mapping[str, Any] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LockHolder:
    """Who holds the experiment lock."""

    pid: int
    host: str
    since: float
    token: str


class Store(ABC):
    """Experiment state. One controller writes; readers (CLI, report) may read concurrently."""

    url: str

    # -- life cycle --------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release connections/files. Idempotent."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def transaction(
        self, fence: LockHolder | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """All writes inside commit together or roll back together; does not nest.

        Args:
            fence: when given, the transaction checks (inside itself, so no other holder can
                take the lock between the check and the commit) that ``fence`` still holds
                the experiment lock, and raises ``LockLost``, committing nothing, if it does
                not: before the block, or at the block's first read or at the commit (see
                "Fencing" in the module docstring).
        """

    # -- experiment --------------------------------------------------------------------------
    @abstractmethod
    def create_experiment(self, config: Mapping[str, Any]) -> None:
        """Record the experiment's configuration; ``StoreError`` if one already exists."""

    @abstractmethod
    def experiment(self) -> dict[str, Any] | None:
        """The configuration given to ``create_experiment``, or None for an empty store."""

    @abstractmethod
    def put_state(self, key: str, value: Any) -> None:
        """Set a JSON-able controller state value (rng state, round, status, ...)."""

    @abstractmethod
    def get_state(self, key: str, default: Any = None) -> Any:
        """Read a state value, ``default`` if never set."""

    # -- lock --------------------------------------------------------------------------------
    @abstractmethod
    def acquire_lock(self, holder: LockHolder, stale_after_s: float, now: float) -> None:
        """Take the experiment lock or raise ``ExperimentLocked`` naming the live holder."""

    @abstractmethod
    def refresh_lock(self, holder: LockHolder, now: float) -> None:
        """Heartbeat: mark the lock fresh at ``now`` (only if ``holder`` still holds it)."""

    @abstractmethod
    def release_lock(self, holder: LockHolder) -> None:
        """Release the lock if ``holder`` holds it."""

    @abstractmethod
    def lock_holder(self) -> tuple[LockHolder, float] | None:
        """The current holder and its last heartbeat time, or None."""

    # -- ids ---------------------------------------------------------------------------------
    @abstractmethod
    def next_id(self, counter: str) -> int:
        """A new id from a named monotonic counter (starts at 1, survives reopening)."""

    # -- workers -----------------------------------------------------------------------------
    @abstractmethod
    def put_worker(self, rec: WorkerRecord) -> None:
        """Insert or replace the whole worker record."""

    @abstractmethod
    def workers(self) -> list[WorkerRecord]:
        """All workers ordered by id."""

    @abstractmethod
    def worker(self, worker_id: int) -> WorkerRecord:
        """One worker; ``KeyError`` if unknown."""

    # -- checkpoints -------------------------------------------------------------------------
    @abstractmethod
    def add_checkpoint(self, rec: CheckpointRecord) -> None:
        """Append a checkpoint record; ``StoreError`` if the id exists."""

    @abstractmethod
    def checkpoint(self, checkpoint_id: int) -> CheckpointRecord:
        """One checkpoint record (deleted ones too); ``KeyError`` if unknown."""

    @abstractmethod
    def checkpoints(
        self, worker: int | None = None, include_deleted: bool = False
    ) -> list[CheckpointRecord]:
        """Checkpoint records ordered by id."""

    @abstractmethod
    def mark_checkpoint_deleted(self, checkpoint_id: int) -> None:
        """Record that retention removed the files; ``KeyError`` if unknown."""

    # -- segments ----------------------------------------------------------------------------
    @abstractmethod
    def put_segment(self, rec: SegmentRecord) -> None:
        """Insert or replace a segment record."""

    @abstractmethod
    def segment(self, segment_id: int) -> SegmentRecord:
        """One segment; ``KeyError`` if unknown."""

    @abstractmethod
    def segments(self, status: str | None = None, worker: int | None = None) -> list[SegmentRecord]:
        """Segments ordered by id, optionally filtered."""

    # -- metrics -----------------------------------------------------------------------------
    @abstractmethod
    def add_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Append curve points; ``StoreError`` on a duplicate (worker, segment, step)."""

    @abstractmethod
    def metrics(self, worker: int | None = None) -> list[MetricRow]:
        """Curve points ordered by (worker, segment, step)."""

    # -- events ------------------------------------------------------------------------------
    @abstractmethod
    def add_event(self, rec: EventRecord) -> int:
        """Append an event and return its new id (the ``id`` field passed in is ignored)."""

    @abstractmethod
    def events(self, kind: str | None = None, worker: int | None = None) -> list[EventRecord]:
        """Events ordered by id, optionally filtered."""

    # -- read-only summaries (dashboard) -----------------------------------------------------
    # Concrete here, so every backend answers them correctly by scanning; a backend overrides
    # them with indexed queries (SQLite does) so the dashboard's overview of a 2,000-member run
    # does not read every metric row or event.

    def event_counts(self) -> dict[str, int]:
        """The number of events of each kind."""
        counts: dict[str, int] = {}
        for e in self.events():
            counts[e.kind] = counts.get(e.kind, 0) + 1
        return counts

    def checkpoint_metrics(self, checkpoints: Sequence[int]) -> dict[int, float | None]:
        """For each checkpoint id, the last valid metric its writing segment recorded.

        The writing segment is the completed one whose ``to_checkpoint`` is that id. Ids with
        no such segment, no valid point, or no record at all map to None.
        """
        wanted = set(checkpoints)
        seg_of: dict[tuple[int, int], int] = {}
        for s in self.segments(status=COMPLETED):
            if s.to_checkpoint in wanted:
                seg_of[(s.worker, s.id)] = s.to_checkpoint
        out: dict[int, float | None] = dict.fromkeys(wanted)
        for m in self.metrics():  # ordered by (worker, segment, step): the last valid one wins
            cid = seg_of.get((m.worker, m.segment))
            if cid is not None and m.value is not None:
                out[cid] = m.value
        return out
