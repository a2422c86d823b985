"""What the dashboard and the report show, as JSON-able dicts read from a store.

Two reads:

* :func:`overview` answers "how is the run doing" (status, progress, ETA, counts, every member's
  current metric and hyperparameters) from indexed queries only, so it stays fast on a
  2,000-member run and can be polled every few seconds;
* :func:`run_payload` reads the whole store once (curves, segments, checkpoints, events) and
  builds every view: the in-memory lineage queries avoid one query per member.

Nothing here imports user code: the task and any ``explore.custom`` named in the store stay
strings, and the search space is rebuilt from its JSON by firepbt's own :class:`Space`.
Curves are decimated (never members) so a big run still opens in a browser in seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from firepbt.algorithms.fire import MemberRecord
from firepbt.errors import ConfigError
from firepbt.result import SchedulePiece
from firepbt.space import Int, LogUniform, Ordered, Space, Uniform
from firepbt.store.base import (
    COMPLETED,
    EVALUATOR,
    MEMBER,
    SEG_FAILED,
    CheckpointRecord,
    EventRecord,
    SegmentRecord,
    Store,
    WorkerRecord,
)
from firepbt.trainable import Metric

LINEAGE_KINDS = ("exploit", "transfer", "replace")
FAILURE_KINDS = ("failure", "failed", "replace")
MAX_POINTS = 120_000  # curve points shipped per run; above it every curve is thinned evenly
MAX_GRAPH_NODES = 3_000  # lineage graph nodes: the best lineage plus the most recent others
MAX_EVENT_ROWS = 300  # lineage / transfer / failure rows
MAX_SCHEDULE_PIECES = 60_000  # schedule pieces of all members; above it the best + a sample

Point = tuple[int, float | None]


# --------------------------------------------------------------------------------------------
# Reading a store once


@dataclass
class RunData:
    """Everything the views need, read from the store in a handful of queries."""

    url: str
    experiment: dict[str, Any]
    status: str
    best: int | None
    best_metric: float | None
    workers: dict[int, WorkerRecord]
    checkpoints: dict[int, CheckpointRecord]
    segments: list[SegmentRecord]
    events: list[EventRecord]
    # Curve points of the segment that wrote each checkpoint: checkpoint id -> points.
    points: dict[int, list[Point]] = field(default_factory=dict)
    # Curve points of every segment (completed or not): segment id -> points.
    seg_points: dict[int, list[Point]] = field(default_factory=dict)
    # The other named metrics of those points (one mapping each), for segments that have any.
    seg_extra: dict[int, list[Mapping[str, float | None]]] = field(default_factory=dict)
    # The segment that wrote each checkpoint (completed segments only).
    seg_of_ckpt: dict[int, int] = field(default_factory=dict)
    # Every other name evaluate() returned besides the fitness, sorted.
    extra_names: list[str] = field(default_factory=list)
    space: Space | None = None
    # The latest valid metric along each member's lineage (Result.final_metrics, all subpops).
    finals: dict[int, float | None] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Store) -> RunData:
        exp = store.experiment()
        if exp is None:
            raise ConfigError(f"store {store.url!r}: holds no experiment to report on")
        run = cls(
            url=store.url,
            experiment=exp,
            status=str(store.get_state("status", "unknown")),
            best=None,
            best_metric=None,
            workers={w.id: w for w in store.workers()},
            checkpoints={c.id: c for c in store.checkpoints(include_deleted=True)},
            segments=store.segments(),
            events=store.events(),
        )
        rows: dict[tuple[int, int], list[Point]] = defaultdict(list)
        extras: dict[tuple[int, int], list[Mapping[str, float | None]]] = defaultdict(list)
        names: set[str] = set()
        for m in store.metrics():
            key = (m.worker, m.segment)
            rows[key].append((m.step, _finite_or_none(m.value)))
            if m.extra:
                if len(extras[key]) < len(rows[key]) - 1:  # earlier points had none
                    extras[key] += [{}] * (len(rows[key]) - 1 - len(extras[key]))
                extras[key].append(m.extra)
                names.update(m.extra)
        run.extra_names = sorted(names)
        for seg in run.segments:
            key = (seg.worker, seg.id)
            pts = rows.get(key, [])
            run.seg_points[seg.id] = pts
            if key in extras:
                run.seg_extra[seg.id] = extras[key] + [{}] * (len(pts) - len(extras[key]))
            # A segment's record is upserted on retry, so to_checkpoint names the attempt that
            # completed and wrote these points.
            if seg.status == COMPLETED and seg.to_checkpoint in run.checkpoints:
                run.points[seg.to_checkpoint] = pts
                run.seg_of_ckpt[seg.to_checkpoint] = seg.id
        # The best member as Result.best defines it (the P1 member with the highest latest
        # valid metric along its lineage, ties to the lower id), answered in memory: Result
        # walks each lineage with one query per checkpoint, 80,000 of them on a big run.
        run.finals = {w.id: run.final_metric(w.id) for w in run.members()}
        sign = run_metric(exp).sign
        p1 = [(sign * v, -w.id) for w in run.members() if w.subpop == 1
              and (v := run.finals[w.id]) is not None]
        if p1:
            run.best = -max(p1)[1]
            run.best_metric = run.finals[run.best]
        try:
            run.space = Space.from_json(exp["space"])
        except (ConfigError, KeyError, TypeError):
            run.space = None  # views then infer numeric keys from the values
        return run

    # -- descriptors -------------------------------------------------------------------------

    @property
    def task(self) -> str:
        return str(self.experiment.get("task") or "(unnamed task)")

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.experiment.get("config", {}))

    @property
    def algorithm(self) -> dict[str, Any]:
        return dict(self.experiment.get("algorithm", {}))

    def members(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.role == MEMBER]

    def evaluators(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.role == EVALUATOR]

    def subpops(self) -> list[int]:
        return sorted({w.subpop for w in self.members()})

    @property
    def is_fire(self) -> bool:
        return len(self.subpops()) > 1 or bool(self.evaluators())

    # -- lineage (the in-memory twin of Result.schedule / Result.current_curve) ----------------

    def chain(self, checkpoint: int | None) -> list[CheckpointRecord]:
        """Checkpoints from the first one to ``checkpoint`` along parent links."""
        out: list[CheckpointRecord] = []
        seen: set[int] = set()
        while checkpoint is not None and checkpoint in self.checkpoints and checkpoint not in seen:
            seen.add(checkpoint)  # a damaged store must not loop forever
            rec = self.checkpoints[checkpoint]
            out.append(rec)
            checkpoint = rec.parent
        out.reverse()
        return out

    def schedule(self, worker: int) -> list[SchedulePiece]:
        """Hyperparameters along ``worker``'s lineage, like :meth:`Result.schedule`."""
        pieces: list[SchedulePiece] = []
        prev = 0
        for rec in self.chain(self.workers[worker].checkpoint):
            piece = SchedulePiece(prev, rec.step, rec.worker, dict(rec.hparams))
            last = pieces[-1] if pieces else None
            if last is not None and last.hparams == piece.hparams and last.worker == piece.worker:
                pieces[-1] = SchedulePiece(last.start_step, rec.step, rec.worker, last.hparams)
            else:
                pieces.append(piece)
            prev = rec.step
        return pieces

    def current_curve(self, worker: int) -> list[Point]:
        """Points along ``worker``'s lineage, like :meth:`Result.current_curve`."""
        by_step: dict[int, float | None] = {}
        for rec in self.chain(self.workers[worker].checkpoint):
            for s, v in self.points.get(rec.id, []):
                by_step[s] = v
        return sorted(by_step.items())

    def current_extra(self, worker: int) -> dict[int, Mapping[str, float | None]]:
        """The other named metrics along ``worker``'s lineage, by step (steps with any)."""
        by_step: dict[int, Mapping[str, float | None]] = {}
        for rec in self.chain(self.workers[worker].checkpoint):
            seg = self.seg_of_ckpt.get(rec.id)
            extra = self.seg_extra.get(seg, []) if seg is not None else []
            for (s, _), x in zip(self.seg_points.get(seg, []) if seg is not None else [],
                                 extra, strict=False):
                by_step[s] = x
        return by_step

    def best_lineage_checkpoints(self) -> list[int]:
        if self.best is None:
            return []
        return [c.id for c in self.chain(self.workers[self.best].checkpoint)]

    def best_lineage_handoffs(self) -> set[tuple[int, int]]:
        """(receiving worker, donor checkpoint) of every weight hand-off on the best lineage."""
        if self.best is None:
            return set()
        chain = self.chain(self.workers[self.best].checkpoint)
        return {(b.worker, a.id) for a, b in zip(chain, chain[1:], strict=False)
                if a.worker != b.worker}

    def compute_split(self) -> dict[str, int]:
        """Completed training steps by role (members vs evaluators)."""
        split = {MEMBER: 0, EVALUATOR: 0}
        for seg in self.segments:
            if seg.status == COMPLETED and seg.worker in self.workers:
                role = self.workers[seg.worker].role
                split[role] = split.get(role, 0) + seg.end_step - seg.start_step
        return split

    def last_point(self, checkpoint: int | None) -> tuple[int, float] | None:
        if checkpoint is None:
            return None
        pts = [(s, v) for s, v in self.points.get(checkpoint, []) if v is not None]
        return pts[-1] if pts else None

    def final_metric(self, worker: int) -> float | None:
        vals = [v for _, v in self.current_curve(worker) if v is not None]
        return vals[-1] if vals else None


