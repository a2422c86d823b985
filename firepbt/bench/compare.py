"""FIRE PBT against PBT, PB2 and random search at equal worker-steps (``firepbt bench toys|nqm``).

Every method gets the same worker budget: FIRE's members *and* evaluators count as workers
(8 + 8 + 6 = 22 by default), so PBT, PB2 and random search run ``22`` members, and every member
trains ``steps`` steps. Runs use the in-process executor, an in-memory store and synchronous
rounds, so each (method, seed) is exactly reproducible; seeds are spread over a small process
pool (the harness only - the engine is unchanged).

The answer of a run is the best member of P1 (``Result.best_metric``): for the toys the final
objective (the deceptive toy's includes its penalty), for the NQM the loss ``-metric``
(relative to the starting loss). For the NQM two hand-tuned schedules join the table: step decay
(x0.1 at 50 % and 75 %) and cosine, each with its peak learning rate tuned on a grid over
separate tuning seeds; that tuning compute is counted and reported.

``main`` returns (and the CLI prints as JSON)::

    {"bench", "preset", "seeds", "tasks": {task: table}, "decision_cost": {...},
     "plots": [paths], "wall_s"}

where each ``table`` holds ``steps``, ``interval``, ``population``, ``worker_steps_per_run``,
``metric`` ("objective" or "loss"), ``higher_is_better``, ``methods`` (per method: ``values``
by seed, ``mean``, ``std``, ``median``, ``min``, ``max``), ``p_fire_better`` (one-sided
Mann-Whitney p-values of FIRE against each other method) and ``fire`` (transfers, stop reasons,
evaluator budget used, transfers in the answer's lineage).

Two more benchmarks compare *variants* of FIRE on one task (``compare_variants``: rows of a
:class:`Variant` each - executor, mode, workers, algorithm - with one-sided Mann-Whitney
p-values against a reference row, and exploits and transfers per run):

- ``firepbt bench async-sync``: FIRE on the NQM in synchronous in-process rounds against
  asynchronous mode on 2 process workers, with the equal-step ranking (default) and with the
  old latest-value ranking;
- ``firepbt bench fire-init`` (NQM) and ``fire-init-deceptive``: i.i.d. against Latin
  hypercube initialisation and the GP fit by scikit-learn against the grid, for FIRE and PBT,
  counting FIRE seeds that end at PBT's level on the NQM.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms import PBT, Algorithm, RandomSearch, algorithm_from_config
from firepbt.algorithms.fire import FirePBT
from firepbt.algorithms.pb2 import PB2
from firepbt.api import run
from firepbt.bench._pool import pool_map
from firepbt.bench.controller import measure as measure_controller
from firepbt.compare import better_p
from firepbt.errors import ConfigError
from firepbt.result import Result
from firepbt.space import Space
from firepbt.store.base import EVALUATOR
from firepbt.tasks.nqm import NQM, nqm_schedule_loss
from firepbt.tasks.toys import DeceptiveToy, NumpyTask, PlainToy

POPULATION = 22  # FIRE's default 8 + 8 + 6; PBT and random search get all 22 as members
SEEDS = {"quick": 3, "full": 20}
PROCESSES = 2  # the machine has 2 cores and is shared
METHODS = ("fire", "pbt", "pb2", "random")
# Peak learning rates tried for the hand-tuned NQM schedules: a factor 2**(1/4) grid from 1/4
# to 1.0, the top of the search space FIRE and PBT draw from (so every method has the same
# learning rates to choose from; the NQM itself tolerates up to 2 / max curvature = 2).
PEAK_GRID = tuple(2.0 ** (k / 4) for k in range(-8, 1))
TUNING_SEEDS = (10_000, 10_001, 10_002)  # disjoint from the evaluation seeds 0..N-1


class _PlainFullRange(PlainToy):
    """Plain toy whose members start anywhere in SPACE (random search never explores)."""

    INIT_SPACE: ClassVar[Space] = PlainToy.SPACE


class _DeceptiveFullRange(DeceptiveToy):
    """Deceptive toy whose members start anywhere in SPACE (random search never explores)."""

    INIT_SPACE: ClassVar[Space] = DeceptiveToy.SPACE


@dataclass(frozen=True)
class Setup:
    """One benchmark task: what trains, for how long, and how its answer is read.

    Attributes:
        name: the task's key in the tables ("plain", "deceptive", "nqm").
        task: the trainable class for FIRE and PBT.
        random_task: the class random search runs (its members sample the whole SPACE).
        hparam: the hyperparameter whose learned schedule is reported.
        higher_is_better: False when the reported value is a loss (``-metric``).
        steps, interval, eval_every: run settings (``None``: the task's DEFAULTS).
        population: the worker budget W; FIRE splits it, the others use W members.
    """

    name: str
    task: type[NumpyTask]
    random_task: type[NumpyTask]
    hparam: str
    higher_is_better: bool
    steps: int | None = None
    interval: int | None = None
    eval_every: int | None = None
    population: int = POPULATION

    def settings(self) -> tuple[int, int, int]:
        """(steps, interval, eval_every) with the task's defaults filled in."""
        d = self.task.DEFAULTS
        return (
            self.steps or d["steps"],
            self.interval or d["interval"],
            self.eval_every or d["eval_every"],
        )

    def algorithm(self, method: str) -> Algorithm:
        if method == "fire":
            return FirePBT(population=self.population)
        if method == "pbt":
            return PBT(population=self.population)
        if method == "pb2":
            return PB2(population=self.population)
        if method == "random":
            return RandomSearch(population=self.population)
        raise ConfigError(f"method={method!r}: must be one of {', '.join(METHODS)}")

    def reported(self, metric: float) -> float:
        """The table's value for a run's best metric (a loss for the NQM)."""
        return metric if self.higher_is_better else -metric


SETUPS = {
    "plain": Setup("plain", PlainToy, _PlainFullRange, "h", True),
    "deceptive": Setup("deceptive", DeceptiveToy, _DeceptiveFullRange, "h", True),
    "nqm": Setup("nqm", NQM, NQM, "lr", False),
}
BENCH_TASKS = {"toys": ("deceptive", "plain"), "nqm": ("nqm",)}


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@contextmanager
def fast_scratch() -> Iterator[None]:
    """Put the run's checkpoints on tmpfs and keep linear algebra on one thread.

    The in-memory store keeps its checkpoints in ``tempfile``'s directory; on a disk every
    checkpoint pays several fsyncs (about 2/3 of a PBT toy run), on /dev/shm they are free.
    BLAS threads on a 2-core machine shared by two runs make each small GP fit 10-30x slower.
    """
    from threadpoolctl import threadpool_limits

    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    old = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="firepbt-compare-", dir=parent) as tmp, \
            threadpool_limits(limits=1):
        tempfile.tempdir = tmp
        try:
            yield
        finally:
            tempfile.tempdir = old


