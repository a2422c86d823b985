"""Self-contained HTML reports of experiments (``firepbt report STORE``).

A report is one HTML file that works offline: plots are PNGs embedded as base64 ``data:`` URIs,
the style sheet is inline, and there is no JavaScript and no external resource. It shows

* a summary table (task, algorithm and settings, budget, status, best member, counts, compute),
* the fitness curves of every member (one panel per sub-population for FIRE PBT), the best
  member's lineage bold, exploits and transfers as markers,
* the hyperparameter schedule of every member's lineage, the best one bold,
* for FIRE PBT, the evaluator timeline and the list of transfers,
* the members and the lineage events (exploits, transfers, replacements).

:func:`write_comparison` puts several runs of one task side by side.

Everything is read from the store once and the lineage queries are answered in memory, so a run
with thousands of checkpoints and events renders in about a second; per-event markers and table
rows are capped (the caption says how many are shown).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the Agg canvas is used, never pyplot: the report renders headless and does not touch the
# global backend of a user's interactive session.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from firepbt.errors import ConfigError
from firepbt.result import Result, SchedulePiece
from firepbt.space import Int, LogUniform, Ordered, Space, Uniform
from firepbt.store import open_store
from firepbt.store.base import (
    COMPLETED,
    EVALUATOR,
    MEMBER,
    CheckpointRecord,
    EventRecord,
    SegmentRecord,
    Store,
    WorkerRecord,
)

__all__ = ["write_comparison", "write_report"]

LINEAGE_KINDS = ("exploit", "transfer", "replace")
MAX_MARKERS = 300  # exploit/transfer markers per panel; more would hide the curves
MAX_TABLE_ROWS = 300  # rows of the lineage and transfer tables
MAX_MEMBER_ROWS = 200
MAX_HPARAM_PANELS = 12
DPI = 100

Point = tuple[int, float | None]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr.best td { font-weight: bold; background: #fff8e0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
p.note { color: #666; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.2em; }
nav ul { columns: 2; }
"""

# Evaluator stop reasons in the timeline; unknown reasons get the leftover colours.
_REASON_COLOURS = {
    "success": "#2ca02c",
    "failed": "#d62728",
    "end": "#7f7f7f",
    "running": "#bcbd22",
}
_SPARE_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


# --------------------------------------------------------------------------------------------
# Public API


def write_report(store: Store | str, out: str | Path | None = None) -> Path:
    """Write the HTML report of one experiment.

    Args:
        store: An open store, or a store URL/path (``runs/x.db``, ``sqlite:///runs/x.db``).
            A store opened here is closed again; one passed in is left open.
        out: Where to write; by default next to the store file (``runs/x.db`` ->
            ``runs/x.html``).

    Returns:
        The path written.

    Raises:
        ConfigError: The store holds no experiment, or ``out`` is None for a store without a
            file (``memory://``).
        StoreError: The store cannot be opened.
    """
    with _opened(store) as st:
        path = Path(out) if out is not None else _default_out(st)
        run = _RunData.load(st)
        title = f"firepbt report: {run.task}"
        body = f"<h1>{_e(title)}</h1>\n<p class='note'>Store <code>{_e(st.url)}</code></p>\n"
        body += _run_body(run, level=2)
    return _write(path, title, body)


