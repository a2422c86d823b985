"""Which checkpoints stay: the live set, garbage collection and the orphan sweep.

Every touch of the checkpoint files goes through the experiment's
:class:`~firepbt.storage.CheckpointStorage` (a local directory or an fsspec URL), addressed by
checkpoint id: the controller never sees a path.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

from firepbt.checkpoints import collectable, store_identity
from firepbt.faults import crash_point
from firepbt.storage import CheckpointStorage
from firepbt.store.base import CheckpointRecord, LockHolder, Store

log = logging.getLogger("firepbt")


class Retention:
    """The live checkpoints and their collection, committed before any file goes.

    Args:
        store: the experiment's store.
        files: its checkpoint storage.
        keep: how many of each writer's newest checkpoints to keep.
        writes_checkpoints: whether the executor writes files at all (a simulated one not).
        fence: the lease holder every commit is fenced with.
    """

    def __init__(self, store: Store, files: CheckpointStorage, keep: int,
                 writes_checkpoints: bool, fence: LockHolder) -> None:
        self.store, self.files, self.keep = store, files, keep
        self.writes_checkpoints = writes_checkpoints
        self.fence = fence
        # Live (not yet collected) checkpoints: id -> (writer, step, location, checksum), so
        # that dispatching and collecting never read checkpoint records back from the store.
        self.live: dict[int, tuple[int, int, str, str]] = {}
        self.new_since_collect = 0
        # Deleting is slow on some file systems: a background thread does it off the
        # controller's critical path (threads start on the first deletion).
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firepbt-gc")

    def sweep(self) -> None:
        """At start: claim the folder, then delete what the store does not know."""
        records = self.store.checkpoints()
        # The sweep below deletes what this store does not know: the folder must be ours.
        self.files.claim(store_identity(self.store.url),
                         str(self.store.get_state("experiment_id")),
                         {c.id: c.checksum for c in records})
        known = {c.id for c in records}
        self.files.clean_orphans()
        for cid in self.files.ids():
            # Written by a segment whose result was never committed, or collected by a
            # controller killed between marking the record deleted and removing the files.
            if cid not in known:
                self.files.delete(cid)
        self.live = {c.id: (c.worker, c.step, c.path, c.checksum) for c in records}

    def add(self, cid: int, writer: int, step: int, location: str, checksum: str) -> None:
        self.live[cid] = (writer, step, location, checksum)
        self.new_since_collect += 1

    def source(self, cid: int) -> tuple[str, str]:
        """(location, checksum) of checkpoint ``cid`` for a worker to load."""
        if cid in self.live:
            return self.live[cid][2], self.live[cid][3]
        rec = self.store.checkpoint(cid)  # collected: the worker's verify reports it missing
        return rec.path, rec.checksum

    def gone(self, rec: CheckpointRecord) -> bool:
        """Whether checkpoint ``rec`` can no longer be loaded (collected, or its files lost)."""
        return rec.deleted or (self.writes_checkpoints and not self.files.exists(rec.id))

    def drop_uncommitted(self, location: str) -> None:
        """Delete a checkpoint a stale result wrote, unless the store records it.

        Written under the old lease and never committed: nobody can refer to it. A duplicate
        delivery of a committed result must keep its checkpoint, though.
        """
        cid = self.files.id_of(location)
        if cid is None:
            return
        try:
            self.store.checkpoint(cid)
        except KeyError:
            self.files.delete(cid)

    def due(self, population_size: int) -> bool:
        """Amortised: collect once a quarter of the population wrote new checkpoints."""
        return self.new_since_collect > population_size // 4

    def collect(self, pinned: Collection[int]) -> None:
        """Delete checkpoints nobody can need: never a ``pinned`` one (current or a source)."""
        self.new_since_collect = 0
        live = [(cid, writer, step) for cid, (writer, step, _, _) in self.live.items()]
        doomed = collectable(live, pinned, self.keep)
        if not doomed:
            return
        with self.store.transaction(fence=self.fence):
            for cid in doomed:
                self.store.mark_checkpoint_deleted(cid)
        crash_point("controller.after_gc_commit")
        # Files go after the records: a crash in between leaves orphan files that the next
        # start removes, never a record pointing at missing files.
        for cid in doomed:
            del self.live[cid]
        if self.writes_checkpoints:
            self._deleter.submit(self._delete, doomed)

    def _delete(self, ids: list[int]) -> None:
        for cid in ids:
            try:
                self.files.delete(cid)
            except OSError as exc:  # left for the orphan sweep at the next start
                log.warning("could not delete checkpoint %d: %s", cid, exc)

    def close(self) -> None:
        """Wait for the deletions in progress."""
        self._deleter.shutdown(wait=True)