def run_one(
    setup: Setup, method: str, seed: int, variant: Variant | None = None
) -> dict[str, Any]:
    """Train one population and summarise it (``variant``: executor and mode; default
    in-process, synchronous rounds, 1 worker, the method's default algorithm).

    Returns:
        ``value`` (the reported number), ``metric``, ``wall_s``, ``transfers``, ``exploits``,
        ``stop_reasons``, ``evaluator_steps`` (worker-steps spent by evaluators),
        ``lineage_transfers`` (pieces of the answer's schedule trained by evaluators),
        ``schedule`` ([start, end, value] of ``setup.hparam`` along the answer's lineage).
    """
    steps, interval, eval_every = setup.settings()
    task = setup.random_task if method == "random" else setup.task
    v = variant or Variant(method)
    algorithm = v.algorithm if v.algorithm is not None else setup.algorithm(method)
    if v.executor == "process":
        # multiprocessing's own temp dir (the fork server's socket) must outlive the scratch
        # directory below: create it first, in the ordinary temp dir.
        from multiprocessing import util

        util.get_temp_dir()
    t0 = time.perf_counter()
    with fast_scratch():
        result = run(
            task, algorithm=algorithm, steps=steps, interval=interval,
            eval_every=eval_every, store="memory://", executor=v.executor, workers=v.workers,
            seed=seed, mode=v.mode,
        )
        wall = time.perf_counter() - t0
        metric, best = result.best_metric, result.best
        if metric is None or best is None:
            raise RuntimeError(f"{setup.name}/{method}/seed {seed}: no member has a valid metric")
        out = {
            "method": v.label if variant is not None else method, "seed": seed,
            "value": setup.reported(metric), "metric": metric,
            "wall_s": round(wall, 2), **run_diagnostics(result, best, setup.hparam),
        }
        result.store.close()
    return out