def write_comparison(
    stores: Mapping[str, Store | str],
    out: str | Path,
    title: str = "firepbt comparison",
) -> Path:
    """Write one HTML page comparing several runs of one task.

    The page has a table of each run's best member and its final metric, the best lineage's
    metric curve of every run on one plot, the best lineage's schedule of every numeric
    hyperparameter with one line per run, then a section per run with its own report.

    Args:
        stores: Label -> store (or store URL/path), e.g. ``{"FIRE PBT": "runs/fire.db",
            "PBT": "runs/pbt.db"}``, in the order to show them.
        out: The HTML file to write.
        title: The page title.

    Returns:
        The path written.

    Raises:
        ConfigError: ``stores`` is empty, a label is not a non-empty string, or a store holds
            no experiment.
    """
    if not stores:
        raise ConfigError("stores={}: must name at least one run to compare")
    runs: dict[str, _RunData] = {}
    for label, store in stores.items():
        if not isinstance(label, str) or not label:
            raise ConfigError(f"stores label {label!r}: must be a non-empty string")
        with _opened(store) as st:
            runs[label] = _RunData.load(st)
    parts = [f"<h1>{_e(title)}</h1>", "<nav><ul>"]
    parts += [f"<li><a href='#run-{i}'>{_e(label)}</a></li>" for i, label in enumerate(runs)]
    parts.append("</ul></nav>")
    parts.append("<h2>Final metric of each run's best member</h2>")
    parts.append(_comparison_table(runs))
    parts.append("<h2>Best lineage's metric</h2>")
    parts.append(_img(_comparison_curves(runs), "best lineage metric of every run"))
    keys = _numeric_keys_of(list(runs.values()))
    if keys:
        parts.append("<h2>Best lineage's hyperparameter schedules</h2>")
        parts.append(_img(_comparison_schedules(runs, keys), "best lineage schedules"))
    for i, (label, run) in enumerate(runs.items()):
        parts.append(f"<section id='run-{i}'><h2>{_e(label)}</h2>")
        parts.append(f"<p class='note'>Store <code>{_e(run.url)}</code></p>")
        parts.append(_run_body(run, level=3))
        parts.append("</section>")
    return _write(Path(out), title, "\n".join(parts))


# --------------------------------------------------------------------------------------------
# Reading a store once


class _opened:
    """Context manager: open a store given by URL (and close it), or pass an open one through."""

    def __init__(self, store: Store | str) -> None:
        self._given = store
        self._owned: Store | None = None

    def __enter__(self) -> Store:
        if isinstance(self._given, Store):
            return self._given
        # create=False: a typo in the path must not leave an empty store behind.
        self._owned = open_store(self._given, create=False)
        return self._owned

    def __exit__(self, *exc: object) -> None:
        if self._owned is not None:
            self._owned.close()


def _default_out(store: Store) -> Path:
    if store.url.startswith("sqlite:///"):
        return Path(store.url[len("sqlite:///") :]).with_suffix(".html")
    raise ConfigError(f"out=None: store {store.url!r} has no file to write next to; pass out=")


@dataclass
class _RunData:
    """Everything a report needs, read from the store in a handful of queries."""

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
    space: Space | None = None

    @classmethod
    def load(cls, store: Store) -> _RunData:
        exp = store.experiment()
        if exp is None:
            raise ConfigError(f"store {store.url!r}: holds no experiment to report on")
        result = Result(store)
        # The best member comes from Result so the report names the same answer as the API
        # and `firepbt status`.
        best = result.best
        run = cls(
            url=store.url,
            experiment=exp,
            status=result.status(),
            best=best,
            best_metric=result.best_metric if best is not None else None,
            workers={w.id: w for w in store.workers()},
            checkpoints={c.id: c for c in store.checkpoints(include_deleted=True)},
            segments=store.segments(),
            events=store.events(),
        )
        rows: dict[tuple[int, int], list[Point]] = defaultdict(list)
        for m in store.metrics():
            rows[(m.worker, m.segment)].append((m.step, _finite_or_none(m.value)))
        for seg in run.segments:
            # A segment's record is upserted on retry, so to_checkpoint names the attempt that
            # completed and wrote these points.
            if seg.status == COMPLETED and seg.to_checkpoint in run.checkpoints:
                run.points[seg.to_checkpoint] = rows.get((seg.worker, seg.id), [])
        try:
            run.space = Space.from_json(exp["space"])
        except (ConfigError, KeyError, TypeError):
            run.space = None  # plots then infer numeric keys from the values
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
# The body of one run's report