# --------------------------------------------------------------------------------------------
# The overview: indexed queries only (polled)


def overview(store: Store, label: str = "", now: float | None = None) -> dict[str, Any]:
    """Status, progress, ETA, event counts and every worker's current state.

    Reads the experiment, the state, the workers, ``event_counts`` and ``checkpoint_metrics``
    (the metric of each worker's current weights), never the curves.

    Raises:
        ConfigError: the store holds no experiment.
    """
    exp = store.experiment()
    if exp is None:
        raise ConfigError(f"store {store.url!r}: holds no experiment")
    now = time.time() if now is None else now
    workers = store.workers()
    status = str(store.get_state("status", "unknown"))
    counts = store.event_counts()
    metric_of = store.checkpoint_metrics([w.checkpoint for w in workers
                                          if w.checkpoint is not None])
    cfg = dict(exp.get("config", {}))
    steps = cfg.get("steps")
    members = [w for w in workers if w.role == MEMBER]
    done = sum(min(w.step, steps) if isinstance(steps, int) else w.step for w in members)
    total = len(members) * steps if isinstance(steps, int) else None
    created = exp.get("created")
    elapsed = now - created if isinstance(created, int | float) else None
    eta = None
    if status == "running" and total and elapsed and 0 < done < total:
        eta = elapsed * (total - done) / done  # at the average rate so far
    p1 = [(metric_of.get(w.checkpoint) if w.checkpoint is not None else None, w.id)
          for w in members if w.subpop == 1]
    sign = run_metric(exp).sign  # a "min" metric: the lowest value is the best
    valid = [(sign * m, -i) for m, i in p1 if m is not None]
    best = -max(valid)[1] if valid else None  # ties go to the lower id, as in Result.best
    metric_by_id = {i: m for m, i in p1}
    rows = [_worker_row(w, metric_of.get(w.checkpoint) if w.checkpoint is not None else None)
            for w in workers]
    # Changes whenever a segment completes, a worker is overwritten or an event is added: the
    # client refetches the full views only then.
    digest = hashlib.sha1(repr((status, sorted(counts.items()),
                                [(w.id, w.step, w.checkpoint, w.status) for w in workers]))
                          .encode()).hexdigest()[:16]
    lock = store.lock_holder()
    return {
        "label": label or store.url,
        "url": store.url,
        "task": str(exp.get("task") or "(unnamed task)"),
        "algorithm": str(dict(exp.get("algorithm", {})).get("name", "?")),
        "metric": metric_label(exp),
        "status": status,
        "progress": {"done": done, "total": total, "elapsed_s": elapsed, "eta_s": eta},
        "counts": counts,
        "best": best,
        "best_metric": metric_by_id.get(best) if best is not None else None,
        "workers": rows,
        "lock": None if lock is None else {"pid": lock[0].pid, "host": lock[0].host,
                                           "heartbeat": lock[1]},
        "version": digest,
    }