def run_diagnostics(result: Result, best: int, hparam: str) -> dict[str, Any]:
    """What a run did: exploits, FIRE transfers and stop reasons, evaluator budget used, and
    the answer's schedule of ``hparam`` ([start, end, value] along its lineage)."""
    evaluators = {w.id for w in result.store.workers() if w.role == EVALUATOR}
    pieces = result.schedule(best)
    stops = result.events("stop_evaluator")
    return {
        "transfers": len(result.events("transfer")),
        "exploits": len(result.events("exploit")),
        "stop_reasons": dict(Counter(str(e.info["reason"]) for e in stops)),
        "evaluator_steps": sum(e.step - int(e.info["start_step"]) for e in stops),
        "lineage_transfers": sum(1 for p in pieces if p.worker in evaluators),
        "schedule": [[p.start_step, p.end_step, float(p.hparams[hparam])] for p in pieces],
    }


@dataclass(frozen=True)
class Variant:
    """How one row of a table runs: its label, executor, mode, workers and algorithm
    (``None``: the setup's default algorithm for the method)."""

    label: str
    executor: str = "inprocess"
    mode: str = "sync"
    workers: int = 1
    algorithm: Algorithm | None = None


def _job(args: tuple[Setup, str, int] | tuple[Setup, str, int, Variant]) -> dict[str, Any]:
    return run_one(*args)