def _run_body(run: _RunData, level: int) -> str:
    h = f"h{level}"
    parts = [f"<{h}>Summary</{h}>", _summary_table(run)]
    parts.append(f"<{h}>Fitness curves</{h}>")
    parts.append(
        "<p class='note'>Every member's recorded metric, faint (a jump is an exploit or a "
        "transfer: the member continued from other weights); the best member's lineage bold. "
        "Markers: exploits (red) and transfers (green) at the step the weights were taken.</p>"
    )
    parts.append(_img(_fitness_figure(run), "fitness curves"))
    keys = _numeric_keys_of([run])
    parts.append(f"<{h}>Hyperparameter schedules</{h}>")
    if keys:
        shown = keys[:MAX_HPARAM_PANELS]
        if len(keys) > len(shown):
            parts.append(f"<p class='note'>Showing {len(shown)} of {len(keys)} numeric "
                         "hyperparameters.</p>")
        parts.append(
            "<p class='note'>The hyperparameters each member's current weights were trained "
            "with, along its lineage; the best member's bold.</p>"
        )
        parts.append(_img(_schedule_figure(run, shown), "hyperparameter schedules"))
    else:
        parts.append("<p class='note'>No numeric hyperparameters to plot.</p>")
    if run.is_fire:
        parts.append(f"<{h}>Evaluators</{h}>")
        parts.append(_evaluator_section(run))
    parts.append(f"<{h}>Members</{h}>")
    parts.append(_members_table(run))
    parts.append(f"<{h}>Lineage events</{h}>")
    parts.append(_lineage_table(run))
    return "\n".join(parts)