def _worker_row(w: WorkerRecord, metric: float | None) -> dict[str, Any]:
    return {
        "id": w.id, "role": w.role, "subpop": w.subpop, "status": w.status, "step": w.step,
        "checkpoint": w.checkpoint, "metric": _finite_or_none(metric),
        "fire": _finite_or_none(_num(MemberRecord.from_json(w.info).fire_fitness)),
        "overwrites": w.overwrites, "failures": w.failures, "hparams": flatten(w.hparams),
    }


def run_metric(exp: Mapping[str, Any]) -> Metric:
    """The run's metric (name, and whether higher or lower is better); the default for a
    store written before metrics had names, or with an unreadable entry."""
    try:
        return Metric.of(exp.get("metric"))
    except (ConfigError, TypeError):
        return Metric()


def metric_label(exp: Mapping[str, Any]) -> dict[str, str]:
    """The metric's name, mode and direction as the views show them."""
    m = run_metric(exp)
    return {"name": m.name, "mode": m.mode,
            "direction": "higher is better" if m.sign > 0 else "lower is better"}


# --------------------------------------------------------------------------------------------
# The full payload: every view


def run_payload(store: Store, label: str = "", now: float | None = None) -> dict[str, Any]:
    """Every view of one run: the overview plus curves, schedules, the lineage graph,
    evaluations, transfers and failures, ready for ``json.dumps``.

    Raises:
        ConfigError: the store holds no experiment.
    """
    out = overview(store, label, now)
    run = RunData.load(store)
    return {**out, **views(run)}