def run_all(
    setup: Setup, methods: Sequence[str], seeds: Sequence[int], processes: int = PROCESSES,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every (method, seed) of ``setup``; results by method, in seed order."""
    jobs = [(setup, m, s) for s in seeds for m in methods]
    # A fork pool where there is one (the harness holds no threads or open stores here);
    # SIGTERM tears it down.
    outs = pool_map(_job, jobs, processes, progress)
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for out in outs:
        by_method[out["method"]].append(out)
    return by_method


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std, median, min, max and the values themselves."""
    vals = [float(v) for v in values]
    return {
        "values": vals, "n": len(vals), "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "median": statistics.median(vals), "min": min(vals), "max": max(vals),
    }


def fire_better_p(fire: Sequence[float], other: Sequence[float], higher_is_better: bool) -> float:
    """One-sided Mann-Whitney U p-value of "FIRE's values are better than ``other``'s"."""
    return better_p(fire, other, higher_is_better)


# --------------------------------------------------------------------------------------------
# NQM hand-tuned schedules
# --------------------------------------------------------------------------------------------


def step_decay(peak: float, steps: int) -> Callable[[int], float]:
    """x0.1 at 50 % and again at 75 % of training (the spec's hand-tuned schedule)."""
    return lambda t: peak * (1.0 if t < steps // 2 else 0.1 if t < 3 * steps // 4 else 0.01)


def cosine(peak: float, steps: int) -> Callable[[int], float]:
    """Cosine decay from ``peak`` to 0."""
    return lambda t: peak * 0.5 * (1.0 + math.cos(math.pi * t / steps))


SCHEDULES: dict[str, Callable[[float, int], Callable[[int], float]]] = {
    "step": step_decay, "cosine": cosine,
}


def tune_schedules(
    steps: int, seeds: Sequence[int], grid: Sequence[float] = PEAK_GRID,
    tuning_seeds: Sequence[int] = TUNING_SEEDS,
) -> dict[str, dict[str, Any]]:
    """Pick each schedule's peak by mean loss over ``tuning_seeds``; evaluate it on ``seeds``.

    Returns, per schedule: ``peak``, ``tuning`` (mean loss per peak), ``tuning_worker_steps``
    (grid x tuning seeds x steps, the compute the tuning spent) and ``values`` (loss per seed).
    """
    out = {}
    for name, make in SCHEDULES.items():
        tuning = {
            peak: statistics.fmean(nqm_schedule_loss(make(peak, steps), steps, s)
                                   for s in tuning_seeds)
            for peak in grid
        }
        # A diverged peak gives inf/nan; it can never be chosen.
        finite = {p: v for p, v in tuning.items() if math.isfinite(v)}
        peak = min(finite, key=lambda p: finite[p])
        out[name] = {
            "peak": peak, "tuning": {f"{p:.4g}": v for p, v in tuning.items()},
            "tuning_worker_steps": len(grid) * len(tuning_seeds) * steps,
            "values": [nqm_schedule_loss(make(peak, steps), steps, s) for s in seeds],
        }
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def compare_task(
    setup: Setup, seeds: Sequence[int], processes: int = PROCESSES,
    methods: Sequence[str] = METHODS, verbose: bool = True,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The table of one task (see the module docstring) and the raw runs by method."""
    steps, interval, eval_every = setup.settings()

    def progress(out: dict[str, Any]) -> None:
        if verbose:
            print(f"  {setup.name} {out['method']:>6} seed {out['seed']:>3}: "
                  f"{out['value']:+.5f} ({out['wall_s']:.1f} s, {out['transfers']} transfers)",
                  flush=True)

    runs = run_all(setup, methods, seeds, processes, progress)
    table: dict[str, Any] = {
        "task": setup.name, "steps": steps, "interval": interval, "eval_every": eval_every,
        "population": setup.population, "worker_steps_per_run": setup.population * steps,
        "metric": "objective" if setup.higher_is_better else "loss",
        "higher_is_better": setup.higher_is_better, "seeds": list(seeds),
        "methods": {m: describe([r["value"] for r in runs[m]]) for m in methods},
    }
    if setup.name == "nqm":
        hand = tune_schedules(steps, seeds)
        for name, h in hand.items():
            table["methods"][name] = {**describe(h["values"]), "peak": h["peak"],
                                      "tuning": h["tuning"],
                                      "tuning_worker_steps": h["tuning_worker_steps"]}
    if "fire" in methods:
        fire_vals = table["methods"]["fire"]["values"]
        table["p_fire_better"] = {
            m: fire_better_p(fire_vals, v["values"], setup.higher_is_better)
            for m, v in table["methods"].items() if m != "fire"
        }
        fire_runs = runs["fire"]
        reasons: Counter[str] = Counter()
        for r in fire_runs:
            reasons.update(r["stop_reasons"])
        n_eval = FirePBT(population=setup.population).n_evaluators
        table["fire"] = {
            "transfers": [r["transfers"] for r in fire_runs],
            "lineage_transfers": [r["lineage_transfers"] for r in fire_runs],
            "stop_reasons": dict(sorted(reasons.items())),
            # Share of the evaluators' steps (n_eval x steps) they actually trained.
            "evaluator_budget_used": statistics.fmean(
                r["evaluator_steps"] / (n_eval * steps) for r in fire_runs),
        }
    table["wall_s"] = {m: round(sum(r["wall_s"] for r in runs[m]), 1) for m in methods}
    return table, runs


def method_table_lines(table: dict[str, Any], n_seeds: int) -> list[str]:
    """The rows every comparison prints: the task line, mean/std/median/min/max per method,
    the per-seed values and the one-sided Mann-Whitney p-values."""
    better = "higher" if table["higher_is_better"] else "lower"
    lines = [f"{table['task']}: {table['metric']} ({better} is better), W = "
             f"{table['population']} workers x {table['steps']} steps, {n_seeds} seeds"]
    lines.append(f"  {'method':<8} {'mean':>10} {'std':>9} {'median':>10} {'min':>10} {'max':>10}")
    for m, d in table["methods"].items():
        extra = f"  (peak lr {d['peak']:.3g})" if "peak" in d else ""
        lines.append(f"  {m:<8} {d['mean']:>10.5f} {d['std']:>9.5f} {d['median']:>10.5f} "
                     f"{d['min']:>10.5f} {d['max']:>10.5f}{extra}")
    for m, d in table["methods"].items():
        lines.append(f"  {m:<8} per seed: " + " ".join(f"{v:.4f}" for v in d["values"]))
    for m, p in table.get("p_fire_better", {}).items():
        lines.append(f"  one-sided Mann-Whitney p(FIRE better than {m}) = {p:.3g}")
    return lines


def format_table(table: dict[str, Any]) -> str:
    """A plain-text table: one row per method, then the p-values and FIRE's diagnostics."""
    lines = method_table_lines(table, len(table["seeds"]))
    if "fire" in table:
        f = table["fire"]
        lines.append(f"  FIRE transfers per seed: {f['transfers']}; in the answer's lineage: "
                     f"{f['lineage_transfers']}")
        lines.append(f"  FIRE evaluator stops: {f['stop_reasons']}; evaluator budget used "
                     f"{f['evaluator_budget_used']:.0%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Decision cost
# --------------------------------------------------------------------------------------------


def decision_cost(
    algorithm: Algorithm, intervals: int = 10, interval: int = 10, repeats: int = 3
) -> dict[str, Any]:
    """Controller time per handled result with the simulated executor (no training, no files).

    The best of ``repeats`` runs is kept (the machine is shared; the minimum is the cost).
    Each repeat runs a fresh copy of ``algorithm``: FIRE's smoothing cache would otherwise
    answer every curve of a repeated (deterministic) run and hide the cost being measured.
    """
    best: dict[str, Any] | None = None
    for _ in range(repeats):
        fresh = algorithm_from_config(algorithm.to_config())
        with fast_scratch():
            m = measure_controller(fresh, intervals=intervals, interval=interval, eval_every=1)
        row = {"results": m["decisions"], "wall_s": m["wall_s"],
               "us_per_result": m["us_per_decision"],
               "evaluator_starts": m["evaluator_starts"], "transfers": m["transfers"]}
        if best is None or row["us_per_result"] < best["us_per_result"]:
            best = row
    assert best is not None
    return best


def measure_decision_cost(workers: int = 100, intervals: int = 10) -> dict[str, Any]:
    """FIRE (GP smoothing fitted on the grid or by scikit-learn, EMA smoothing) and PB2
    against PBT at ``workers`` workers; ratios to PBT."""
    rows = {
        "pbt": decision_cost(PBT(population=workers), intervals),
        "fire_gp": decision_cost(FirePBT(population=workers, smoother="gp"), intervals),
        "fire_gp_sklearn": decision_cost(
            FirePBT(population=workers, smoother="gp", gp_fit="sklearn"), intervals
        ),
        "fire_ema": decision_cost(FirePBT(population=workers, smoother="ema"), intervals),
        "pb2": decision_cost(PB2(population=workers), intervals),
    }
    base = rows["pbt"]["us_per_result"]
    return {
        "workers": workers, "intervals": intervals, "rows": rows,
        "ratio_fire_gp_to_pbt": round(rows["fire_gp"]["us_per_result"] / base, 2),
        "ratio_fire_gp_sklearn_to_pbt": round(
            rows["fire_gp_sklearn"]["us_per_result"] / base, 2
        ),
        "ratio_pb2_to_pbt": round(rows["pb2"]["us_per_result"] / base, 2),
        "ratio_fire_ema_to_pbt": round(rows["fire_ema"]["us_per_result"] / base, 2),
    }


def main_decision_cost(name: str = "decision-cost", preset: str = "quick",
                       seeds: int | None = None) -> dict[str, Any]:
    """``firepbt bench decision-cost``: FIRE's controller cost per result against PBT's."""
    out = measure_decision_cost()
    for key, row in out["rows"].items():
        ratio = row["us_per_result"] / out["rows"]["pbt"]["us_per_result"]
        print(f"{key:>18}: {row['us_per_result']:>8.0f} us per handled result "
              f"(x{ratio:.2f} of PBT)", flush=True)
    return {"bench": "decision-cost", **out}


# --------------------------------------------------------------------------------------------
# Asynchronous process workers against synchronous in-process rounds
# --------------------------------------------------------------------------------------------

ASYNC_WORKERS = 2  # process workers of the asynchronous rows (the machine has 2 cores)


def async_variants(population: int = POPULATION,
                   workers: int = ASYNC_WORKERS) -> dict[str, Variant]:
    """The rows of ``firepbt bench async-sync``: FIRE's defaults in synchronous in-process
    rounds (the reference), then asynchronous on ``workers`` process workers with the default
    equal-step ranking and with the old latest-value ranking (``PBT(rank_at="latest")`` inside
    every sub-population), and asynchronous in-process with the latest-value ranking (the same
    staggering without process timing)."""

    def fire(rank_at: str) -> FirePBT:
        return FirePBT(population=population, pbt=PBT(rank_at=rank_at))

    return {
        "sync-inprocess": Variant("sync-inprocess"),
        "async-process": Variant("async-process", "process", "async", workers, fire("equal_step")),
        "async-process-latest": Variant(
            "async-process-latest", "process", "async", workers, fire("latest")
        ),
        "async-inprocess-latest": Variant(
            "async-inprocess-latest", "inprocess", "async", workers, fire("latest")
        ),
    }


def _variant_job(args: tuple[Setup, int, Variant]) -> dict[str, Any]:
    setup, seed, variant = args
    out = run_one(setup, "fire", seed, variant)
    print(f"  {setup.name} {variant.label:>24} seed {seed:>3}: {out['value']:+.5f} "
          f"({out['wall_s']:.1f} s, {out['exploits']} exploits, {out['transfers']} transfers)",
          flush=True)
    return out


def compare_variants(
    setup: Setup, variants: dict[str, Variant], seeds: Sequence[int],
    processes: int = PROCESSES, reference: str = "sync-inprocess",
) -> dict[str, Any]:
    """FIRE under each variant on ``seeds``: values, exploits and transfers per seed, and the
    one-sided Mann-Whitney p-value of "the reference is better than this variant" (small: the
    variant loses)."""
    jobs = [(setup, s, v) for v in variants.values() for s in seeds]
    # The pool that SIGTERM and Ctrl-C tear down (defect 8g).
    outs = pool_map(_variant_job, jobs, processes)
    rows: dict[str, Any] = {}
    for key, v in variants.items():
        rs = [o for o in outs if o["method"] == v.label]
        rows[key] = {
            **describe([r["value"] for r in rs]),
            "executor": v.executor, "mode": v.mode, "workers": v.workers,
            "exploits": [r["exploits"] for r in rs], "transfers": [r["transfers"] for r in rs],
            "wall_s": round(sum(r["wall_s"] for r in rs), 1),
        }
    ref = rows[reference]["values"]
    p = {k: fire_better_p(ref, r["values"], setup.higher_is_better)
         for k, r in rows.items() if k != reference}
    p_rev = {k: fire_better_p(r["values"], ref, setup.higher_is_better)
             for k, r in rows.items() if k != reference}
    return {"p_better_than_reference": p_rev, "task": setup.name,
            "steps": setup.settings()[0], "population": setup.population,
            "metric": "objective" if setup.higher_is_better else "loss",
            "higher_is_better": setup.higher_is_better, "seeds": list(seeds), "rows": rows,
            "reference": reference, "p_reference_better": p}


def format_variants(table: dict[str, Any]) -> str:
    better = "higher" if table["higher_is_better"] else "lower"
    lines = [f"{table['task']}: FIRE {table['metric']} ({better} is better), W = "
             f"{table['population']} workers x {table['steps']} steps, "
             f"{len(table['seeds'])} seeds"]
    lines.append(f"  {'variant':<24} {'mean':>9} {'std':>9} {'median':>9} {'exploits':>9} "
                 f"{'transfers':>9}")
    for k, r in table["rows"].items():
        lines.append(f"  {k:<24} {r['mean']:>9.5f} {r['std']:>9.5f} {r['median']:>9.5f} "
                     f"{statistics.fmean(r['exploits']):>9.1f} "
                     f"{statistics.fmean(r['transfers']):>9.1f}")
    for k, r in table["rows"].items():
        lines.append(f"  {k:<24} per seed: " + " ".join(f"{v:.4f}" for v in r["values"]))
    for k, pv in table["p_reference_better"].items():
        rev = table["p_better_than_reference"][k]
        lines.append(f"  one-sided Mann-Whitney p({table['reference']} better than {k}) = "
                     f"{pv:.3g}; p({k} better than {table['reference']}) = {rev:.3g}")
    level = table.get("pbt_level")
    if level is not None:
        lines.append(f"  seeds at PBT's level (loss >= {level['threshold']:.4f}, the 10th "
                     f"percentile of {level['row']}'s losses): "
                     + ", ".join(f"{k} {n}/{len(table['seeds'])}"
                                 for k, n in level["counts"].items()))
    return "\n".join(lines)


def init_variants(population: int = POPULATION) -> dict[str, Variant]:
    """The rows of ``firepbt bench fire-init``: PBT and FIRE with i.i.d. and Latin hypercube
    initial hyperparameters, and FIRE's GP smoother fitted by scikit-learn or the grid."""
    return {
        "fire-iid-sklearn": Variant("fire-iid-sklearn", algorithm=FirePBT(
            population=population, init="iid", gp_fit="sklearn")),
        "fire-lhs-sklearn": Variant("fire-lhs-sklearn", algorithm=FirePBT(
            population=population, init="lhs", gp_fit="sklearn")),
        "fire-iid-grid": Variant("fire-iid-grid", algorithm=FirePBT(
            population=population, init="iid", gp_fit="grid")),
        "fire-lhs-grid": Variant("fire-lhs-grid", algorithm=FirePBT(population=population)),
        "pbt-iid": Variant("pbt-iid", algorithm=PBT(population=population, init="iid")),
        "pbt-lhs": Variant("pbt-lhs", algorithm=PBT(population=population)),
    }


def main_fire_init(name: str = "fire-init", preset: str = "quick", seeds: int | None = None,
                   processes: int = PROCESSES, setups: dict[str, Setup] | None = None,
                   task: str = "nqm") -> dict[str, Any]:
    """``firepbt bench fire-init``: the effect of Latin hypercube initialisation (and of the
    grid GP fit) on FIRE and PBT, NQM, in synchronous in-process rounds. Reference row: FIRE's
    old defaults (i.i.d. initialisation, scikit-learn GP fit)."""
    if preset not in SEEDS:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(SEEDS)}")
    n = seeds if seeds is not None else SEEDS[preset]
    setup = (SETUPS if setups is None else setups)[task]
    t0 = time.perf_counter()
    table = compare_variants(setup, init_variants(setup.population), list(range(n)), processes,
                             reference="fire-iid-sklearn")
    if not setup.higher_is_better:
        vals = sorted(table["rows"]["pbt-iid"]["values"])
        threshold = float(np.percentile(vals, 10))
        table["pbt_level"] = {
            "row": "pbt-iid", "threshold": threshold,
            "counts": {k: sum(v >= threshold for v in r["values"])
                       for k, r in table["rows"].items() if k.startswith("fire")},
        }
    print(format_variants(table), flush=True)
    return {"bench": name, "preset": preset, "seeds": n, "table": table,
            "wall_s": round(time.perf_counter() - t0, 1)}


def main_fire_init_deceptive(name: str = "fire-init-deceptive", preset: str = "quick",
                             seeds: int | None = None) -> dict[str, Any]:
    """``firepbt bench fire-init-deceptive``: :func:`main_fire_init` on the deceptive toy
    (objective, higher is better; no "PBT's level" count there)."""
    out = main_fire_init(name, preset, seeds, task="deceptive")
    return out


def main_async_sync(name: str = "async-sync", preset: str = "quick",
                    seeds: int | None = None, processes: int = PROCESSES,
                    setups: dict[str, Setup] | None = None,
                    variants: Sequence[str] | None = None) -> dict[str, Any]:
    """``firepbt bench async-sync``: FIRE on the NQM in synchronous in-process rounds against
    asynchronous process workers (and the diagnostic rows of :func:`async_variants`)."""
    if preset not in SEEDS:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(SEEDS)}")
    n = seeds if seeds is not None else SEEDS[preset]
    setup = (SETUPS if setups is None else setups)["nqm"]
    rows = async_variants(setup.population)
    if variants is not None:
        rows = {k: rows[k] for k in ("sync-inprocess", *variants) if k in rows}
    t0 = time.perf_counter()
    table = compare_variants(setup, rows, list(range(n)), processes)
    print(format_variants(table), flush=True)
    return {"bench": name, "preset": preset, "seeds": n, "table": table,
            "wall_s": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run whose value is the (lower) median of ``runs``."""
    ordered = sorted(runs, key=lambda r: (r["value"], r["seed"]))
    return ordered[(len(ordered) - 1) // 2]


def step_xy(schedule: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for start, end, value in schedule:
        xs += [start, end]
        ys += [value, value]
    return xs, ys


def plot_schedules(
    setup: Setup, runs: dict[str, list[dict[str, Any]]], path: Path,
    references: dict[str, Callable[[int], float]],
) -> Path:
    """The answer's learned schedule of the median-seed run per method, with references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = setup.settings()[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, rs in runs.items():
        r = median_run(rs)
        xs, ys = step_xy(r["schedule"])
        ax.plot(xs, ys, label=f"{method} (seed {r['seed']}, {r['value']:.4g})")
    t = np.arange(steps)
    for name, fn in references.items():
        ax.plot(t, [fn(int(s)) for s in t], "--", color="gray" if "linear" in name else None,
                label=name, alpha=0.8)
    if setup.hparam == "lr":
        ax.set_yscale("log")
        # Cosine ends at 0; the axis covers the learned values, not the last few steps.
        learned = [v for rs in runs.values() for _, _, v in median_run(rs)["schedule"]]
        ax.set_ylim(bottom=min(learned) / 3)
    ax.set_xlabel("step")
    ax.set_ylabel(setup.hparam)
    ax.set_title(f"{setup.name}: {setup.hparam} along the answer's lineage (median seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(
    name: str = "toys", preset: str = "quick", seeds: int | None = None,
    processes: int = PROCESSES, plots_dir: Path | None = None,
    setups: dict[str, Setup] | None = None, cost_workers: int = 100,
) -> dict[str, Any]:
    """Run the comparison for ``name`` ("toys" or "nqm") and print its tables.

    Args:
        name: "toys" (deceptive and plain toy) or "nqm".
        preset: "quick" (3 seeds) or "full" (20 seeds; also writes the plots).
        seeds: number of seeds (0..seeds-1), overriding the preset.
        processes: size of the process pool over runs.
        plots_dir: where plots go; default ``docs/img`` for ``full``, none for ``quick``.
        setups: task settings by key (tests shrink them); default :data:`SETUPS`.
        cost_workers: population of the decision-cost measurement (0 skips it).
    """
    if name not in BENCH_TASKS:
        raise ConfigError(f"bench {name!r}: compare runs {' or '.join(BENCH_TASKS)}")
    if preset not in SEEDS:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(SEEDS)}")
    n = seeds if seeds is not None else SEEDS[preset]
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"seeds={seeds!r}: must be an integer >= 1")
    if plots_dir is None and preset == "full":
        plots_dir = Path("docs/img")
    setups = SETUPS if setups is None else setups
    t0 = time.perf_counter()
    tables: dict[str, Any] = {}
    plots: list[str] = []
    for key in BENCH_TASKS[name]:
        setup = setups[key]
        print(f"{key}: {n} seeds x {len(METHODS)} methods", flush=True)
        table, runs = compare_task(setup, list(range(n)), processes)
        tables[key] = table
        print(format_table(table), flush=True)
        if plots_dir is not None:
            plots.append(str(_plot(setup, table, runs, plots_dir)))
    cost = measure_decision_cost(cost_workers) if cost_workers else None
    if cost is not None:
        rows = cost["rows"]
        print(f"decision cost at {cost_workers} workers (simulated executor): PBT "
              f"{rows['pbt']['us_per_result']:.0f} us/result, FIRE (GP) "
              f"{rows['fire_gp']['us_per_result']:.0f} (x{cost['ratio_fire_gp_to_pbt']}), "
              f"FIRE (EMA) {rows['fire_ema']['us_per_result']:.0f} "
              f"(x{cost['ratio_fire_ema_to_pbt']})", flush=True)
    return {"bench": name, "preset": preset, "seeds": n, "tasks": tables,
            "decision_cost": cost, "plots": plots,
            "wall_s": round(time.perf_counter() - t0, 1)}


def _plot(setup: Setup, table: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
          plots_dir: Path) -> Path:
    steps = setup.settings()[0]
    refs: dict[str, Callable[[int], float]] = {}
    if setup.name == "nqm":
        for sched in ("step", "cosine"):
            peak = table["methods"][sched]["peak"]
            refs[f"hand-tuned {sched} (peak {peak:.3g})"] = SCHEDULES[sched](peak, steps)
    elif setup.name == "deceptive":
        refs["linear target"] = DeceptiveToy.target
    return plot_schedules(setup, runs, plots_dir / f"{setup.name}_schedules.png", refs)
