"""``compare()`` / ``firepbt compare``: does FIRE PBT help on *my* task?

Runs every method (FIRE PBT, PBT, random search) on the user's task at equal worker budget
(``workers`` members + evaluators each, so equal worker-steps at most), for several seeds, plus
fixed-schedule baselines (``firepbt.schedules``), then writes ``compare.json`` and
``compare.html`` into the output folder. Each (method, seed) run has its own store there and
each baseline run its own JSON file, so a comparison stopped by Ctrl-C or a kill resumes where
it stopped: finished runs are never redone.

Per method the summary holds mean, standard deviation, median, min, max and per-seed values,
one-sided Mann-Whitney p-values that it beats each other method, how many seeds it won, the
learned schedule and curve of its median seed, wall time and worker-steps per run, and per
run the exploits, FIRE's transfers and evaluator stops, and the area under the answer's curve.

The same code runs the project's benchmarks (``firepbt bench toys|nqm|...``, presets in
``firepbt.bench.presets``), which is why it also takes: rows that are variants of a method
(:class:`Method`: FIRE with i.i.d. initial hyperparameters, PBT ranking at the latest value,
a row on its own executor or mode), baselines whose peak is tuned on a grid first
(``"lr=cosine({peak})"`` with ``peaks`` and ``tuning_seeds``), a held-out measurement of each
answer (``test``), and several runs at a time (``jobs``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from firepbt.algorithms import PBT, Algorithm, RandomSearch, algorithm_from_config
from firepbt.api import EXECUTORS, run, task_attribute, task_ref_of
from firepbt.controller import differences
from firepbt.errors import ConfigError, RunFailed
from firepbt.importing import load_object
from firepbt.result import Result
from firepbt.schedules import Schedule, parse_schedule
from firepbt.space import LogUniform, Space
from firepbt.storage.local import write_atomically
from firepbt.store import open_store
from firepbt.store.base import COMPLETED, EVALUATOR
from firepbt.trainable import Metric, as_metric, make_trainable_class, pick_metric

METHODS: dict[str, Callable[[int], Algorithm]] = {
    "fire": lambda w: _fire(w),
    "pbt": lambda w: PBT(population=w),
    "pb2": lambda w: _pb2(w),
    "random": lambda w: RandomSearch(population=w),
}
LABELS = {"fire": "FIRE PBT", "pbt": "PBT", "pb2": "PB2", "random": "random search"}
PEAK = "{peak}"  # the placeholder of a baseline whose peak is tuned on a grid
# {peak} or {peak*K}: K times the grid's value, for a baseline on another scale (Schedule-Free
# SGD takes about ten times SGD's learning rate) tuned on the same grid and tuning runs.
_PEAK = re.compile(r"\{peak(?:\*([0-9]*\.?[0-9]+))?\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _pb2(workers: int) -> Algorithm:
    from firepbt.algorithms.pb2 import PB2

    return PB2(population=workers)


def _fire(workers: int) -> Algorithm:
    from firepbt.algorithms.fire import FirePBT

    return FirePBT(population=workers)


@dataclass(frozen=True)
class Method:
    """One row of a comparison: a named algorithm, and how its runs differ from the others'.

    The names in :data:`METHODS` are the usual rows; a ``Method`` adds a variant (FIRE with
    i.i.d. initial hyperparameters, PBT ranking at the latest value, the same FIRE on process
    workers in async mode, ...) without a second harness.

    Attributes:
        name: the row's key; its runs are stored as ``{name}-s{seed}.db``.
        algorithm: the algorithm for the comparison's worker budget.
        label: shown in tables (default: the name).
        task: this row's task instead of the comparison's (e.g. one whose members start
            anywhere in the space: random search never explores, so a narrow start would
            only measure one corner). It must have the same search space.
        executor, mode, processes: this row's, instead of the comparison's.
    """

    name: str
    algorithm: Callable[[int], Algorithm]
    label: str | None = None
    task: str | None = None
    executor: str | None = None
    mode: str | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"method name {self.name!r}: must match {_NAME.pattern} (it "
                              "names the run's store file)")

    def describe(self, workers: int) -> dict[str, Any]:
        """What the plan records: the algorithm's settings and every override."""
        out: dict[str, Any] = {"name": self.name,
                               "algorithm": self.algorithm(workers).to_config()}
        for key in ("task", "executor", "mode", "processes"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def method_of(spec: str | Method) -> Method:
    """A :class:`Method` for a name of :data:`METHODS` (or the method itself)."""
    if isinstance(spec, Method):
        return spec
    if spec not in METHODS:
        raise ConfigError(f"method {spec!r}: must be one of {', '.join(METHODS)} (or a "
                          "firepbt.compare.Method)")
    return Method(spec, METHODS[spec], LABELS[spec])


def compare(
    task: str,
    *,
    methods: Sequence[str | Method] = ("fire", "pbt", "random"),
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
    peaks: Sequence[float] = (),
    tuning_seeds: Sequence[int] = (),
    schedule_every: int | None = None,
    test: str | None = None,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare methods and fixed schedules on ``task``; returns what ``compare.json`` holds.

    Args:
        task: ``file.py:Name``, ``module:Name`` or a built-in task name.
        methods: names among ``fire``, ``pbt``, ``pb2``, ``random``, or :class:`Method` rows.
        seeds: seeds 0..seeds-1 for every method and baseline.
        workers: each method's worker budget (FIRE: members + evaluators).
        baselines: fixed schedules, e.g. ``"lr=cosine(0.1)"`` (see ``firepbt.schedules``).
            A baseline holding ``{peak}`` (``"lr=step({peak}, 0.1, 0.5, 0.75)"``) is tuned
            first: every value of ``peaks`` runs on every seed of ``tuning_seeds``, the best
            mean wins, and that tuning compute is reported. ``{peak*10}`` stands for ten
            times the grid's value (a baseline on another scale, tuned on the same grid).
        out: the folder for the stores, ``compare.json`` and ``compare.html``.
        space, steps, interval, eval_every, metric: as for :func:`firepbt.run` (task defaults).
        processes: worker processes per run; executor, mode: as for :func:`firepbt.run`.
        peaks, tuning_seeds: the grid and the seeds of tuned baselines (keep the tuning seeds
            apart from 0..seeds-1, or the baseline is tuned on its test seeds).
        schedule_every: steps between a baseline's hyperparameter updates (default: every
            curve point); 1 follows the schedule step by step.
        test: the name of a method of the task (e.g. ``"test_accuracy"``) that measures each
            answer on held-out data, once, at the end: the answer's final weights are loaded
            into a fresh member first. Reported beside the metric, never used to choose.
        jobs: runs trained at the same time (a fork pool; 1: one after the other here).
        log: called with one line per finished run (default: print to stderr).

    Raises:
        ConfigError: bad settings (before anything runs), or ``out`` holds a comparison with
            other settings.
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if not methods:
        raise ConfigError("methods=[]: give at least one of " + ", ".join(METHODS))
    rows = [method_of(m) for m in methods]
    names = [m.name for m in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods={names!r}: each name must appear once")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r}: must be an int >= 1")
    if not isinstance(workers, int) or workers < 2:
        raise ConfigError(f"workers={workers!r}: must be an int >= 2 (the worker budget)")
    for m in rows:
        kind, how = m.executor or executor, m.mode or mode
        if kind not in (*EXECUTORS, "batched"):
            raise ConfigError(f"method {m.name!r}: executor={kind!r}: must be one of "
                              f"{', '.join(EXECUTORS)}, batched")
        if how not in ("async", "sync"):
            raise ConfigError(f"method {m.name!r}: mode={how!r}: must be async or sync")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}: must be an int >= 1 (runs at the same time)")
    if schedule_every is not None and (not isinstance(schedule_every, int) or schedule_every < 1):
        raise ConfigError(f"schedule_every={schedule_every!r}: must be an int >= 1")
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
    tuned = [text for text in baselines if _tuned(text)]
    if tuned and (not peaks or not tuning_seeds):
        raise ConfigError(f"baseline {tuned[0]!r} has {PEAK}: pass peaks= (the grid) and "
                          "tuning_seeds= (seeds apart from the test seeds 0..seeds-1)")
    # Every baseline is parsed (each tuned one at every peak) before anything runs.
    for text in baselines:
        for peak in (peaks if _tuned(text) else [None]):
            parse_schedule(_at(text, peak), space)
    if test is not None and not callable(getattr(make_trainable_class(obj), test, None)):
        raise ConfigError(f"test={test!r}: task {task!r} has no method {test!r} to measure "
                          "an answer on held-out data")
    algorithms = {m.name: m.algorithm(workers) for m in rows}
    every = eval_every or max(1, interval // 10)
    for alg in algorithms.values():
        alg.validate(interval, every, steps)
    for m in rows:
        if m.task is not None:
            other = task_attribute(load_object(task_ref_of(m.task) or m.task), "SPACE")
            if space.to_json() != getattr(other, "to_json", lambda: None)():
                raise ConfigError(f"method {m.name!r}: its task {m.task!r} must have the "
                                  f"comparison's search space {space.to_json()}")

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {
        "task": ref, "space": space.to_json(),
        "methods": [m.name if not isinstance(methods[i], Method) else m.describe(workers)
                    for i, m in enumerate(rows)],
        "workers": workers, "baselines": list(baselines), "steps": steps, "interval": interval,
        "eval_every": every, "metric": spec.to_json(), "mode": mode,
    }
    # Settings that an older plan.json does not have join the plan only when used, so that
    # comparisons started before them still resume.
    extra = {"peaks": list(peaks) if tuned else None,
             "tuning_seeds": list(tuning_seeds) if tuned else None,
             "schedule_every": schedule_every, "test": test}
    plan.update({k: v for k, v in extra.items() if v is not None})
    _check_plan(folder, plan)
    ctx = _Context(folder, ref, space, steps, interval, every, spec, schedule_every or every,
                   test)

    # Tuned baselines first: their winning peak decides what the test seeds run.
    chosen: dict[int, dict[str, Any]] = {}
    if tuned:
        tuning_jobs = [("tune", i, p, s) for i, text in enumerate(baselines) if _tuned(text)
                       for p in peaks for s in tuning_seeds]
        done = _run_jobs(ctx, tuning_jobs, baselines, rows, algorithms, processes, executor,
                         mode, jobs, lambda *a: None)
        for i, text in enumerate(baselines):
            if _tuned(text):
                chosen[i] = _choose_peak(text, peaks, tuning_seeds, done[f"baseline:{i}"],
                                         spec, steps)
                say(f"baseline {text}: peak {chosen[i]['peak']:.4g} (mean {spec.name} "
                    f"{chosen[i]['tuning'][_peak_key(chosen[i]['peak'])]:.6g} on tuning "
                    f"seeds {list(tuning_seeds)})")
    texts = [_at(t, chosen[i]["peak"]) if i in chosen else t for i, t in enumerate(baselines)]

    main_jobs: list[tuple[Any, ...]] = [("method", m.name, None, s)
                                        for s in range(seeds) for m in rows]
    main_jobs += [("baseline", i, None, s) for s in range(seeds) for i in range(len(texts))]
    labels = {m.name: m.label or m.name for m in rows}
    labels.update({f"baseline:{i}": f"baseline {t}" for i, t in enumerate(texts)})
    started, fresh, total = time.monotonic(), 0, len(main_jobs)

    def progress(n: int, out_: dict[str, Any]) -> None:
        nonlocal fresh
        fresh += 0 if out_["done"] else 1
        record = out_["record"]
        value = "failed" if record["value"] is None else f"{record['value']:.6g}"
        eta = ""
        if fresh and n < total:
            per_run = (time.monotonic() - started) / fresh
            # Wall time per finished run: with a pool it already counts the runs in parallel.
            eta = f", about {per_run * (total - n) / 60:.1f} min left"
        state = "done before" if out_["done"] else f"{out_['elapsed']:.1f} s"
        say(f"[{n}/{total}] {labels[out_['key']]} seed {out_['seed']}: {spec.name} {value} "
            f"({state}{eta})")

    runs = _run_jobs(ctx, main_jobs, texts, rows, algorithms, processes, executor, mode, jobs,
                     progress)
    summary = _summarise(plan, runs, labels, spec)
    for i, info in chosen.items():
        summary["methods"][f"baseline:{i}"].update(info)
    write_atomically(folder / "compare.json", json.dumps(summary, indent=1, default=_json_default))
    (folder / "compare.html").write_text(_html(summary, space))
    say(f"comparison: {folder / 'compare.html'} and {folder / 'compare.json'}")
    return summary


def _tuned(text: str) -> bool:
    return _PEAK.search(text) is not None


def _at(text: str, peak: float | None) -> str:
    """A tuned baseline's text with its peak filled in (``repr``: the exact float)."""
    if peak is None:
        return text
    return _PEAK.sub(lambda m: repr(float(peak) * float(m.group(1) or 1)), text)


def _peak_key(peak: float) -> str:
    return f"{peak:.4g}"


def _choose_peak(text: str, peaks: Sequence[float], tuning_seeds: Sequence[int],
                 records: list[dict[str, Any]], spec: Metric, steps: int) -> dict[str, Any]:
    """The peak with the best mean value over the tuning seeds (a diverged peak, whose value
    is missing on some seed, is never chosen)."""
    tuning: dict[float, float] = {}
    for peak in peaks:
        values = [r["value"] for r in records if r["peak"] == peak]
        tuning[peak] = (statistics.fmean(values) if values and None not in values
                        else float("nan"))
    finite = {p: v for p, v in tuning.items() if math.isfinite(v)}
    if not finite:
        raise RunFailed(f"baseline {text!r}: every peak of {list(peaks)} failed on the "
                        "tuning seeds")
    best = max(finite, key=lambda p: spec.sign * finite[p])
    return {"peak": best, "tuning": {_peak_key(p): v for p, v in tuning.items()},
            "tuning_worker_steps": len(peaks) * len(tuning_seeds) * steps}


# -- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every run of one comparison shares (picklable: it travels to the pool)."""

    folder: Path
    ref: str
    space: Space
    steps: int
    interval: int
    every: int
    spec: Metric
    schedule_every: int
    test: str | None


def _run_jobs(ctx: _Context, todo: Sequence[tuple[Any, ...]], texts: Sequence[str],
              rows: Sequence[Method], algorithms: dict[str, Algorithm], processes: int,
              executor: str, mode: str, jobs: int,
              progress: Callable[[int, dict[str, Any]], None]
              ) -> dict[str, list[dict[str, Any]]]:
    """Run ``todo`` ((kind, key, peak, seed) each) ``jobs`` at a time; records by row."""
    from firepbt.bench._pool import pool_map

    by_name = {m.name: m for m in rows}
    args: list[tuple[Any, ...]] = []
    for kind, key, peak, seed in todo:
        if kind == "method":
            m = by_name[key]
            args.append(("method", ctx, key, seed, task_ref_of(m.task) if m.task else ctx.ref,
                         algorithms[key].to_config(), m.processes or processes,
                         m.executor or executor, m.mode or mode))
        else:
            stem = f"baseline-{key}" + (f"-p{_peak_key(peak)}" if peak is not None else "")
            args.append(("baseline", ctx, f"baseline:{key}", seed, _at(texts[key], peak),
                         peak, stem))
    out: dict[str, list[dict[str, Any]]] = {m.name: [] for m in rows}
    out.update({f"baseline:{i}": [] for i in range(len(texts))})
    count = 0

    def each(result: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        out[result["key"]].append(result["record"])
        progress(count, result)

    pool_map(_job, args, jobs, each)
    return out


def _job(args: tuple[Any, ...]) -> dict[str, Any]:
    """One run in a pool process (or here): a population, or one fixed schedule."""
    t0 = time.monotonic()
    kind, ctx, key, seed = args[:4]
    if kind == "method":
        ref, alg_config, processes, executor, mode = args[4:]
        record, done = _method_run(ctx, key, seed, ref, algorithm_from_config(alg_config),
                                   processes, executor, mode)
    else:
        text, peak, stem = args[4:]
        record, done = _baseline_run(ctx, parse_schedule(text, ctx.space), stem, seed)
        if peak is not None:
            record["peak"] = peak
    return {"key": key, "seed": seed, "record": record, "done": done,
            "elapsed": time.monotonic() - t0}


def _method_run(ctx: _Context, method: str, seed: int, ref: str, alg: Algorithm,
                processes: int, executor: str, mode: str) -> tuple[dict[str, Any], bool]:
    path = ctx.folder / f"{method}-s{seed}.db"
    done = path.exists() and _status(path) in ("finished", "failed")
    error = None
    if not done:
        try:
            with _one_blas_thread():
                run(ref, space=ctx.space, algorithm=alg, steps=ctx.steps,
                    interval=ctx.interval, eval_every=ctx.every, store=str(path),
                    workers=processes, executor=_executor(executor, ref, processes),
                    mode=mode, seed=seed, metric=ctx.spec)
        except RunFailed as exc:
            error = str(exc).splitlines()[0]
    st = open_store(str(path))
    try:
        res = Result(st)
        best = res.best
        created = float(res.experiment.get("created", 0.0))
        times = [m.time for m in st.metrics()]
        worker_steps = sum(s.end_step - s.start_step for s in st.segments(status=COMPLETED))
        pieces = res.schedule(best) if best is not None else []
        schedule = [[p.start_step, p.end_step, p.hparams] for p in pieces]
        record: dict[str, Any] = {
            "seed": seed, "value": res.best_metric, "store": str(path), "error": error,
            "wall_s": round(max(times) - created, 3) if times else 0.0,
            "worker_steps": worker_steps, "schedule": schedule,
            **_diagnostics(res, best),
        }
        if ctx.test is not None and best is not None:
            record["test"] = _test_answer(ref, ctx.test, res.best_checkpoint(),
                                          pieces[-1].hparams)
        return record, done
    finally:
        st.close()


def _executor(kind: str, ref: str, processes: int) -> Any:
    """``kind`` as :func:`firepbt.run` takes it; ``"batched"``: every member of a batched
    task (``firepbt.batched_trainable``) trained together, ``processes`` at a time."""
    if kind != "batched":
        return kind
    from firepbt.executors.batched import BatchedExecutor

    return BatchedExecutor(load_object(ref), capacity=processes)


def _diagnostics(res: Result, best: int | None) -> dict[str, Any]:
    """What a run did: exploits, FIRE's transfers and evaluator stops (and the steps the
    evaluators trained), and the answer's curve along its lineage."""
    evaluators = {w.id for w in res.store.workers() if w.role == EVALUATOR}
    stops = res.events("stop_evaluator")
    pieces = res.schedule(best) if best is not None else []
    curve = res.current_curve(best) if best is not None else []
    return {
        "exploits": len(res.events("exploit")),
        "transfers": len(res.events("transfer")),
        "lineage_transfers": sum(1 for p in pieces if p.worker in evaluators),
        "stop_reasons": dict(Counter(str(e.info["reason"]) for e in stops)),
        "evaluator_steps": sum(e.step - int(e.info["start_step"]) for e in stops),
        "curve": [[s, v] for s, v in curve if v is not None],
    }


def _test_answer(ref: str, test: str, checkpoint: Path, hparams: dict[str, Any]
                 ) -> float | None:
    """``test`` of the answer's final weights, loaded into a fresh member of task ``ref``."""
    member = make_trainable_class(load_object(ref))()
    member.setup(hparams, 0)
    member.load(checkpoint)
    return as_metric(getattr(member, test)())


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Linear algebra on one thread in each run: two runs on a 2-core machine each spreading
    BLAS threads over both cores make every small GP fit 10-30x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _status(path: Path) -> str:
    st = open_store(str(path))
    try:
        return str(st.get_state("status", ""))
    finally:
        st.close()


def _baseline_run(ctx: _Context, sched: Schedule, stem: str, seed: int
                  ) -> tuple[dict[str, Any], bool]:
    """One fixed-schedule run in this process; hyperparameters are set every
    ``ctx.schedule_every`` steps, and a curve point is taken every ``ctx.every`` steps."""
    path = ctx.folder / f"{stem}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text()), True
    t0 = time.perf_counter()
    trainable = make_trainable_class(load_object(ctx.ref))()
    trainable.setup(sched.values(0.0), seed)
    value, step = None, 0
    schedule: list[list[Any]] = []
    curve: list[list[float]] = []
    record: dict[str, Any]
    try:
        while step < ctx.steps:
            # Up to the next hyperparameter update or curve point, whichever comes first.
            n = min(ctx.schedule_every - step % ctx.schedule_every,
                    ctx.every - step % ctx.every, ctx.steps - step)
            hparams = sched.values(step / ctx.steps)
            trainable.set_hparams(hparams)
            if schedule and schedule[-1][2] == hparams and schedule[-1][1] == step:
                schedule[-1][1] = step + n  # the same values: one longer piece
            else:
                schedule.append([step, step + n, hparams])
            trainable.train(n)
            step += n
            if step % ctx.every == 0 or step == ctx.steps:
                value = as_metric(pick_metric(trainable.evaluate(), ctx.spec.name))
                if value is not None:
                    curve.append([step, value])
    except Exception as exc:  # noqa: BLE001 - a failed baseline is a result, shown as such
        record = {"seed": seed, "value": None, "error": f"{type(exc).__name__}: {exc}"}
    else:
        record = {"seed": seed, "value": value, "error": None}
        if ctx.test is not None:
            record["test"] = as_metric(getattr(trainable, ctx.test)())
    record.update(wall_s=round(time.perf_counter() - t0, 3), worker_steps=step,
                  schedule=schedule, curve=curve)
    write_atomically(path, json.dumps(record, default=_json_default))
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
        write_atomically(path, json.dumps(plan, indent=1))


def _json_default(x: Any) -> Any:
    return float(x) if isinstance(x, int | float) else str(x)


# -- summary ---------------------------------------------------------------------------------


def _summarise(plan: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
               labels: dict[str, str], spec: Metric) -> dict[str, Any]:
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
        records = sorted(records, key=lambda r: r["seed"])  # a pool returns them in order too
        values = [r["value"] for r in records if r["value"] is not None]
        ordered = sorted(records, key=lambda r: (r["value"] is None, sign * (r["value"] or 0)))
        median = ordered[(len(values) - 1) // 2] if values else None
        table[method] = {
            "label": labels[method],
            "seeds": [r["seed"] for r in records],
            "values": [r["value"] for r in records],
            "failed": sum(1 for r in records if r["value"] is None),
            **_stats(values),
            "wins": wins[method],
            "wall_s_per_run": statistics.fmean(r["wall_s"] for r in records),
            "wall_s": round(sum(r["wall_s"] for r in records), 3),
            "worker_steps_per_run": statistics.fmean(r["worker_steps"] for r in records),
            "median_seed": None if median is None else median["seed"],
            "median_schedule": None if median is None else median["schedule"],
            "median_curve": None if median is None else median.get("curve"),
            # The area under each answer's curve: its mean value along the lineage.
            "auc": [statistics.fmean(v for _, v in r["curve"]) if r.get("curve") else None
                    for r in records],
        }
        if "exploits" in records[0]:
            reasons: Counter[str] = Counter()
            for r in records:
                reasons.update(r["stop_reasons"])
            table[method].update({
                key: [r[key] for r in records]
                for key in ("exploits", "transfers", "lineage_transfers", "evaluator_steps")})
            table[method]["stop_reasons"] = dict(sorted(reasons.items()))
        if any("test" in r for r in records):
            tests = [r.get("test") for r in records]
            table[method]["test"] = {"values": tests,
                                     **_stats([t for t in tests if t is not None])}
    for a in runs:
        table[a]["p_better_than"] = {
            b: _p_better(table[a]["values"], table[b]["values"], spec) for b in runs if b != a
        }
        if "test" in table[a]:
            table[a]["test"]["p_better_than"] = {
                b: _p_better(table[a]["test"]["values"], table[b]["test"]["values"], spec)
                for b in runs if b != a and "test" in table[b]
            }
    return {"plan": plan, "metric": spec.describe(), "methods": table,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, median, min and max (None where there is none)."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


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