def views(run: RunData) -> dict[str, Any]:
    """The heavy views of a loaded run (see :func:`run_payload`)."""
    notes: list[str] = []
    hp_index: dict[str, int] = {}
    hp_table: list[dict[str, Any]] = []

    def hp_id(hp: Mapping[str, Any]) -> int:
        # Keyed by the JSON text (keeps 1 and True apart); flattened only once per setting.
        key = json.dumps(hp, sort_keys=True, default=str)
        found = hp_index.get(key)
        if found is None:
            found = hp_index[key] = len(hp_table)
            hp_table.append(flatten(hp))
        return found

    # Segments and their points (decimated evenly when the run is big).
    total_points = sum(len(p) for p in run.seg_points.values())
    stride = max(1, math.ceil(total_points / MAX_POINTS))
    if stride > 1:
        notes.append(f"Curves show every {stride}th of {total_points:,} recorded points "
                     "(and each segment's last); hover and zoom still name every member.")
    seg_of_ckpt: dict[int, int] = {}
    segments: list[list[Any]] = []
    points: dict[str, list[list[Any]]] = {}
    for seg in run.segments:
        segments.append([seg.id, seg.worker, seg.start_step, seg.end_step, hp_id(seg.hparams),
                         seg.from_checkpoint, seg.to_checkpoint, seg.status, seg.attempts])
        if seg.status == COMPLETED and seg.to_checkpoint is not None:
            seg_of_ckpt[seg.to_checkpoint] = seg.id
        pts = run.seg_points.get(seg.id, [])
        if pts:
            kept = _thin(list(range(len(pts))), stride)
            points[str(seg.id)] = _columns([pts[i] for i in kept], run.extra_names,
                                           _pick(run.seg_extra.get(seg.id), kept))
    best_curve: list[list[Any]] = [[], []]
    if run.best is not None:
        curve = run.current_curve(run.best)
        kept = _thin(list(range(len(curve))), stride)
        extra_of = run.current_extra(run.best)
        best_curve = _columns([curve[i] for i in kept], run.extra_names,
                              [extra_of.get(curve[i][0], {}) for i in kept] if extra_of else None)

    # Schedules along each worker's lineage: [start, end, hparams id, writer].
    schedules: dict[str, list[list[int]]] = {}
    n_pieces = 0
    for w in sorted(run.workers.values(), key=lambda w: (w.id != run.best, w.id)):
        if n_pieces > MAX_SCHEDULE_PIECES and w.id != run.best:
            notes.append(f"Schedules show {len(schedules)} of {len(run.workers)} workers.")
            break
        pieces = run.schedule(w.id)
        n_pieces += len(pieces)
        schedules[str(w.id)] = [[p.start_step, p.end_step, hp_id(p.hparams), p.worker]
                                for p in pieces]

    hp_keys = [{"key": k, "log": _use_log(run, k, hp_table)} for k in _numeric_keys(run)]

    return {
        "hparams": hp_table,
        "hp_keys": hp_keys,
        "segments": segments,
        "points": points,
        "best_curve": best_curve,
        "extra_metrics": run.extra_names,
        "best_lineage": run.best_lineage_checkpoints(),
        "schedules": schedules,
        "graph": _graph(run, seg_of_ckpt, notes),
        "lineage": _lineage_rows(run, notes),
        "evaluations": _evaluations(run),
        "transfers": _transfers(run),
        "failures": _failures(run),
        "compute": run.compute_split(),
        "final": {str(w): _finite_or_none(v) for w, v in run.finals.items()},
        "settings": _settings(run),
        "subpops": run.subpops(),
        "is_fire": run.is_fire,
        "reasons": dict(Counter(str(e.info.get("reason")) for e in run.events
                                if e.kind == "stop_evaluator")),
        "notes": notes,
    }


