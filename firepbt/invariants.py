"""The six store invariants of the reliability spec, checked over a whole experiment store.

:func:`check_store` is what every fault test runs after the fault, and what ``firepbt check
STORE`` runs for users. It only reads: the store and the checkpoint files are never modified.
Each problem is one line naming the worker, checkpoint, segment or event and the rule broken.

The invariants (``docs/reliability.md`` explains them):

1. Every worker's current checkpoint exists (record not collected, files present) and its
   checksum verifies; so does the source of every pending segment.
2. Every worker's hyperparameters, and those of every checkpoint and segment, lie in the space.
3. Checkpoint lineage (``parent`` links) is acyclic and names known checkpoints; every exploit,
   transfer, replace and evaluator-start event names a known donor checkpoint of that step.
4. Adopted weights are always explained: whenever a worker continues from (or currently holds)
   a checkpoint another worker wrote, a lineage event records exactly that (worker, donor
   checkpoint, new hyperparameters); and each completed segment's checkpoint carries the
   segment's (hyperparameters, parent) both in its record and in the tags of its manifest.
5. Metric rows belong to completed segments, lie in the segment's step range, and steps strictly
   increase (no duplicates) within a lineage segment: a chain of segments each continuing from
   the previous one's checkpoint.
6. Member counts per sub-population and the evaluator count are those of the algorithm's
   topology; a member holds or continues from an evaluator's checkpoint only through a
   recorded transfer.

Besides the six, the checkpoint files on disk must equal the live records: a checkpoint folder
with no live record is *leaked* (a killed controller leaves some; its next start removes them),
and a live record without its folder is *missing*. The checkpoint folder's owner marker must
name this store's experiment.

Reading a store never imports code the store names: the task, and a custom explore function
(``explore.custom`` in the algorithm's config), are only imported by ``resume``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firepbt.algorithms import algorithm_from_config
from firepbt.checkpoints import default_root
from firepbt.errors import CheckpointError, ConfigError, StoreError
from firepbt.space import Space
from firepbt.storage import CheckpointStorage, open_storage, root_of
from firepbt.store import open_store
from firepbt.store.base import (
    COMPLETED,
    EVALUATOR,
    MEMBER,
    PENDING,
    CheckpointRecord,
    SegmentRecord,
    Store,
)

#: Events that make a worker adopt another checkpoint, and so must name their donor version.
ADOPTING_EVENTS = ("exploit", "transfer", "replace", "start_evaluator")

#: The checksum the simulated executor records: it writes no files, so there is nothing to hash.
SIMULATED_CHECKSUM = "simulated"


def check_store(store: Store | str | os.PathLike[str], *, files: bool = True) -> list[str]:
    """Check the six reliability invariants over an experiment store.

    Args:
        store: an open :class:`Store`, or a store URL/path (opened read-only: a missing file is
            an error, never created; it is closed again afterwards).
        files: also compare the checkpoint folders on disk with the live records (leaked and
            missing checkpoints). Tests turn it off right after killing a controller, whose
            leftovers the next start removes.

    Returns:
        The problems found, one human-readable line each; an empty list means every invariant
        holds. An empty store (no experiment yet) has no problems.

    Raises:
        StoreError: the store cannot be opened (missing, corrupt, newer format).
    """
    if isinstance(store, Store):
        return _Checker(store, files).run()
    opened = open_store(store, create=False)
    try:
        return _Checker(opened, files).run()
    finally:
        opened.close()


def without_code(algorithm: Mapping[str, Any]) -> dict[str, Any]:
    """An algorithm config with every ``explore.custom`` reference dropped.

    ``algorithm_from_config`` imports a custom explore function named in the config; a tool that
    only reads a store must never run code the store names (a crafted store would run it), and
    the topology does not depend on the explore function anyway.
    """
    out = dict(algorithm)
    if isinstance(out.get("explore"), Mapping):
        out["explore"] = {**out["explore"], "custom": None}
    if isinstance(out.get("pbt"), Mapping):  # FIRE keeps its PBT settings nested
        out["pbt"] = without_code(out["pbt"])
    return out


def _key(hparams: Mapping[str, Any] | None) -> str:
    """A canonical text for comparing hyperparameters (JSON, sorted keys)."""
    return json.dumps(dict(hparams or {}), sort_keys=True, default=str)


class _Checker:
    """One pass over one store; collects problems instead of stopping at the first."""

    def __init__(self, store: Store, files: bool = True) -> None:
        self.store = store
        self.files = files
        self.problems: list[str] = []
        self._storages: dict[str, CheckpointStorage] = {}

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def run(self) -> list[str]:
        exp = self.store.experiment()
        if exp is None:
            return []
        try:
            self.space: Space | None = Space.from_json(exp["space"])
        except (ConfigError, KeyError, TypeError) as exc:
            self.space = None
            self.fail(f"experiment: stored search space unreadable ({exc})")
        self.workers = {w.id: w for w in self.store.workers()}
        self.ckpts = {c.id: c for c in self.store.checkpoints(include_deleted=True)}
        self.segs = self.store.segments()
        self.events = self.store.events()
        self.check_current_checkpoints()  # 1
        self.check_hparams_in_space()  # 2
        self.check_lineage()  # 3
        self.check_adoptions()  # 4 and 6 (transfers)
        self.check_metrics()  # 5
        self.check_topology(exp)  # 6
        if self.files:
            self.check_files()
        return self.problems

    # -- 1 ------------------------------------------------------------------------------------

    def _verify(self, what: str, cid: int) -> None:
        rec = self.ckpts.get(cid)
        if rec is None:
            self.fail(f"invariant 1: {what} checkpoint {cid} has no record")
            return
        if rec.deleted:
            self.fail(f"invariant 1: {what} checkpoint {cid} was garbage-collected")
            return
        if rec.checksum == SIMULATED_CHECKSUM:
            return
        root = root_of(rec.path)
        try:
            storage = self._storage(root)
        except (CheckpointError, ConfigError):
            self.fail(f"invariant 1: {what} checkpoint {cid}: folder {root} is missing")
            return
        try:
            storage.verify(rec.path, rec.checksum)
        except CheckpointError as exc:
            self.fail(f"invariant 1: {what} checkpoint {cid}: {exc}")

    def _storage(self, root: str) -> CheckpointStorage:
        """The checkpoint storage at ``root``, opened once and never created (read-only).

        Raises:
            CheckpointError: a local root that is missing.
            ConfigError: a URL root whose fsspec driver is not installed here.
        """
        if root not in self._storages:
            self._storages[root] = open_storage(root, create=False)
        return self._storages[root]

    def check_current_checkpoints(self) -> None:
        verified: set[int] = set()
        for w in self.workers.values():
            if w.checkpoint is not None and w.checkpoint not in verified:
                verified.add(w.checkpoint)
                self._verify(f"worker {w.id}'s current", w.checkpoint)
        for s in self.segs:
            src = s.from_checkpoint
            if s.status == PENDING and src is not None and src not in verified:
                verified.add(src)
                self._verify(f"pending segment {s.id}'s source", src)

    # -- 2 ------------------------------------------------------------------------------------

    def _in_space(self, what: str, hparams: Mapping[str, Any]) -> None:
        if self.space is None:
            return
        try:
            self.space.validate(hparams)
        except ConfigError as exc:
            self.fail(f"invariant 2: {what} hyperparameters outside the space: {exc}")

    def check_hparams_in_space(self) -> None:
        for w in self.workers.values():
            # An idle evaluator that never ran holds no hyperparameters at all.
            if w.role == MEMBER or w.hparams:
                self._in_space(f"worker {w.id}", w.hparams)
        for c in self.ckpts.values():
            self._in_space(f"checkpoint {c.id}", c.hparams)
        for s in self.segs:
            self._in_space(f"segment {s.id}", s.hparams)
        for e in self.events:
            if e.new_hparams is not None:
                self._in_space(f"event {e.id} ({e.kind})", e.new_hparams)

    # -- 3 ------------------------------------------------------------------------------------

    def check_lineage(self) -> None:
        for c in self.ckpts.values():
            if c.parent is not None and c.parent not in self.ckpts:
                self.fail(f"invariant 3: checkpoint {c.id}'s parent {c.parent} has no record")
        # Follow parent links with a colour map: revisiting a node on the current path is a
        # cycle. Iterative, since a long run makes chains thousands of links deep.
        done: set[int] = set()
        for start in self.ckpts:
            path: list[int] = []
            on_path: set[int] = set()
            cid: int | None = start
            while cid is not None and cid in self.ckpts and cid not in done:
                if cid in on_path:
                    self.fail(f"invariant 3: checkpoint lineage has a cycle through {cid}")
                    break
                on_path.add(cid)
                path.append(cid)
                cid = self.ckpts[cid].parent
            done.update(path)
        for e in self.events:
            if e.kind not in ADOPTING_EVENTS:
                continue
            if e.donor_checkpoint is None:
                self.fail(f"invariant 3: event {e.id} ({e.kind}) names no donor checkpoint")
                continue
            rec = self.ckpts.get(e.donor_checkpoint)
            if rec is None:
                self.fail(
                    f"invariant 3: event {e.id} ({e.kind}) names donor checkpoint "
                    f"{e.donor_checkpoint}, which does not exist"
                )
            elif rec.step != e.step:
                self.fail(
                    f"invariant 3: event {e.id} ({e.kind}) at step {e.step} names donor "
                    f"checkpoint {rec.id} of step {rec.step}"
                )
            if e.donor is not None and e.donor not in self.workers:
                self.fail(f"invariant 3: event {e.id} ({e.kind}) names unknown donor {e.donor}")

    # -- 4 and 6 ------------------------------------------------------------------------------

    def check_adoptions(self) -> None:
        # (worker, donor checkpoint, new hparams) -> kinds of the events that recorded it.
        recorded: dict[tuple[int, int, str], set[str]] = defaultdict(set)
        transferred: set[int] = set()
        for e in self.events:
            if e.kind in ADOPTING_EVENTS and e.donor_checkpoint is not None:
                recorded[(e.worker, e.donor_checkpoint, _key(e.new_hparams))].add(e.kind)
                if e.kind == "transfer":
                    transferred.add(e.donor_checkpoint)

        def explained(what: str, wid: int, cid: int, hparams: Mapping[str, Any]) -> None:
            rec = self.ckpts.get(cid)
            if rec is None or rec.worker == wid:
                return  # its own weights (or a missing record, reported by invariant 1/3)
            kinds = recorded.get((wid, cid, _key(hparams)))
            if not kinds:
                self.fail(
                    f"invariant 4: {what} uses checkpoint {cid} of worker {rec.worker} with "
                    f"hyperparameters {_key(hparams)}, but no exploit/transfer event records "
                    "that pair"
                )
                return
            writer = self.workers.get(rec.worker)
            target = self.workers.get(wid)
            if (
                writer is not None and writer.role == EVALUATOR
                and target is not None and target.role == MEMBER
                and "transfer" not in kinds
                # Once transferred into a member, an evaluator's checkpoint is that member's
                # weights, and a peer may exploit it like any other member's.
                and not ("exploit" in kinds and cid in transferred)
            ):
                self.fail(
                    f"invariant 6: member {wid} uses evaluator {writer.id}'s checkpoint {cid} "
                    "without a recorded transfer"
                )

        for w in self.workers.values():
            if w.checkpoint is not None:
                explained(f"worker {w.id} (current)", w.id, w.checkpoint, w.hparams)
        for s in self.segs:
            if s.from_checkpoint is not None:
                explained(f"segment {s.id} of worker {s.worker}", s.worker, s.from_checkpoint,
                          s.hparams)
            if s.status == COMPLETED:
                self._check_written(s)
        for w in self.workers.values():
            rec = self.ckpts.get(w.checkpoint) if w.checkpoint is not None else None
            if rec is not None and rec.step != w.step:
                self.fail(
                    f"invariant 4: worker {w.id} is at step {w.step} but holds checkpoint "
                    f"{rec.id} of step {rec.step}"
                )

    def _check_written(self, s: SegmentRecord) -> None:
        """A completed segment's checkpoint: record and manifest tags match the segment."""
        cid = s.to_checkpoint
        rec: CheckpointRecord | None = self.ckpts.get(cid) if cid is not None else None
        if rec is None:
            self.fail(f"invariant 4: completed segment {s.id} has no checkpoint record ({cid})")
            return
        want = (s.worker, s.end_step, s.from_checkpoint, _key(s.hparams))
        got = (rec.worker, rec.step, rec.parent, _key(rec.hparams))
        if got != want:
            self.fail(
                f"invariant 4: checkpoint {rec.id} (worker, step, parent, hparams) = {got} "
                f"differs from its segment {s.id}'s {want}"
            )
        if rec.deleted or rec.checksum == SIMULATED_CHECKSUM:
            return
        try:
            tags = self._storage(root_of(rec.path)).read_tags(rec.path)
        except (CheckpointError, ConfigError) as exc:
            self.fail(f"invariant 4: checkpoint {rec.id}: {exc}")
            return
        if (_key(tags.get("hparams")), tags.get("parent")) != (_key(s.hparams), s.from_checkpoint):
            self.fail(
                f"invariant 4: checkpoint {rec.id}'s manifest tags (hparams "
                f"{_key(tags.get('hparams'))}, parent {tags.get('parent')}) differ from its "
                f"segment {s.id}'s (hparams {_key(s.hparams)}, parent {s.from_checkpoint})"
            )

    # -- 5 ------------------------------------------------------------------------------------

    def check_metrics(self) -> None:
        by_id = {s.id: s for s in self.segs}
        rows_of: dict[int, list[int]] = defaultdict(list)
        for m in self.store.metrics():
            seg = by_id.get(m.segment)
            if seg is None or seg.worker != m.worker:
                self.fail(f"invariant 5: metric row (worker {m.worker}, segment {m.segment}, "
                          f"step {m.step}) belongs to no segment of that worker")
                continue
            if seg.status != COMPLETED:
                self.fail(f"invariant 5: metric row of worker {m.worker} at step {m.step} "
                          f"belongs to segment {seg.id}, which is {seg.status}")
            if not seg.start_step < m.step <= seg.end_step:
                self.fail(f"invariant 5: metric row of worker {m.worker} at step {m.step} lies "
                          f"outside segment {seg.id}'s steps ({seg.start_step}, {seg.end_step}]")
            rows_of[seg.id].append(m.step)
        # Lineage segments: chains of completed segments, each continuing the previous one.
        last_ckpt: dict[int, int | None] = {}
        last_step: dict[int, int] = {}
        for s in sorted(self.segs, key=lambda s: s.id):
            if s.status != COMPLETED:
                continue
            if s.worker not in last_ckpt or last_ckpt[s.worker] != s.from_checkpoint:
                last_step[s.worker] = s.start_step  # a new lineage segment starts here
            for step in rows_of.get(s.id, []):
                if step <= last_step[s.worker]:
                    self.fail(f"invariant 5: worker {s.worker} has a duplicate or backward "
                              f"metric step {step} in segment {s.id}")
                last_step[s.worker] = step
            last_ckpt[s.worker] = s.to_checkpoint

    # -- 6 ------------------------------------------------------------------------------------

    def check_topology(self, exp: Mapping[str, Any]) -> None:
        try:
            roles = algorithm_from_config(without_code(exp["algorithm"])).topology()
        except (ConfigError, KeyError, TypeError, StoreError) as exc:
            self.fail(f"invariant 6: stored algorithm unreadable ({exc})")
            return
        want: dict[int, int] = defaultdict(int)
        for r in roles:
            if r.role == MEMBER:
                want[r.subpop] += 1
        got: dict[int, int] = defaultdict(int)
        for w in self.workers.values():
            if w.role == MEMBER:
                got[w.subpop] += 1
        if dict(got) != dict(want):
            self.fail(f"invariant 6: members per sub-population are {dict(sorted(got.items()))}"
                      f", configured {dict(sorted(want.items()))}")
        n_eval = sum(1 for w in self.workers.values() if w.role == EVALUATOR)
        want_eval = sum(1 for r in roles if r.role == EVALUATOR)
        if n_eval != want_eval:
            self.fail(f"invariant 6: {n_eval} evaluators, configured {want_eval}")
        if len(self.workers) != len(roles):
            self.fail(f"invariant 6: {len(self.workers)} workers, configured {len(roles)}")

    # -- files on disk == live records --------------------------------------------------------

    def _roots(self) -> set[str]:
        """The checkpoint roots of this store: where its records point, and the default."""
        roots = {root_of(c.path) for c in self.ckpts.values() if c.checksum != SIMULATED_CHECKSUM}
        url = self.store.url
        if url.startswith("sqlite:///"):
            default = default_root(Path(url[len("sqlite:///"):]))
            if default.is_dir():
                roots.add(str(default.absolute()))
        return roots

    def _present(self, location: str) -> bool:
        """Whether a complete checkpoint is at ``location``."""
        try:
            storage = self._storage(root_of(location))
        except (CheckpointError, ConfigError):
            return False
        cid = storage.id_of(location)
        return cid is not None and storage.exists(cid)

    def check_files(self) -> None:
        live = {c.id: c for c in self.ckpts.values()
                if not c.deleted and c.checksum != SIMULATED_CHECKSUM}
        for c in live.values():
            if not self._present(c.path):
                self.fail(f"files: checkpoint {c.id} (worker {c.worker}, step {c.step}) is "
                          f"missing: {c.path} holds no complete checkpoint")
        experiment = self.store.get_state("experiment_id")
        for root in sorted(self._roots()):
            try:
                storage = self._storage(root)
            except (CheckpointError, ConfigError):
                continue  # every record under it is reported missing above
            try:
                owner = storage.owner()
            except CheckpointError as exc:
                self.fail(f"files: {exc}")
                owner = None
            if owner is not None and experiment is not None and owner["experiment"] != experiment:
                self.fail(f"files: checkpoint folder {storage.url} belongs to store "
                          f"{owner['store']!r} (experiment {owner['experiment']}), not to this "
                          f"store's experiment {experiment}")
            for entry in storage.entries():
                where = f"{storage.url}/{entry.name}"
                if entry.kind == "writing":
                    continue
                if entry.kind == "orphan":
                    self.fail(f"files: leaked temporary folder {where} (a killed writer's; "
                              "the next start removes it)")
                    continue
                cid = entry.checkpoint
                assert cid is not None
                rec = live.get(cid)
                if rec is not None and storage.id_of(rec.path) == cid:
                    continue
                why = ("its record was collected" if cid in self.ckpts and self.ckpts[cid].deleted
                       else "no record" if cid not in self.ckpts else "its record points elsewhere")
                partial = "" if entry.kind == "checkpoint" else " (incomplete: no manifest)"
                self.fail(f"files: leaked checkpoint folder {where}{partial}: {why} (the next "
                          "start removes it)")