def _summary_table(run: _RunData) -> str:
    cfg = run.config
    counts = Counter(e.kind for e in run.events)
    split = run.compute_split()
    total = split[MEMBER] + split[EVALUATOR]
    members = run.members()
    sizes = Counter(w.subpop for w in members)
    population = ", ".join(f"P{k}: {sizes[k]}" for k in sorted(sizes))
    rows: list[tuple[str, str]] = [
        ("Task", run.task),
        ("Algorithm", str(run.algorithm.get("name", "?"))),
        ("Settings", _settings_text(run.algorithm)),
        ("Population", f"{len(members)} members ({population}), "
                       f"{len(run.evaluators())} evaluators"),
        ("Steps / interval / eval_every",
         f"{cfg.get('steps')} / {cfg.get('interval')} / {cfg.get('eval_every')}"),
        ("Mode, seed", f"{cfg.get('mode')}, {cfg.get('seed')}"),
        ("Status", run.status),
        ("Best member (P1)", "-" if run.best is None else f"worker {run.best}"),
        ("Best metric", _fmt(run.best_metric)),
        ("Exploits", str(counts["exploit"])),
        ("Transfers", str(counts["transfer"])),
        ("Failures", f"{counts['failure']} failed attempts, {counts['replace']} members "
                     f"replaced, {counts['failed']} members given up"),
        ("Compute (completed steps)",
         f"members {split[MEMBER]} ({_pct(split[MEMBER], total)}), "
         f"evaluators {split[EVALUATOR]} ({_pct(split[EVALUATOR], total)})"),
    ]
    if run.is_fire:
        reasons = Counter(str(e.info.get("reason")) for e in run.events
                          if e.kind == "stop_evaluator")
        rows.append(("Evaluations",
                     f"{counts['start_evaluator']} started; stopped: "
                     + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none")))
    return _table(["", ""], [[k, v] for k, v in rows], header=False)


def _settings_text(alg: Mapping[str, Any]) -> str:
    flat = _flatten({k: v for k, v in alg.items() if k != "name"})
    return ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items()) or "-"


def _members_table(run: _RunData) -> str:
    members = sorted(run.members(), key=lambda w: (w.subpop, w.id))
    fire = any("fire_fitness" in w.info for w in members)
    head = ["worker", "sub-pop", "status", "step", "final metric"]
    head += ["FIRE fitness"] if fire else []
    head += ["overwrites", "failures", "hyperparameters"]
    rows, classes = [], []
    for w in members[:MAX_MEMBER_ROWS]:
        row = [str(w.id), f"P{w.subpop}", w.status, str(w.step), _fmt(run.final_metric(w.id))]
        if fire:
            row.append(_fmt(w.info.get("fire_fitness")))
        row += [str(w.overwrites), str(w.failures), _hparams_text(w.hparams)]
        rows.append(row)
        classes.append("best" if w.id == run.best else "")
    note = ""
    if len(members) > MAX_MEMBER_ROWS:
        note = f"<p class='note'>Showing {MAX_MEMBER_ROWS} of {len(members)} members.</p>"
    return note + _table(head, rows, row_classes=classes)


def _lineage_table(run: _RunData) -> str:
    events = [e for e in run.events if e.kind in LINEAGE_KINDS]
    if not events:
        return "<p class='note'>No exploits, transfers or replacements.</p>"
    on_best = run.best_lineage_handoffs()

    def is_best(e: EventRecord) -> bool:
        return e.donor_checkpoint is not None and (e.worker, e.donor_checkpoint) in on_best

    shown = events
    note = ("<p class='note'>Oldest first. Rows in bold handed weights down the best member's "
            "lineage.</p>")
    if len(events) > MAX_TABLE_ROWS:
        keep = {e.id for e in events if is_best(e)}
        for e in reversed(events):
            if len(keep) >= MAX_TABLE_ROWS:
                break
            keep.add(e.id)
        shown = [e for e in events if e.id in keep]
        note += (f"<p class='note'>Showing {len(shown)} of {len(events)} events: every event on "
                 "the best lineage and the most recent others.</p>")
    rows, classes = [], []
    for e in shown:
        donor = "-" if e.donor is None else f"worker {e.donor}"
        if e.donor_checkpoint is not None:
            donor += f" (checkpoint {e.donor_checkpoint})"
        if e.kind == "transfer":
            what = (f"weights via evaluator {_fmt(e.info.get('evaluator'))} "
                    f"(p={_fmt(e.info.get('p_value'))}, Δ={_fmt(e.info.get('delta'))})")
        else:
            what = _changes_text(e.old_hparams, e.new_hparams)
        rows.append([str(e.step), e.kind, f"worker {e.worker}", donor, what])
        classes.append("best" if is_best(e) else "")
    head = ["step", "event", "member", "from", "hyperparameters (old → new) / details"]
    return note + _table(head, rows, row_classes=classes)


def _evaluator_section(run: _RunData) -> str:
    parts = [
        "<p class='note'>One row per evaluator: a bar from each start to its stop, coloured by "
        "the stop reason; a star marks a success (the child took the evaluator's weights).</p>",
        _img(_evaluator_figure(run), "evaluator timeline"),
    ]
    transfers = [e for e in run.events if e.kind == "transfer"]
    if not transfers:
        parts.append("<p class='note'>No transfers.</p>")
        return "\n".join(parts)
    if len(transfers) > MAX_TABLE_ROWS:
        parts.append(f"<p class='note'>Showing the last {MAX_TABLE_ROWS} of {len(transfers)} "
                     "transfers.</p>")
        transfers = transfers[-MAX_TABLE_ROWS:]
    rows = [
        [str(e.step), _worker(e.donor), _worker(e.info.get("evaluator")), _worker(e.worker),
         _fmt(e.info.get("p_value")), _fmt(e.info.get("delta"))]
        for e in transfers
    ]
    parts.append(_table(["step", "parent", "evaluator", "child", "p-value", "Δ"], rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Figures


def _fitness_figure(run: _RunData) -> Figure:
    subpops = run.subpops() or [1]
    fig = Figure(figsize=(9, 3.4 * len(subpops)), layout="constrained")
    best_sub = run.workers[run.best].subpop if run.best is not None else None
    markers: dict[str, dict[int, list[EventRecord]]] = {
        kind: defaultdict(list) for kind in ("exploit", "transfer")
    }
    for e in run.events:
        if e.kind in markers and e.worker in run.workers:
            markers[e.kind][run.workers[e.worker].subpop].append(e)
    for i, k in enumerate(subpops):
        ax = fig.add_subplot(len(subpops), 1, i + 1)
        lines, colours = [], []
        for seg in run.segments:
            w = run.workers.get(seg.worker)
            if w is None or w.role != MEMBER or w.subpop != k or seg.to_checkpoint is None:
                continue
            pts: list[Point] = list(run.points.get(seg.to_checkpoint, []))
            start = run.last_point(seg.from_checkpoint)
            if start is not None:  # joins the curve to where its weights came from
                pts.insert(0, start)
            for piece in _finite_runs(pts):
                lines.append(piece)
                colours.append(_worker_colour(seg.worker))
        if lines:
            ax.add_collection(LineCollection(lines, colors=colours, linewidths=0.8, alpha=0.35))
        if run.best is not None and k == best_sub:
            for piece in _finite_runs(run.current_curve(run.best)):
                xs, ys = zip(*piece, strict=True)
                ax.plot(xs, ys, color="black", linewidth=2.2)
            ax.plot([], [], color="black", linewidth=2.2, label=f"best: worker {run.best}")
        for kind, style in (("exploit", ("v", "#d62728")), ("transfer", ("^", "#2ca02c"))):
            evs = _cap(markers[kind][k], MAX_MARKERS)
            xy = [p for p in (run.last_point(e.donor_checkpoint) for e in evs) if p is not None]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.scatter(xs, ys, marker=style[0], s=14, color=style[1], zorder=3,
                           label=f"{kind} ({len(markers[kind][k])})")
        ax.autoscale_view()
        if not lines:
            ax.text(0.5, 0.5, "no curve points yet", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(f"P{k}" if len(subpops) > 1 else "members", loc="left", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    return fig


def _schedule_figure(run: _RunData, keys: Sequence[str]) -> Figure:
    fig = Figure(figsize=(9, 2.3 * len(keys) + 0.6), layout="constrained")
    members = run.members()
    schedules = {w.id: run.schedule(w.id) for w in members}
    multi = len(run.subpops()) > 1
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        lines, colours = [], []
        values: list[float] = []
        for w in members:
            for piece in _step_lines(schedules[w.id], key):
                lines.append(piece)
                colours.append(f"C{(w.subpop - 1) % 10}" if multi else _worker_colour(w.id))
                values += [v for _, v in piece]
        if lines:
            ax.add_collection(LineCollection(lines, colors=colours, linewidths=0.9, alpha=0.45))
        if run.best is not None:
            for piece in _step_lines(schedules.get(run.best, []), key):
                xs, ys = zip(*piece, strict=True)
                ax.plot(xs, ys, color="black", linewidth=2.2)
        if _use_log(run, key, values):
            ax.set_yscale("log")
        ax.autoscale_view()
        ax.set_ylabel(_plain_text(key), fontsize=9)
        ax.grid(alpha=0.3)
        if i == len(keys) - 1:
            ax.set_xlabel("training step")
    if multi:
        fig.legend(handles=[Patch(color=f"C{(k - 1) % 10}", label=f"P{k}")
                            for k in run.subpops()], loc="outside upper right", fontsize=8,
                   ncol=len(run.subpops()))
    return fig


@dataclass(frozen=True)
class _Evaluation:
    evaluator: int
    start: float
    stop: float | None
    reason: str


def _evaluations(run: _RunData) -> tuple[list[_Evaluation], float]:
    """Start/stop pairs per evaluator on a time axis, and the axis' end.

    The axis is wall time since the first event; if the clock did not move (a simulated run)
    the event order is used instead.
    """
    evs = [e for e in run.events if e.kind in ("start_evaluator", "stop_evaluator")]
    if not evs:
        return [], 0.0
    times = [e.time for e in run.events]
    by_time = max(times) > min(times)
    t0 = min(times) if by_time else 0.0

    def at(e: EventRecord) -> float:
        return e.time - t0 if by_time else float(e.id)

    open_: dict[int, float] = {}
    out: list[_Evaluation] = []
    for e in evs:
        if e.kind == "start_evaluator":
            open_[e.worker] = at(e)
        elif e.worker in open_:
            out.append(_Evaluation(e.worker, open_.pop(e.worker), at(e),
                                   str(e.info.get("reason", "?"))))
    end = max(at(e) for e in run.events)
    out += [_Evaluation(w, t, None, "running") for w, t in open_.items()]
    return out, end


def _evaluator_figure(run: _RunData) -> Figure:
    evaluations, end = _evaluations(run)
    rows = sorted({w.id for w in run.evaluators()} | {v.evaluator for v in evaluations})
    fig = Figure(figsize=(9, 0.8 + 0.35 * max(len(rows), 2)), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    reasons = sorted({v.reason for v in evaluations}, key=lambda r: (r not in _REASON_COLOURS, r))
    colour = {r: _REASON_COLOURS.get(r) for r in reasons}
    spare = iter(_SPARE_COLOURS * (len(reasons) // len(_SPARE_COLOURS) + 1))
    colour = {r: c if c is not None else next(spare) for r, c in colour.items()}
    row_of = {w: i for i, w in enumerate(rows)}
    groups: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for v in evaluations:
        stop = end if v.stop is None else v.stop
        groups[(v.evaluator, v.reason)].append((v.start, max(stop - v.start, 1e-9)))
    for (w, reason), spans in groups.items():
        ax.broken_barh(spans, (row_of[w] - 0.35, 0.7), facecolors=colour[reason],
                       edgecolors="white", linewidths=0.5)
    wins = [(v.stop, row_of[v.evaluator]) for v in evaluations
            if v.reason == "success" and v.stop is not None]
    if wins:
        xs, ys = zip(*wins, strict=True)
        ax.scatter(xs, ys, marker="*", s=40, color="black", zorder=3)
    ax.set_yticks(range(len(rows)), [f"evaluator {w}" for w in rows], fontsize=8)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    times = [e.time for e in run.events]
    clock = bool(times) and max(times) > min(times)
    ax.set_xlabel("wall time since start (s)" if clock else "event number")
    ax.grid(axis="x", alpha=0.3)
    if not evaluations:
        ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
    if reasons:
        n = Counter(v.reason for v in evaluations)
        fig.legend(handles=[Patch(color=colour[r], label=f"{r} ({n[r]})") for r in reasons],
                   loc="outside upper right", fontsize=8, ncol=min(len(reasons), 6))
    return fig


def _comparison_curves(runs: Mapping[str, _RunData]) -> Figure:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, run) in enumerate(runs.items()):
        if run.best is None:
            continue
        pieces = _finite_runs(run.current_curve(run.best))
        for j, piece in enumerate(pieces):
            xs, ys = zip(*piece, strict=True)
            ax.plot(xs, ys, color=f"C{i % 10}", linewidth=1.8,
                    label=_plain_text(f"{label} (worker {run.best})") if j == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("metric")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has a best member yet", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def _comparison_schedules(runs: Mapping[str, _RunData], keys: Sequence[str]) -> Figure:
    keys = keys[:MAX_HPARAM_PANELS]
    fig = Figure(figsize=(9, 2.3 * len(keys) + 0.8), layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        values: list[float] = []
        log = False
        for j, run in enumerate(runs.values()):
            if run.best is None:
                continue
            for piece in _step_lines(run.schedule(run.best), key):
                xs, ys = zip(*piece, strict=True)
                values += ys
                ax.plot(xs, ys, color=f"C{j % 10}", linewidth=1.8)
            log = log or _space_is_log(run.space, key)
        if log or _spans_decade(values):
            ax.set_yscale("log")
        ax.set_ylabel(_plain_text(key), fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training step")
    # One legend for all panels: a run missing from the first panel still gets its entry.
    fig.legend(handles=[Line2D([], [], color=f"C{j % 10}", linewidth=1.8,
                               label=_plain_text(label)) for j, label in enumerate(runs)],
               loc="outside upper right", fontsize=8, ncol=min(len(runs), 4))
    return fig


def _comparison_table(runs: Mapping[str, _RunData]) -> str:
    metrics = [r.best_metric for r in runs.values() if r.best_metric is not None]
    top = max(metrics) if metrics else None
    rows, classes = [], []
    for label, run in runs.items():
        split = run.compute_split()
        counts = Counter(e.kind for e in run.events)
        rows.append([
            label, str(run.algorithm.get("name", "?")), run.status,
            _worker(run.best), _fmt(run.best_metric), str(counts["exploit"]),
            str(counts["transfer"]), str(split[MEMBER] + split[EVALUATOR]),
        ])
        classes.append("best" if top is not None and run.best_metric == top else "")
    head = ["run", "algorithm", "status", "best member", "final metric", "exploits",
            "transfers", "training steps"]
    return _table(head, rows, row_classes=classes)


# --------------------------------------------------------------------------------------------
# Helpers


def _finite_runs(points: Sequence[tuple[int, float | None]]) -> list[list[tuple[float, float]]]:
    """Split a curve at invalid points into runs of finite points (a gap, not a fake line)."""
    out: list[list[tuple[float, float]]] = [[]]
    for s, v in points:
        if v is None or not math.isfinite(v):
            if out[-1]:
                out.append([])
        else:
            out[-1].append((float(s), float(v)))
    return [r for r in out if r]


def _step_lines(pieces: Sequence[SchedulePiece], key: str) -> list[list[tuple[float, float]]]:
    """A schedule of one hyperparameter as step-plot polylines (broken where it is not a number)."""
    points: list[tuple[int, float | None]] = []
    for p in pieces:
        v = _number(_flatten(p.hparams).get(key))
        points += [(p.start_step, v), (p.end_step, v)]
    return _finite_runs(points)


def _numeric_keys_of(runs: Sequence[_RunData]) -> list[str]:
    """Dotted hyperparameter keys that are tunable numbers in any of ``runs``."""
    keys: set[str] = set()
    for run in runs:
        if run.space is not None:
            for key, dist in run.space.distributions().items():
                if isinstance(dist, Uniform | LogUniform | Int) or (
                    isinstance(dist, Ordered) and all(_number(v) is not None for v in dist.values)
                ):
                    keys.add(key)
        else:
            for w in run.members():
                keys |= {k for k, v in _flatten(w.hparams).items() if _number(v) is not None}
    return sorted(keys)


def _use_log(run: _RunData, key: str, values: Sequence[float]) -> bool:
    return _space_is_log(run.space, key) or _spans_decade(values)


def _space_is_log(space: Space | None, key: str) -> bool:
    dist = space.distributions().get(key) if space is not None else None
    return isinstance(dist, LogUniform) or (isinstance(dist, Int) and bool(dist.log))


def _spans_decade(values: Sequence[float]) -> bool:
    """Positive values whose largest is more than 10 times the smallest."""
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _cap(items: Sequence[EventRecord], n: int) -> Sequence[EventRecord]:
    """At most about ``n`` items, evenly spread over the sequence."""
    if len(items) <= n:
        return items
    return items[:: math.ceil(len(items) / n)]


def _worker_colour(worker: int) -> str:
    return f"C{worker % 10}"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _worker(v: Any) -> str:
    return "-" if v is None else f"worker {v}"


def _pct(part: int, total: int) -> str:
    return f"{100 * part / total:.0f}%" if total else "-"


def _hparams_text(hp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in _flatten(hp).items())


def _changes_text(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """``key: old → new`` for the keys that changed (all keys when there is no old value)."""
    if new is None:
        return "-"
    flat_new = _flatten(new)
    if old is None:
        return _hparams_text(new)
    flat_old = _flatten(old)
    changed = [k for k in flat_new if flat_old.get(k) != flat_new[k]]
    if not changed:
        return "unchanged"
    return "; ".join(f"{k}: {_fmt(flat_old.get(k))} → {_fmt(flat_new[k])}" for k in changed)


def _plain_text(text: str) -> str:
    """Text for a matplotlib label: a ``$`` in a user's name must not start mathtext."""
    return text.replace("$", r"\$")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    header: bool = True,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; every cell is escaped here, so callers pass plain text."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        attr = f" class='{_e(cls)}'" if cls else ""
        cells = "".join(
            f"<th>{_e(c)}</th>" if not header and j == 0 else f"<td>{_e(c)}</td>"
            for j, c in enumerate(row)
        )
        out.append(f"<tr{attr}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(fig: Figure, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{_png(fig)}'>"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    # No Software tag: the bytes then depend only on the data, not the matplotlib install.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write(path: Path, title: str, body: str) -> Path:
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a reader never sees half a page.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