def _graph(run: RunData, seg_of_ckpt: Mapping[int, int], notes: list[str]) -> dict[str, Any]:
    """Lineage graph: a node per completed segment (x = its end step, y = its worker), an edge
    from the checkpoint it trained from. Edges between workers are exploits, transfers,
    replacements or evaluator starts, labelled with the donor and checkpoint version."""
    kind_of: dict[tuple[int, int], EventRecord] = {}
    for e in run.events:
        if e.donor_checkpoint is not None and e.kind in (*LINEAGE_KINDS, "start_evaluator"):
            kind_of[(e.worker, e.donor_checkpoint)] = e
    ckpts = [c for c in run.checkpoints.values() if c.id in seg_of_ckpt]
    if len(ckpts) > MAX_GRAPH_NODES:
        keep = set(run.best_lineage_checkpoints())
        for c in sorted(ckpts, key=lambda c: -c.id):
            if len(keep) >= MAX_GRAPH_NODES:
                break
            keep.add(c.id)
        notes.append(f"The lineage graph shows {len(keep):,} of {len(ckpts):,} checkpoints: "
                     "the best lineage and the most recent others.")
        ckpts = [c for c in ckpts if c.id in keep]
    nodes = []
    for c in sorted(ckpts, key=lambda c: c.id):
        last = run.last_point(c.id)
        parent = run.checkpoints.get(c.parent) if c.parent is not None else None
        edge = None
        if parent is not None and parent.worker != c.worker:
            ev = kind_of.get((c.worker, parent.id))
            edge = ev.kind if ev is not None else "handoff"
        nodes.append({
            "ckpt": c.id, "seg": seg_of_ckpt[c.id], "worker": c.worker, "step": c.step,
            "parent": c.parent, "parent_worker": None if parent is None else parent.worker,
            "parent_step": None if parent is None else parent.step, "edge": edge,
            "metric": None if last is None else last[1], "hparams": flatten(c.hparams),
            "deleted": c.deleted,
        })
    return {"nodes": nodes}


