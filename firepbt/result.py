"""Read-only queries over a finished (or running) experiment: best member, schedules, lineage."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firepbt.store.base import MEMBER, EventRecord, Store
from firepbt.trainable import Metric

LINEAGE_KINDS = ("exploit", "transfer", "replace")


@dataclass(frozen=True)
class SchedulePiece:
    """Hyperparameters used from ``start_step`` to ``end_step`` by ``worker``'s weights."""

    start_step: int
    end_step: int
    worker: int
    hparams: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a segment: who, where, and the traceback from the task's code."""

    worker: int
    segment: int | None
    attempt: int
    step: int
    error: str

    @property
    def last_line(self) -> str:
        """The exception's last line (``ValueError: ...``), for tables."""
        lines = self.error.strip().splitlines()
        return lines[-1] if lines else ""


class Result:
    """Queries over a store. Cheap to build; every method reads the store afresh."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def experiment(self) -> dict[str, Any]:
        exp = self.store.experiment()
        if exp is None:
            raise KeyError(f"store {self.store.url!r} holds no experiment")
        return exp

    @property
    def metric(self) -> Metric:
        """The run's metric: its name and whether higher or lower is better."""
        return Metric.of(self.experiment.get("metric"))

    def status(self) -> str:
        return str(self.store.get_state("status", "unknown"))

    def final_metrics(self, subpop: int | None = 1) -> dict[int, float | None]:
        """Latest valid metric of every member (of sub-population ``subpop``; None = all)."""
        out: dict[int, float | None] = {}
        curves = self.curves()
        for w in self.store.workers():
            if w.role != MEMBER or (subpop is not None and w.subpop != subpop):
                continue
            vals = [v for _, v in self.current_curve(w.id, curves) if v is not None]
            out[w.id] = vals[-1] if vals else None
        return out

    @property
    def best(self) -> int | None:
        """The member of P1 with the best latest metric (the run's answer)."""
        finals = {k: v for k, v in self.final_metrics().items() if v is not None}
        if not finals:
            return None
        sign = self.metric.sign
        return max(finals, key=lambda k: (sign * finals[k], -k))

    @property
    def best_metric(self) -> float | None:
        b = self.best
        return None if b is None else self.final_metrics()[b]

    def curves(self) -> dict[int, list[tuple[int, float | None]]]:
        """Every point each worker recorded, as (step, value), by worker."""
        out: dict[int, list[tuple[int, float | None]]] = defaultdict(list)
        for row in self.store.metrics():
            out[row.worker].append((row.step, row.value))
        return dict(out)

    def current_curve(
        self, worker: int, curves: dict[int, list[tuple[int, float | None]]] | None = None
    ) -> list[tuple[int, float | None]]:
        """The points recorded along ``worker``'s current lineage (its weights' history)."""
        pieces = self.schedule(worker)
        curves = self.curves() if curves is None else curves
        points: list[tuple[int, float | None]] = []
        for p in pieces:
            points += [(s, v) for s, v in curves.get(p.worker, [])
                       if p.start_step < s <= p.end_step]
        # A worker may have recorded the same step twice across lineages; keep the lineage's.
        seen: dict[int, float | None] = {}
        for s, v in points:
            seen[s] = v
        return sorted(seen.items())

    def metric_names(self) -> list[str]:
        """The run's metric (the fitness) first, then every other name ``evaluate()`` returned
        (sorted): the keys of :meth:`metric_curves`."""
        extra = sorted({name for row in self.store.metrics() for name in row.extra})
        return [self.metric.name, *extra]

    def metric_curves(
        self, worker: int, lineage: bool = True
    ) -> dict[str, list[tuple[int, float | None]]]:
        """Every named metric of ``worker`` as (step, value) points, by name.

        The run's metric (the fitness, under its name) comes first, then each other name a
        dict-valued ``evaluate()`` returned, sorted. Values are as the task reported them;
        None marks an invalid one (NaN, inf, not a number). A name has points only where the
        task reported it.

        Args:
            worker: A member's (or an evaluator's) id.
            lineage: Along the worker's current lineage, as :meth:`current_curve` (what its
                weights went through, across exploits and transfers); False: only the points
                the worker recorded itself.

        Raises:
            KeyError: no such worker.
        """
        pieces: list[tuple[int, float, float]]  # (writer, after step, up to step)
        if lineage:
            pieces = [(p.worker, p.start_step, p.end_step) for p in self.schedule(worker)]
        else:
            self.store.worker(worker)  # KeyError naming an unknown worker
            pieces = [(worker, -1, math.inf)]
        writers = {w for w, _, _ in pieces}
        rows = [r for r in self.store.metrics() if r.worker in writers]
        by_name: dict[str, dict[int, float | None]] = {self.metric.name: {}}
        for writer, start, end in pieces:
            for r in rows:
                if r.worker == writer and start < r.step <= end:
                    # A step recorded twice (across lineages): the later piece's value wins.
                    by_name[self.metric.name][r.step] = r.value
                    for name, value in r.extra.items():
                        by_name.setdefault(name, {})[r.step] = value
        fitness = by_name.pop(self.metric.name)
        ordered = {self.metric.name: fitness, **dict(sorted(by_name.items()))}
        return {name: sorted(points.items()) for name, points in ordered.items()}

    def schedule(self, worker: int) -> list[SchedulePiece]:
        """Hyperparameters over steps along ``worker``'s lineage, oldest first.

        Follows the parent links of the checkpoints its current weights descend from, across
        exploits and FIRE transfers, so the schedule is what the weights were actually trained
        with.
        """
        w = self.store.worker(worker)
        chain = []
        cid = w.checkpoint
        while cid is not None:
            rec = self.store.checkpoint(cid)
            chain.append(rec)
            cid = rec.parent
        chain.reverse()
        pieces = []
        prev_step = 0
        for rec in chain:
            pieces.append(SchedulePiece(prev_step, rec.step, rec.worker, dict(rec.hparams)))
            prev_step = rec.step
        return _merge(pieces)

    def lineage(self) -> list[EventRecord]:
        """Exploit, transfer and replacement events, oldest first."""
        return [e for e in self.store.events() if e.kind in LINEAGE_KINDS]

    def events(self, kind: str | None = None) -> list[EventRecord]:
        return self.store.events(kind=kind)

    def best_checkpoint(self, member: int | None = None) -> Path:
        """The directory holding the trained weights of ``member`` (default: the best member),
        as the task's ``save()`` wrote it: the task's own ``load()`` reads it. It is verified
        against its checksum first; a checkpoint on an fsspec URL is fetched into a local cache.

        Raises:
            KeyError: no such member, or no member has a valid metric yet.
            CheckpointError: the checkpoint is gone or fails its checksum.
        """
        from firepbt.storage import storage_of

        wid = self.best if member is None else member
        if wid is None:
            raise KeyError(f"store {self.store.url!r} has no member with a valid metric yet")
        w = self.store.worker(wid)
        if w.checkpoint is None:
            raise KeyError(f"worker {wid} has not written a checkpoint yet")
        rec = self.store.checkpoint(w.checkpoint)
        return storage_of(rec.path).fetch(rec.path, rec.checksum)

    def failures(self) -> list[Failure]:
        """Every failed segment attempt, oldest first."""
        return [
            Failure(e.worker, e.info.get("segment"), int(e.info.get("attempt", 1)), e.step,
                    str(e.info.get("error", "")))
            for e in self.store.events(kind="failure")
        ]

    def failure(self) -> str | None:
        """Why the run failed as a whole, or None: a run fails when it ended with no member
        holding a valid fitness. The message shows the first full traceback from the task."""
        if self.status() != "failed":
            return None
        stopped = self.store.get_state("error")
        if stopped:  # the run stopped on an error of its own (the task cannot load)
            return f"the run stopped: {str(stopped).strip().splitlines()[-1]}\n{stopped}"
        failures = self.failures()
        members = [w for w in self.store.workers() if w.role == MEMBER]
        if not failures:
            return (f"no member of {len(members)} ended with a valid fitness: every value the "
                    "task's evaluate() returned was NaN, inf, None or not a number")
        first = failures[0]
        failed = len({f.worker for f in failures})
        return (
            f"no member ended with a valid fitness; {failed} of {len(members)} members failed "
            f"({len(failures)} failed segment attempts). First failure, worker {first.worker} "
            f"segment {first.segment} attempt {first.attempt}:\n{first.error.rstrip()}"
        )

    def summary(self) -> dict[str, Any]:
        exp = self.experiment
        best = self.best
        return {
            "status": self.status(),
            "algorithm": exp["algorithm"]["name"],
            "metric": self.metric.describe(),
            "best": best,
            "best_metric": self.best_metric,
            "exploits": len(self.store.events(kind="exploit")),
            "transfers": len(self.store.events(kind="transfer")),
            "failures": len(self.store.events(kind="failure")),
            "schedule": [p.__dict__ for p in self.schedule(best)] if best is not None else [],
        }


def _merge(pieces: list[SchedulePiece]) -> list[SchedulePiece]:
    """Join consecutive pieces with equal hyperparameters and writer."""
    out: list[SchedulePiece] = []
    for p in pieces:
        if out and out[-1].hparams == p.hparams and out[-1].worker == p.worker:
            out[-1] = SchedulePiece(out[-1].start_step, p.end_step, p.worker, p.hparams)
        else:
            out.append(p)
    return out


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
