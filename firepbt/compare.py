"""``compare()`` / ``firepbt compare``: does FIRE PBT help on *my* task?

Runs every method (FIRE PBT, PBT, random search) on the user's task at equal worker budget
(``workers`` members + evaluators each, so equal worker-steps at most), for several seeds, plus
fixed-schedule baselines (``firepbt.schedules``), then writes ``compare.json`` and
``compare.html`` into the output folder. Each (method, seed) run has its own store there and
each baseline run its own JSON file, so a comparison stopped by Ctrl-C or a kill resumes where
it stopped: finished runs are never redone.

Per method the summary holds mean, standard deviation, median and per-seed values, one-sided
Mann-Whitney p-values that it beats each other method, how many seeds it won, the learned
schedule of its median seed, and wall time and worker-steps per run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from firepbt.algorithms import PBT, Algorithm, RandomSearch
from firepbt.api import run, task_attribute, task_ref_of
from firepbt.controller import differences
from firepbt.errors import ConfigError, RunFailed
from firepbt.importing import load_object
from firepbt.result import Result
from firepbt.schedules import Schedule, parse_schedule
from firepbt.space import LogUniform, Space
from firepbt.store import open_store
from firepbt.store.base import COMPLETED
from firepbt.trainable import Metric, as_metric, make_trainable_class, pick_metric

METHODS: dict[str, Callable[[int], Algorithm]] = {
    "fire": lambda w: _fire(w),
    "pbt": lambda w: PBT(population=w),
    "pb2": lambda w: _pb2(w),
    "random": lambda w: RandomSearch(population=w),
}
LABELS = {"fire": "FIRE PBT", "pbt": "PBT", "pb2": "PB2", "random": "random search"}


def _pb2(workers: int) -> Algorithm:
    from firepbt.algorithms.pb2 import PB2

    return PB2(population=workers)


def _fire(workers: int) -> Algorithm:
    from firepbt.algorithms.fire import FirePBT

    return FirePBT(population=workers)


def compare(
    task: str,
    *,
    methods: Sequence[str] = ("fire", "pbt", "random"),
    seeds: int = 10,
    workers: int = 22,
    baselines: Sequence[str] = (),
    out: str | Path = "runs/compare",
    space: Space | None = None,
    steps: int | None = None,
    interval: int | None = None,
    eval_every: int | None = None,
    processes: int = 2,
    executor: str = "process",
    mode: str = "async",
    metric: str | Metric | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare methods and fixed schedules on ``task``; returns what ``compare.json`` holds.

    Args:
        task: ``file.py:Name``, ``module:Name`` or a built-in task name.
        methods: among ``fire``, ``pbt``, ``pb2``, ``random``.
        seeds: seeds 0..seeds-1 for every method and baseline.
        workers: each method's worker budget (FIRE: members + evaluators).
        baselines: fixed schedules, e.g. ``"lr=cosine(0.1)"`` (see ``firepbt.schedules``).
        out: the folder for the stores, ``compare.json`` and ``compare.html``.
        space, steps, interval, eval_every, metric: as for :func:`firepbt.run` (task defaults).
        processes: worker processes per run; executor, mode: as for :func:`firepbt.run`.
        log: called with one line per finished run (default: print to stderr).

    Raises:
        ConfigError: bad settings (before anything runs), or ``out`` holds a comparison with
            other settings.
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods={list(methods)!r}: each must be one of {', '.join(METHODS)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r}: must be an int >= 1")
    if not isinstance(workers, int) or workers < 2:
        raise ConfigError(f"workers={workers!r}: must be an int >= 2 (the worker budget)")
    ref = task_ref_of(task)
    assert ref is not None
    obj = load_object(ref)
    space = space if space is not None else task_attribute(obj, "SPACE")
    if not isinstance(space, Space):
        raise ConfigError(f"task {task!r} has no search space: define SPACE or pass --space")
    defaults = dict(task_attribute(obj, "DEFAULTS") or {})
    steps = steps if steps is not None else defaults.get("steps")
    interval = interval if interval is not None else defaults.get("interval")
    eval_every = eval_every if eval_every is not None else defaults.get("eval_every")
    if steps is None or interval is None:
        raise ConfigError(f"task {task!r} has no DEFAULTS for steps/interval: pass them")
    spec = Metric.of(metric if metric is not None else task_attribute(obj, "METRIC"))
    schedules = [parse_schedule(text, space) for text in baselines]
    algorithms = {m: METHODS[m](workers) for m in methods}
    every = eval_every or max(1, interval // 10)
    for alg in algorithms.values():
        alg.validate(interval, every, steps)

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plan = {
        "task": ref, "space": space.to_json(), "methods": list(methods), "workers": workers,
        "baselines": list(baselines), "steps": steps, "interval": interval,
        "eval_every": every, "metric": spec.to_json(), "mode": mode,
    }
    _check_plan(folder, plan)
    jobs = [(m, s) for s in range(seeds) for m in methods]
    jobs += [(f"baseline:{i}", s) for s in range(seeds) for i in range(len(schedules))]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    runs.update({f"baseline:{i}": [] for i in range(len(schedules))})
    started, fresh = time.monotonic(), 0
    for n, (method, seed) in enumerate(jobs, 1):
        t0 = time.monotonic()
        if method.startswith("baseline:"):
            sched = schedules[int(method.split(":")[1])]
            record, done = _baseline_run(folder, method, sched, obj, steps, every, seed, spec)
        else:
            record, done = _method_run(folder, method, seed, ref, space, algorithms[method],
                                       steps, interval, every, processes, executor, mode, spec)
        runs[method].append(record)
        fresh += 0 if done else 1
        value = "failed" if record["value"] is None else f"{record['value']:.6g}"
        eta = ""
        if fresh and n < len(jobs):
            per_run = (time.monotonic() - started) / fresh
            eta = f", about {per_run * (len(jobs) - n) / 60:.1f} min left"
        state = "done before" if done else f"{time.monotonic() - t0:.1f} s"
        say(f"[{n}/{len(jobs)}] {_label(method, schedules)} seed {seed}: {spec.name} {value} "
            f"({state}{eta})")

    summary = _summarise(plan, runs, schedules, spec)
    _write_atomic(folder / "compare.json", json.dumps(summary, indent=1, default=_json_default))
    (folder / "compare.html").write_text(_html(summary, space))
    say(f"comparison: {folder / 'compare.html'} and {folder / 'compare.json'}")
    return summary


# -- runs ------------------------------------------------------------------------------------


def _method_run(folder: Path, method: str, seed: int, ref: str, space: Space, alg: Algorithm,
                steps: int, interval: int, every: int, processes: int, executor: str,
                mode: str, spec: Metric) -> tuple[dict[str, Any], bool]:
    path = folder / f"{method}-s{seed}.db"
    done = path.exists() and _status(path) in ("finished", "failed")
    error = None
    if not done:
        try:
            run(ref, space=space, algorithm=alg, steps=steps, interval=interval,
                eval_every=every, store=str(path), workers=processes, executor=executor,
                mode=mode, seed=seed, metric=spec)
        except RunFailed as exc:
            error = str(exc).splitlines()[0]
    st = open_store(str(path))
    try:
        res = Result(st)
        best = res.best
        created = float(res.experiment.get("created", 0.0))
        times = [m.time for m in st.metrics()]
        worker_steps = sum(s.end_step - s.start_step for s in st.segments(status=COMPLETED))
        schedule = ([[p.start_step, p.end_step, p.hparams] for p in res.schedule(best)]
                    if best is not None else [])
        return {
            "seed": seed, "value": res.best_metric, "store": str(path), "error": error,
            "wall_s": round(max(times) - created, 3) if times else 0.0,
            "worker_steps": worker_steps, "schedule": schedule,
        }, done
    finally:
        st.close()


def _status(path: Path) -> str:
    st = open_store(str(path))
    try:
        return str(st.get_state("status", ""))
    finally:
        st.close()


def _baseline_run(folder: Path, method: str, sched: Schedule, obj: Any, steps: int,
                  every: int, seed: int, spec: Metric) -> tuple[dict[str, Any], bool]:
    """One fixed-schedule run in this process; hyperparameters are set every curve point."""
    path = folder / f"baseline-{method.split(':')[1]}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text()), True
    t0 = time.perf_counter()
    trainable = make_trainable_class(obj)()
    trainable.setup(sched.values(0.0), seed)
    value, step, schedule = None, 0, []
    record: dict[str, Any]
    try:
        while step < steps:
            n = min(every, steps - step)
            hparams = sched.values(step / steps)
            trainable.set_hparams(hparams)
            schedule.append([step, step + n, hparams])
            trainable.train(n)
            step += n
            value = as_metric(pick_metric(trainable.evaluate(), spec.name))
    except Exception as exc:  # noqa: BLE001 - a failed baseline is a result, shown as such
        record = {"seed": seed, "value": None, "error": f"{type(exc).__name__}: {exc}"}
    else:
        record = {"seed": seed, "value": value, "error": None}
    record.update(wall_s=round(time.perf_counter() - t0, 3), worker_steps=step,
                  schedule=schedule)
    _write_atomic(path, json.dumps(record, default=_json_default))
    return record, False


def _check_plan(folder: Path, plan: dict[str, Any]) -> None:
    """A folder holds one comparison: resuming it with other settings is refused."""
    path = folder / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(plan)):
            raise ConfigError(f"{folder} holds a comparison with other settings: "
                              f"{differences(old, plan)}; use another --out folder")
    else:
        _write_atomic(path, json.dumps(plan, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    return float(x) if isinstance(x, int | float) else str(x)


# -- summary ---------------------------------------------------------------------------------


def _label(method: str, schedules: Sequence[Schedule]) -> str:
    if method.startswith("baseline:"):
        return f"baseline {schedules[int(method.split(':')[1])].text}"
    return LABELS.get(method, method)


def _summarise(plan: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
               schedules: Sequence[Schedule], spec: Metric) -> dict[str, Any]:
    sign = spec.sign
    by_seed: dict[int, dict[str, float]] = {}
    for method, records in runs.items():
        for r in records:
            if r["value"] is not None:
                by_seed.setdefault(r["seed"], {})[method] = r["value"]
    wins = {m: 0 for m in runs}
    for seed_values in by_seed.values():
        best = max(seed_values, key=lambda m: sign * seed_values[m])
        wins[best] += 1
    table: dict[str, Any] = {}
    for method, records in runs.items():
        values = [r["value"] for r in records if r["value"] is not None]
        ordered = sorted(records, key=lambda r: (r["value"] is None, sign * (r["value"] or 0)))
        median = ordered[(len(values) - 1) // 2] if values else None
        table[method] = {
            "label": _label(method, schedules),
            "values": [r["value"] for r in records],
            "failed": sum(1 for r in records if r["value"] is None),
            "mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values) if values else None,
            "wins": wins[method],
            "wall_s_per_run": statistics.fmean(r["wall_s"] for r in records),
            "worker_steps_per_run": statistics.fmean(r["worker_steps"] for r in records),
            "median_seed": None if median is None else median["seed"],
            "median_schedule": None if median is None else median["schedule"],
        }
    for a in runs:
        table[a]["p_better_than"] = {
            b: _p_better(table[a]["values"], table[b]["values"], spec) for b in runs if b != a
        }
    return {"plan": plan, "metric": spec.describe(), "methods": table,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def better_p(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> float:
    """One-sided Mann-Whitney U p-value of "``a``'s values are better than ``b``'s".

    Small when ``a``'s values tend to be larger (``higher_is_better``) or smaller (a loss).
    """
    alternative = "greater" if higher_is_better else "less"
    return float(stats.mannwhitneyu(a, b, alternative=alternative).pvalue)


def _p_better(a: Sequence[float | None], b: Sequence[float | None], spec: Metric
              ) -> float | None:
    """:func:`better_p` over the runs that did not fail (None when either has under 2)."""
    x = [v for v in a if v is not None]
    y = [v for v in b if v is not None]
    if len(x) < 2 or len(y) < 2:
        return None
    return better_p(x, y, spec.mode == "max")


# -- page ------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.4g}"
    return html.escape(str(x))


def _html(summary: dict[str, Any], space: Space) -> str:
    table = summary["methods"]
    rows = "".join(
        f"<tr><td>{html.escape(m['label'])}</td><td>{_fmt(m['mean'])} ± {_fmt(m['sd'])}</td>"
        f"<td>{_fmt(m['median'])}</td><td>{m['wins']}</td><td>{m['failed']}</td>"
        f"<td>{_fmt(m['worker_steps_per_run'])}</td><td>{_fmt(m['wall_s_per_run'])}</td>"
        f"<td>{', '.join(_fmt(v) for v in m['values'])}</td></tr>"
        for m in table.values()
    )
    keys = list(table)
    pvals = "".join(
        f"<tr><td>{html.escape(table[a]['label'])}</td>"
        + "".join(f"<td>{_fmt(table[a]['p_better_than'].get(b))}</td>" for b in keys)
        + "</tr>" for a in keys
    )
    head = "".join(f"<th>{html.escape(table[b]['label'])}</th>" for b in keys)
    plan = summary["plan"]
    settings = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                       for k, v in plan.items() if k != "space")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>firepbt compare: {html.escape(str(plan['task']))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Does FIRE PBT help on {html.escape(str(plan['task']))}?</h1>
<p>Metric: {html.escape(summary['metric'])}. Every method had {plan['workers']} workers
(FIRE: members + evaluators); {plan['steps']} steps per member. Written {summary['date']}.</p>
<h2>Results</h2><table><tr><th>method</th><th>mean ± sd</th><th>median</th><th>wins</th>
<th>failed</th><th>worker-steps / run</th><th>wall s / run</th><th>per seed</th></tr>{rows}
</table>
<h2>p-values</h2><p>One-sided Mann-Whitney: the row's values are better than the column's.</p>
<table><tr><th></th>{head}</tr>{pvals}</table>
<h2>Learned schedule of each method's median seed</h2>{_schedule_plot(table, space)}
<h2>Settings</h2><table>{settings}</table></body></html>"""


def _schedule_plot(table: dict[str, Any], space: Space) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = space.keys()
    if not keys:
        return "<p>The space has no tuned hyperparameter.</p>"
    fig = Figure(figsize=(8, 2.6 * len(keys)))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(len(keys), 1, i + 1)
        for m in table.values():
            xs: list[float] = []
            ys: list[float] = []
            for start, end, hp in m["median_schedule"] or []:
                value = _dotted(hp, key)
                if isinstance(value, int | float):
                    xs += [start, end]
                    ys += [float(value), float(value)]
            if xs:
                ax.plot(xs, ys, label=m["label"])
        if isinstance(space.distributions()[key], LogUniform):
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.legend(fontsize="small")
    fig.axes[-1].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="schedules" src="data:image/png;base64,{data}">'


def _dotted(hp: dict[str, Any], key: str) -> Any:
    node: Any = hp
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