def _lineage_rows(run: RunData, notes: list[str]) -> list[dict[str, Any]]:
    events = [e for e in run.events if e.kind in LINEAGE_KINDS]
    on_best = run.best_lineage_handoffs()

    def is_best(e: EventRecord) -> bool:
        return e.donor_checkpoint is not None and (e.worker, e.donor_checkpoint) in on_best

    if len(events) > MAX_EVENT_ROWS:
        keep = {e.id for e in events if is_best(e)}
        for e in reversed(events):
            if len(keep) >= MAX_EVENT_ROWS:
                break
            keep.add(e.id)
        notes.append(f"The lineage table shows {len(keep)} of {len(events)} events: every "
                     "event on the best lineage and the most recent others.")
        events = [e for e in events if e.id in keep]
    return [{
        "id": e.id, "step": e.step, "kind": e.kind, "worker": e.worker, "donor": e.donor,
        "donor_checkpoint": e.donor_checkpoint, "changes": changes_text(e.old_hparams,
                                                                        e.new_hparams),
        "p_value": _num(e.info.get("p_value")), "delta": _num(e.info.get("delta")),
        "evaluator": e.info.get("evaluator"), "best": is_best(e),
    } for e in events]


def _evaluations(run: RunData) -> dict[str, Any]:
    """Start/stop spans per evaluator on a time axis (wall time since the first event; the
    event number if the clock never moved, as in a simulated run)."""
    evs = [e for e in run.events if e.kind in ("start_evaluator", "stop_evaluator")]
    times = [e.time for e in run.events]
    by_time = bool(times) and max(times) > min(times)
    t0 = min(times) if by_time else 0.0

    def at(e: EventRecord) -> float:
        return e.time - t0 if by_time else float(e.id)

    open_: dict[int, EventRecord] = {}
    spans: list[dict[str, Any]] = []
    for e in evs:
        if e.kind == "start_evaluator":
            open_[e.worker] = e
        elif e.worker in open_:
            s = open_.pop(e.worker)
            spans.append({"evaluator": e.worker, "start": at(s), "stop": at(e),
                          "reason": str(e.info.get("reason", "?")), "parent": s.donor,
                          "child": s.info.get("child"), "p_value": _num(e.info.get("p_value")),
                          "delta": _num(e.info.get("delta"))})
    end = max((at(e) for e in run.events), default=0.0)
    for w, s in open_.items():
        spans.append({"evaluator": w, "start": at(s), "stop": end, "reason": "running",
                      "parent": s.donor, "child": s.info.get("child"), "p_value": None,
                      "delta": None})
    return {"spans": spans, "axis": "wall time since start (s)" if by_time else "event number",
            "evaluators": sorted(w.id for w in run.evaluators())}


def _transfers(run: RunData) -> list[dict[str, Any]]:
    return [{"step": e.step, "parent": e.donor, "evaluator": e.info.get("evaluator"),
             "child": e.worker, "checkpoint": e.donor_checkpoint,
             "p_value": _num(e.info.get("p_value")), "delta": _num(e.info.get("delta"))}
            for e in run.events if e.kind == "transfer"][-MAX_EVENT_ROWS:]


def _failures(run: RunData) -> list[dict[str, Any]]:
    """Every failed attempt (``failure`` events) and outcome (``failed``, ``replace``), with the
    segment it belongs to and the full error text (the traceback when the executor kept it)."""
    seg_by_id = {s.id: s for s in run.segments}
    seg_at: dict[tuple[int, int], SegmentRecord] = {}
    for s in run.segments:
        seg_at[(s.worker, s.start_step)] = s  # the latest segment starting there
    rows = []
    for e in run.events:
        if e.kind not in FAILURE_KINDS or (e.kind == "replace" and "error" not in e.info):
            continue
        # failure/failed events carry the failed segment's start step; a replacement carries
        # the donor's step, which names no segment of this worker.
        seg = seg_at.get((e.worker, e.step)) if e.kind != "replace" else None
        if isinstance(e.info.get("segment"), int) and e.info["segment"] in seg_by_id:
            seg = seg_by_id[e.info["segment"]]  # newer stores name the segment
        error = str(e.info.get("error") or (seg.error if seg is not None else "") or "")
        rows.append({
            "time": e.time, "kind": e.kind, "worker": e.worker, "step": e.step,
            "segment": seg.id if seg is not None else None,
            "attempt": e.info.get("attempt"), "donor": e.donor,
            "exception": _last_line(error), "error": error,
        })
    logged = {(r["worker"], r["segment"]) for r in rows}
    for s in run.segments:  # a failed segment whose events were lost still shows
        if s.status == SEG_FAILED and (s.worker, s.id) not in logged:
            rows.append({"time": None, "kind": "failed segment", "worker": s.worker,
                         "step": s.start_step, "segment": s.id, "attempt": s.attempts,
                         "donor": None, "exception": _last_line(s.error or ""),
                         "error": s.error or ""})
    return rows[-MAX_EVENT_ROWS:]


