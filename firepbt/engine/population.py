"""The population: every worker's record, its learning curve, the views the algorithm reads
and the per-sub-population fitness tables, kept up to date incrementally.

A learning curve exists once, here (``curves``): the fitness (higher is better) since the
worker's weights were last overwritten. Views and tables are derived from it on every change;
the store keeps each curve under ``curve/<worker>`` (written for the changed workers only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np

from firepbt.algorithms.base import FitnessTable, Snapshot, WorkerView
from firepbt.space import Space
from firepbt.states import ACTIVE, DONE, EVALUATOR, FAILED, IDLE, MEMBER
from firepbt.store.base import Store, WorkerRecord

log = logging.getLogger("firepbt")

Curve = list[float | None]


class Population:
    """Workers, curves, views and fitness tables; ``dirty`` workers are not yet persisted.

    Args:
        workers: every worker's record, by id.
        curves: every worker's curve, by id (fitness: the metric times its sign).
        dirty: workers whose record or curve changed since the last ``persist``.
    """

    def __init__(self, workers: Mapping[int, WorkerRecord], curves: Mapping[int, Curve],
                 dirty: Iterable[int] = ()) -> None:
        self.workers: dict[int, WorkerRecord] = dict(workers)
        self.curves: dict[int, Curve] = {wid: list(curves.get(wid, [])) for wid in self.workers}
        self.dirty: set[int] = set(dirty)
        self.views: dict[int, WorkerView] = {}
        for wid in self.workers:
            self._refresh_view(wid)
        self.open_members = sum(1 for w in self.workers.values()
                                if w.role == MEMBER and w.status not in (DONE, FAILED))
        self.evaluators = sorted(w.id for w in self.workers.values() if w.role == EVALUATOR)
        # Sub-population -> (id -> row, ids ascending, fitness or NaN, step, curve points);
        # members only.
        self._tables: dict[int, tuple[dict[int, int], np.ndarray, np.ndarray, np.ndarray,
                                      np.ndarray]] = {}
        by_k: dict[int, list[int]] = {}
        for w in self.workers.values():
            if w.role == MEMBER:
                by_k.setdefault(w.subpop, []).append(w.id)
        for k, ids in by_k.items():
            ids.sort()
            index = {wid: i for i, wid in enumerate(ids)}
            n = len(ids)
            self._tables[k] = (index, np.asarray(ids, dtype=np.int64), np.full(n, np.nan),
                               np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
            for wid in ids:
                self._update_table(wid)
        self._warned_invalid: set[int] = set()

    # -- changes -----------------------------------------------------------------------------

    def update(self, wid: int, **changes: Any) -> WorkerRecord:
        """Change fields of ``wid``'s record; views and tables follow."""
        self.workers[wid] = rec = replace(self.workers[wid], **changes)
        self.touch(wid)
        return rec

    def note(self, wid: int, **changes: Any) -> WorkerRecord:
        """Change bookkeeping that no view shows (failure counts): persisted, nothing derived."""
        self.workers[wid] = rec = replace(self.workers[wid], **changes)
        self.dirty.add(wid)
        return rec

    def overwrite(self, wid: int, checkpoint: int, step: int, hparams: Mapping[str, Any],
                  curve: Curve) -> None:
        """Point ``wid`` at an immutable checkpoint (by reference: no bytes copied)."""
        w = self.workers[wid]
        self.workers[wid] = replace(w, checkpoint=checkpoint, step=step, hparams=dict(hparams),
                                    overwrites=w.overwrites + 1)
        self.curves[wid] = curve
        self.touch(wid)

    def extend(self, wid: int, fitness: Iterable[float | None], **changes: Any) -> None:
        """New curve points (fitness) of ``wid`` and the record changes that come with them."""
        self.workers[wid] = replace(self.workers[wid], **changes)
        self.curves[wid].extend(fitness)
        self.touch(wid)

    def touch(self, wid: int) -> None:
        """``wid`` changed: mark it dirty and refresh what is derived from it."""
        self.dirty.add(wid)
        w = self.workers[wid]
        # Keep the number of members still training without a pass over the population.
        was_open = self.views[wid].status not in (DONE, FAILED)
        is_open = w.status not in (DONE, FAILED)
        if w.role == MEMBER and was_open != is_open:
            self.open_members += 1 if is_open else -1
        self._refresh_view(wid)
        self._update_table(wid)

    def persist(self, store: Store) -> None:
        """Write the dirty workers and their curves (inside the caller's transaction)."""
        for wid in sorted(self.dirty):
            store.put_worker(self.workers[wid])
            store.put_state(f"curve/{wid}", self.curves[wid])
        self.dirty.clear()

    # -- reading -----------------------------------------------------------------------------

    @property
    def members_done(self) -> bool:
        return self.open_members == 0

    def checkpoints(self) -> set[int]:
        """Every worker's current checkpoint."""
        return {w.checkpoint for w in self.workers.values() if w.checkpoint is not None}

    def idle_evaluators(self) -> list[int]:
        return [e for e in self.evaluators if self.workers[e].status == IDLE]

    def active_evaluators(self) -> list[int]:
        return [e for e in self.evaluators if self.workers[e].status == ACTIVE]

    def snapshot(self, ready: tuple[int, ...], tick: int, space: Space, interval: int,
                 total_steps: int, eval_every: int | None = None) -> Snapshot:
        """What the algorithm sees: read-only views and tables, valid during its call only."""
        return Snapshot(workers=MappingProxyType(self.views), ready=ready, tick=tick,
                        space=space, interval=interval, total_steps=total_steps,
                        tables=self._snapshot_tables(), eval_every=eval_every)

    def warn_if_no_valid_fitness(self, snapshot: Snapshot) -> None:
        """NaN-like fitness never donates, so nobody can exploit: say why, once per run and
        sub-population, but only once every member has reported (not at a healthy start)."""
        for k, table in sorted((snapshot.tables or {}).items()):
            if (k not in self._warned_invalid and len(table.values)
                    and np.isnan(table.values).all()
                    and all(self.workers[int(i)].step > 0 for i in table.ids)):
                self._warned_invalid.add(k)
                log.warning("sub-population %d: no member has a valid fitness (NaN, inf, "
                            "None or non-numeric); no exploit until one has", k)

    def progress(self, total_steps: int) -> tuple[int, int]:
        """(member steps done, member steps in total)."""
        members = [w for w in self.workers.values() if w.role == MEMBER]
        done = sum(min(w.step, total_steps) for w in members)
        return done, len(members) * total_steps

    def best_per_subpop(self) -> dict[int, float]:
        """The best latest fitness of each sub-population (for progress displays)."""
        best: dict[int, float] = {}
        for w in self.workers.values():
            if w.role == MEMBER and w.status != FAILED:
                f = self.views[w.id].last_metric()
                if f is not None and (w.subpop not in best or f > best[w.subpop]):
                    best[w.subpop] = f
        return best

    # -- derived state -----------------------------------------------------------------------

    def _refresh_view(self, wid: int) -> None:
        w = self.workers[wid]
        self.views[wid] = WorkerView(
            w.id, w.role, w.subpop, MappingProxyType(dict(w.hparams)), w.step, w.checkpoint,
            tuple(self.curves[wid]), w.overwrites, w.status, MappingProxyType(dict(w.info)),
        )

    def _update_table(self, wid: int) -> None:
        w = self.workers[wid]
        if w.role != MEMBER or w.subpop not in self._tables:
            return
        index, _, vals, steps, points = self._tables[w.subpop]
        f = self.views[wid].last_metric() if w.status in (ACTIVE, DONE) else None
        i = index[wid]
        vals[i] = np.nan if f is None else f
        steps[i] = w.step
        points[i] = len(self.curves[wid])

    def _snapshot_tables(self) -> dict[int, FitnessTable]:
        # A failed member keeps its slot with NaN fitness: it ranks last and is never a donor.
        # Read-only views, not copies: the algorithm sees them only during decide().
        out = {}
        for k, (_, ids, *arrays) in self._tables.items():
            vals, steps, points = (_read_only(a) for a in arrays)
            out[k] = FitnessTable(ids, vals, steps, points)
        return out


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view