def _settings(run: RunData) -> list[list[str]]:
    rows: list[list[str]] = [["task", run.task], ["store", run.url]]
    for prefix, d in (("algorithm", run.algorithm), ("config", run.config)):
        rows += [[f"{prefix}.{k}", fmt(v)] for k, v in flatten(d).items()]
    if run.space is not None:
        for key, dist in run.space.distributions().items():
            rows.append([f"space.{key}", _dist_text(dist.to_json())])
    members = run.members()
    sizes = Counter(w.subpop for w in members)
    rows.append(["population", f"{len(members)} members ("
                 + ", ".join(f"P{k}: {sizes[k]}" for k in sorted(sizes))
                 + f"), {len(run.evaluators())} evaluators"])
    return rows


def _dist_text(d: Mapping[str, Any]) -> str:
    kind = d.get("type", "?")
    rest = ", ".join(f"{k}={fmt(v)}" for k, v in d.items() if k != "type")
    return f"{kind}({rest})"


# --------------------------------------------------------------------------------------------
# Helpers


def _pick(seq: Sequence[Any] | None, indices: Sequence[int]) -> list[Any] | None:
    return None if seq is None else [seq[i] for i in indices]


def _columns(pts: Sequence[Point], names: Sequence[str],
             extra: Sequence[Mapping[str, float | None]] | None) -> list[list[Any]]:
    """Points as columns: [steps, fitness values, then one list per name of ``names``].

    Without ``extra`` (the task returned one number) only the first two: the page reads a
    missing column as no values, which keeps a plain run's payload as small as it was.
    """
    cols: list[list[Any]] = [[s for s, _ in pts], [v for _, v in pts]]
    if extra is not None:
        cols += [[_num(x.get(name)) for x in extra] for name in names]
    return cols


def _thin(points: Sequence[Any], stride: int) -> list[Any]:
    """Every ``stride``-th point and the last one (a segment's end is where its weights went)."""
    if stride <= 1 or len(points) <= 2:
        return list(points)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _numeric_keys(run: RunData) -> list[str]:
    """Dotted hyperparameter keys that are tunable numbers."""
    keys: set[str] = set()
    if run.space is not None:
        for key, dist in run.space.distributions().items():
            if isinstance(dist, Uniform | LogUniform | Int) or (
                isinstance(dist, Ordered) and all(_num(v) is not None for v in dist.values)
            ):
                keys.add(key)
    else:
        for w in run.members():
            keys |= {k for k, v in flatten(w.hparams).items() if _num(v) is not None}
    return sorted(keys)


def _use_log(run: RunData, key: str, table: Sequence[Mapping[str, Any]]) -> bool:
    """A log axis where the space is log-uniform, or the values span more than a decade."""
    dist = run.space.distributions().get(key) if run.space is not None else None
    if isinstance(dist, LogUniform) or (isinstance(dist, Int) and bool(dist.log)):
        return True
    values = [v for v in (_num(hp.get(key)) for hp in table) if v is not None]
    return spans_decade(values)


def spans_decade(values: Sequence[float]) -> bool:
    """Positive values whose largest is more than 10 times the smallest."""
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
    return out


def changes_text(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """``key: old → new`` for the keys that changed (all keys when there is no old value)."""
    if new is None:
        return "-"
    flat_new = flatten(new)
    if old is None:
        return ", ".join(f"{k}={fmt(v)}" for k, v in flat_new.items())
    flat_old = flatten(old)
    changed = [k for k in flat_new if flat_old.get(k) != flat_new[k]]
    if not changed:
        return "unchanged"
    return "; ".join(f"{k}: {fmt(flat_old.get(k))} → {fmt(flat_new[k])}" for k in changed)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""
