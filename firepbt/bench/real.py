"""FIRE PBT against PBT, random search and hand-tuned schedules on real training.

``firepbt bench teacher-student|fmnist|rl [--preset quick|full] [--seeds N] [--json]``.

Tasks (see :data:`PRESETS` for the exact sizes):

* ``teacher-student`` - online teacher-student regression (spec fire-pbt.md section 11), the
  task where greed is punished: a learning rate lowered early wins for a while and ends worse.
  Population runs use the :class:`~firepbt.executors.batched.BatchedExecutor` (all workers in
  one batch). Reported value: FVU of the answer (lower is better).
* ``fmnist`` - MLP 784-256-256-10 on Fashion-MNIST with SGD momentum 0.9 and only ``lr``
  tuned; fitness is accuracy on 1,000 validation images (held out of the 60k), the reported
  value the answer's accuracy on the 10,000 test images, computed once at the end.
* ``rl`` - A2C on Acrobot-v1 tuning ``lr`` and ``entropy_cost``; fitness is the mean return
  of the last 20 episodes. Reported: the answer's final return and the area under its
  learning curve (mean return over the curve points of the answer's lineage).

Every population method gets the same worker budget: FIRE's members *and* evaluators count as
workers, PBT and random search run that many members, every worker trains ``steps`` steps. The
answer of a run is P1's best member by its final fitness (``Result.best``). Hand-tuned
schedules (step decay x0.1 at 50 % and 75 %, and cosine to 0) train one member per seed; their
peak learning rate is chosen on a grid by the mean final *fitness* (FVU / validation accuracy)
over separate tuning seeds, and that tuning compute is reported in worker-steps. RL has no
hand-tuned schedule (see ``docs/results-real.md``).

``main`` returns (and the CLI prints as JSON)::

    {"bench", "preset", "seeds", "config", "table", "plots", "wall_s"}

``table`` holds ``task``, ``metric``, ``higher_is_better``, ``worker_steps_per_run``,
``methods`` (per method: :func:`~firepbt.bench.compare.describe` of the values by seed, plus
``runs``: per seed the value, the learned ``schedule`` [start, end, lr] of the answer's
lineage and its ``curve`` [step, value]), ``p_fire_better`` (one-sided Mann-Whitney p-values of
FIRE against each other method), ``fire`` (transfers, stop reasons, evaluator budget used) and,
for RL, ``auc`` (the same statistics and p-values for the area under the curve).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from firepbt.algorithms import PBT, Algorithm, RandomSearch
from firepbt.algorithms.fire import FirePBT
from firepbt.api import run
from firepbt.bench._pool import pool_map
from firepbt.bench.compare import (
    SCHEDULES,
    describe,
    fast_scratch,
    fire_better_p,
    median_run,
    method_table_lines,
    run_diagnostics,
    step_xy,
)
from firepbt.errors import ConfigError
from firepbt.result import Result
from firepbt.space import LogUniform, Space

TASKS = ("teacher-student", "fmnist", "rl")
POPULATION_METHODS = ("fire", "pbt", "random")
PROCESSES = 2  # the machine has 2 cores and is shared
TUNING_SEED0 = 10_000  # tuning seeds 10000.. are disjoint from the evaluation seeds 0..N-1

#: Fashion-MNIST with only the learning rate tuned (the task's SPACE also tunes momentum and
#: weight decay); 1,000 validation images keep the frequent fitness evaluations cheap.
FMNIST_SPACE = Space(lr=LogUniform(1e-3, 0.1), momentum=0.9, weight_decay=0.0, eval_size=1000)


@dataclass(frozen=True)
class Config:
    """The size of one benchmark run.

    Attributes:
        population: the worker budget W (FIRE: members + evaluators; others: W members).
        steps, interval, eval_every: training steps per worker, steps between ready points,
            steps between curve points.
        seeds: seeds per method.
        peaks: peak learning rates tried for the hand-tuned schedules (empty: none).
        tuning_seeds: how many seeds each peak is tried on.
    """

    population: int
    steps: int
    interval: int
    eval_every: int
    seeds: int
    peaks: tuple[float, ...] = ()
    tuning_seeds: int = 0

    def __post_init__(self) -> None:
        for key in ("population", "steps", "interval", "eval_every", "seeds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be an integer >= 1")
        if self.peaks and self.tuning_seeds < 1:
            raise ConfigError(f"tuning_seeds={self.tuning_seeds!r}: must be >= 1 with peaks")


# Sizes. Teacher-student is the spec's regime (22 workers x 4,000 steps, ready every 200).
# FIRE's sign test at p = 0.01 needs >= 7 curve points per ready interval, which sets
# eval_every; every method uses the same curve spacing.
# Fashion-MNIST and RL are scaled down to fit the 2-core machine (see docs/results-real.md).
PRESETS: dict[str, dict[str, Config]] = {
    "teacher-student": {
        "quick": Config(22, 1000, 200, 25, 2, (0.01, 0.03, 0.1), 1),
        "full": Config(22, 4000, 200, 25, 5,
                       tuple(0.01 * 2 ** (k / 2) for k in range(6)), 2),
    },
    "fmnist": {
        "quick": Config(10, 200, 50, 5, 2, (0.03, 0.1), 1),
        "full": Config(16, 1600, 100, 10, 5, (0.01, 0.03, 0.1), 1),
    },
    "rl": {
        "quick": Config(8, 60, 20, 2, 2),
        "full": Config(12, 480, 60, 8, 5),
    },
}

METRICS = {  # task -> (name of the reported value, higher is better)
    "teacher-student": ("FVU", False),
    "fmnist": ("test accuracy", True),
    "rl": ("final return", True),
}


def algorithm(method: str, population: int) -> Algorithm:
    """The population method ``method`` with a worker budget of ``population``."""
    if method == "fire":
        return FirePBT(population=population)
    if method == "pbt":
        return PBT(population=population)
    if method == "random":
        return RandomSearch(population=population)
    raise ConfigError(f"method={method!r}: must be one of {', '.join(POPULATION_METHODS)}")


# --------------------------------------------------------------------------------------------
# Population runs
# --------------------------------------------------------------------------------------------


def _run_task(task: str, cfg: Config, method: str, seed: int) -> Result:
    common: dict[str, Any] = {
        "algorithm": algorithm(method, cfg.population), "steps": cfg.steps,
        "interval": cfg.interval, "eval_every": cfg.eval_every, "store": "memory://",
        "seed": seed, "mode": "sync",
    }
    if task == "teacher-student":
        from firepbt.executors.batched import BatchedExecutor
        from firepbt.tasks.batched_teacher_student import BatchedTeacherStudent

        # Capacity = population: every sync round is one batch of all workers.
        ex = BatchedExecutor(BatchedTeacherStudent, capacity=cfg.population)
        return run(BatchedTeacherStudent, executor=ex, **common)
    if task == "fmnist":
        from firepbt.tasks.fmnist import FashionMNISTMLP

        return run(FashionMNISTMLP, space=FMNIST_SPACE, executor="inprocess", **common)
    if task == "rl":
        from firepbt.tasks.rl import AcrobotA2C

        return run(AcrobotA2C, executor="inprocess", **common)
    raise ConfigError(f"task={task!r}: must be one of {', '.join(TASKS)}")


def _test_accuracy(result: Result, worker: int) -> float:
    """Accuracy of ``worker``'s final weights on the 10k test images (reporting only)."""
    from firepbt.tasks.fmnist import FashionMNISTMLP

    rec = result.store.checkpoint(result.store.worker(worker).checkpoint)  # type: ignore[arg-type]
    member = FashionMNISTMLP()
    member.setup(rec.hparams, 0)
    member.load(Path(rec.path))
    return member.test_accuracy()


def reported(task: str, metric: float) -> float:
    """The table's value for a fitness: FVU for the teacher-student (fitness is -FVU)."""
    return -metric if task == "teacher-student" else metric


def run_population(task: str, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    """Train one population of ``task`` with ``method`` and summarise its answer.

    Returns:
        ``method``, ``seed``, ``value`` (the reported number), ``fitness`` (the answer's final
        fitness), ``auc`` (mean reported value over the answer's curve), ``wall_s``,
        ``transfers``, ``exploits``, ``stop_reasons``, ``evaluator_steps``,
        ``lineage_transfers`` (schedule pieces trained by evaluators), ``schedule``
        ([start, end, lr] along the answer's lineage) and ``curve`` ([step, value]).
    """
    t0 = time.perf_counter()
    with fast_scratch():
        result = _run_task(task, cfg, method, seed)
        wall = time.perf_counter() - t0
        best, fitness = result.best, result.best_metric
        if best is None or fitness is None:
            raise RuntimeError(f"{task}/{method}/seed {seed}: no member has a valid metric")
        value = _test_accuracy(result, best) if task == "fmnist" else reported(task, fitness)
        curve = [[s, reported(task, v)] for s, v in result.current_curve(best)
                 if v is not None and math.isfinite(v)]
        out = {
            "method": method, "seed": seed, "value": value, "fitness": fitness,
            "auc": statistics.fmean(v for _, v in curve) if curve else float("nan"),
            "wall_s": round(wall, 1), **run_diagnostics(result, best, "lr"), "curve": curve,
        }
        result.store.close()
    return out


# --------------------------------------------------------------------------------------------
# Hand-tuned schedules
# --------------------------------------------------------------------------------------------


def _ts_schedules(
    cfg: Config, jobs: Sequence[tuple[str, float, int]], eval_every: int
) -> list[dict[str, Any]]:
    """Teacher-student members trained with fixed schedules, all in one batch.

    ``jobs`` are (schedule, peak, seed); each becomes one slot whose lr is set every step.
    """
    from firepbt.tasks.batched_teacher_student import BatchedTeacherStudent

    fns = [SCHEDULES[name](peak, cfg.steps) for name, peak, _ in jobs]
    batch = BatchedTeacherStudent()
    batch.setup([{"lr": fn(0)} for fn in fns], [seed for _, _, seed in jobs])
    curves: list[list[list[float]]] = [[] for _ in jobs]
    for t in range(cfg.steps):
        for i, fn in enumerate(fns):
            batch.set_hparams(i, {"lr": fn(t)})
        batch.train(1)
        if (t + 1) % eval_every == 0 or t + 1 == cfg.steps:
            for i, v in enumerate(batch.fvus()):
                curves[i].append([t + 1, float(v)])
    return [{"value": c[-1][1], "fitness": -c[-1][1], "curve": c} for c in curves]


def _fmnist_schedule(job: tuple[Config, str, float, int, bool]) -> dict[str, Any]:
    """One Fashion-MNIST member trained with a fixed schedule (``job``: cfg, name, peak, seed,
    whether to measure the test accuracy)."""
    from firepbt.tasks.fmnist import FashionMNISTMLP

    cfg, name, peak, seed, test = job
    fn = SCHEDULES[name](peak, cfg.steps)
    constants = FMNIST_SPACE.constants()
    member = FashionMNISTMLP()
    member.setup({**constants, "lr": fn(0)}, seed)
    curve = []
    for t in range(cfg.steps):
        member.set_hparams({**constants, "lr": fn(t)})
        member.train(1)
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.steps:
            curve.append([t + 1, member.evaluate()])
    val = curve[-1][1]
    return {"value": member.test_accuracy() if test else val, "fitness": val, "curve": curve}


def run_schedules(
    task: str, cfg: Config, jobs: Sequence[tuple[str, float, int]], test: bool,
    processes: int = PROCESSES,
) -> list[dict[str, Any]]:
    """Hand-tuned schedule runs ``jobs`` = (schedule, peak, seed); one result per job.

    ``test`` asks for the reported value (Fashion-MNIST: test accuracy); tuning runs only
    need the fitness and a sparse curve.
    """
    if task == "teacher-student":
        with fast_scratch():
            return _ts_schedules(cfg, jobs, cfg.interval if test else cfg.steps)
    if task == "fmnist":
        args = [(cfg, name, peak, seed, test) for name, peak, seed in jobs]
        return _pool_map(_fmnist_schedule, args, processes)
    raise ConfigError(f"task={task!r}: hand-tuned schedules exist for teacher-student, fmnist")


def tune_and_run_schedules(
    task: str, cfg: Config, seeds: Sequence[int], processes: int = PROCESSES,
) -> dict[str, dict[str, Any]]:
    """Pick each schedule's peak by mean final fitness over tuning seeds, then run it on ``seeds``.

    Returns, per schedule: ``peak``, ``tuning`` (mean fitness per peak),
    ``tuning_worker_steps`` and ``runs`` (per seed: ``seed``, ``value``, ``curve``, ``schedule``).
    """
    names = tuple(SCHEDULES)
    tuning_seeds = [TUNING_SEED0 + k for k in range(cfg.tuning_seeds)]
    jobs = [(n, p, s) for n in names for p in cfg.peaks for s in tuning_seeds]
    outs = run_schedules(task, cfg, jobs, test=False, processes=processes)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        tuning = {}
        for peak in cfg.peaks:
            fits = [o["fitness"] for (n, p, _), o in zip(jobs, outs, strict=True)
                    if n == name and p == peak]
            tuning[peak] = statistics.fmean(fits)
        # A diverged peak has a NaN/-inf fitness and is never chosen.
        finite = {p: v for p, v in tuning.items() if math.isfinite(v)}
        best = max(finite, key=lambda p: finite[p])
        out[name] = {"peak": best, "tuning": {f"{p:.4g}": v for p, v in tuning.items()},
                     "tuning_worker_steps": len(cfg.peaks) * len(tuning_seeds) * cfg.steps}
    final_jobs = [(n, out[n]["peak"], s) for n in names for s in seeds]
    finals = run_schedules(task, cfg, final_jobs, test=True, processes=processes)
    for name in names:
        fn = SCHEDULES[name](out[name]["peak"], cfg.steps)
        # The schedule as pieces of constant lr per curve interval, like a learned one.
        schedule = [[s, s + 1, fn(s)] for s in range(0, cfg.steps, max(1, cfg.steps // 50))]
        out[name]["runs"] = [
            {"method": name, "seed": s, "value": o["value"], "fitness": o["fitness"],
             "auc": statistics.fmean(v for _, v in o["curve"]), "curve": o["curve"],
             "schedule": schedule}
            for (n, _, s), o in zip(final_jobs, finals, strict=True) if n == name
        ]
    return out


# --------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------


def _pool_map(fn: Callable[[Any], dict[str, Any]], jobs: Sequence[Any], processes: int,
              progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``fn`` over ``jobs`` in order, on a fork pool of ``processes`` (1: in this process);
    SIGTERM tears the pool down (:func:`firepbt.bench._pool.pool_map`)."""
    return pool_map(fn, jobs, processes, progress)


def _population_job(job: tuple[str, Config, str, int]) -> dict[str, Any]:
    return run_population(*job)


def compare(
    task: str, cfg: Config, processes: int = PROCESSES, verbose: bool = True
) -> dict[str, Any]:
    """Every method on ``cfg.seeds`` seeds; the table described in the module docstring."""
    metric, higher = METRICS[task]
    seeds = list(range(cfg.seeds))

    def progress(out: dict[str, Any]) -> None:
        if verbose:
            print(f"  {task} {out['method']:>6} seed {out['seed']:>2}: {out['value']:.5f} "
                  f"(auc {out['auc']:.4g}, {out['wall_s']:.0f} s, {out['transfers']} transfers)",
                  flush=True)

    jobs = [(task, cfg, m, s) for s in seeds for m in POPULATION_METHODS]
    outs = _pool_map(_population_job, jobs, processes, progress)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in POPULATION_METHODS}
    for out in outs:
        runs[out["method"]].append(out)
    methods: dict[str, Any] = {
        m: {**describe([r["value"] for r in rs]), "runs": rs,
            "wall_s": round(sum(r["wall_s"] for r in rs), 1)}
        for m, rs in runs.items()
    }
    if cfg.peaks:
        t0 = time.perf_counter()
        hand = tune_and_run_schedules(task, cfg, seeds, processes)
        for name, h in hand.items():
            methods[name] = {**describe([r["value"] for r in h["runs"]]), **h}
            if verbose:
                print(f"  {task} {name}: peak {h['peak']:.4g}, values "
                      + " ".join(f"{r['value']:.5f}" for r in h["runs"]), flush=True)
        hand_wall = round(time.perf_counter() - t0, 1)
        for name in hand:
            methods[name]["wall_s"] = hand_wall  # tuning and final runs of both schedules
    fire_vals = methods["fire"]["values"]
    table: dict[str, Any] = {
        "task": task, "metric": metric, "higher_is_better": higher, **asdict(cfg),
        "worker_steps_per_run": cfg.population * cfg.steps, "methods": methods,
        "p_fire_better": {m: fire_better_p(fire_vals, d["values"], higher)
                          for m, d in methods.items() if m != "fire"},
    }
    if task == "rl":
        aucs = {m: describe([r["auc"] for r in d["runs"]]) for m, d in methods.items()}
        table["auc"] = {"methods": aucs, "p_fire_better": {
            m: fire_better_p(aucs["fire"]["values"], a["values"], True)
            for m, a in aucs.items() if m != "fire"}}
    reasons: Counter[str] = Counter()
    for r in runs["fire"]:
        reasons.update(r["stop_reasons"])
    n_eval = FirePBT(population=cfg.population).n_evaluators
    table["fire"] = {
        "subpop_sizes": list(FirePBT(population=cfg.population).sizes),
        "evaluators": n_eval,
        "transfers": [r["transfers"] for r in runs["fire"]],
        "lineage_transfers": [r["lineage_transfers"] for r in runs["fire"]],
        "stop_reasons": dict(sorted(reasons.items())),
        "evaluator_budget_used": statistics.fmean(
            r["evaluator_steps"] / (n_eval * cfg.steps) for r in runs["fire"]),
    }
    return table


def format_table(table: dict[str, Any]) -> str:
    """Plain text: one row per method, per-seed values, p-values and FIRE's diagnostics."""
    lines = method_table_lines(table, table["seeds"])
    if "auc" in table:
        for m, d in table["auc"]["methods"].items():
            lines.append(f"  AUC {m:<8} {d['mean']:>9.2f} +- {d['std']:.2f}")
        for m, p in table["auc"]["p_fire_better"].items():
            lines.append(f"  AUC: p(FIRE better than {m}) = {p:.3g}")
    f = table["fire"]
    lines.append(f"  FIRE {f['subpop_sizes']} + {f['evaluators']} evaluators; transfers per "
                 f"seed {f['transfers']}, in the answer's lineage {f['lineage_transfers']}")
    lines.append(f"  FIRE evaluator stops {f['stop_reasons']}; evaluator budget used "
                 f"{f['evaluator_budget_used']:.0%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot(table: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Two figures: the median seed's lr schedule per method, and its metric curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = table["task"]
    paths = []
    for kind in ("schedules", "curves"):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for m, d in table["methods"].items():
            r = median_run(d["runs"])
            label = f"{m} (seed {r['seed']}, {r['value']:.4g})"
            style = "--" if m in SCHEDULES else "-"
            if kind == "schedules":
                xs, ys = step_xy(r["schedule"]) if m not in SCHEDULES else (
                    [p[0] for p in r["schedule"]], [p[2] for p in r["schedule"]])
            else:
                xs, ys = [p[0] for p in r["curve"]], [p[1] for p in r["curve"]]
            ax.plot(xs, ys, style, label=label)
        ax.set_xlabel("step")
        if kind == "schedules":
            ax.set_yscale("log")
            ax.set_ylabel("learning rate")
            ax.set_title(f"{task}: lr along the answer's lineage (median seed)")
        else:
            ax.set_ylabel({"fmnist": "validation accuracy",
                           "rl": "return (mean of the last 20 episodes)"}.get(task, "FVU"))
            if task == "teacher-student":
                ax.set_yscale("log")
            elif task == "fmnist":
                ax.set_ylim(0.8, 0.92)
            ax.set_title(f"{task}: the answer's curve along its lineage (median seed)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots_dir / f"real-{task}-{kind}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(
    name: str = "teacher-student", preset: str = "quick", seeds: int | None = None,
    processes: int = PROCESSES, plots_dir: Path | None = None, config: Config | None = None,
) -> dict[str, Any]:
    """Run the benchmark ``name`` and print its table.

    Args:
        name: "teacher-student", "fmnist" or "rl".
        preset: "quick" or "full" (sizes in :data:`PRESETS`; ``full`` also writes the plots).
        seeds: seeds per method, overriding the preset's.
        processes: size of the process pool over runs.
        plots_dir: where plots go; default ``docs/img`` for ``full``, none for ``quick``.
        config: explicit sizes instead of the preset's (tests use tiny ones).
    """
    if name not in TASKS:
        raise ConfigError(f"bench {name!r}: real runs one of {', '.join(TASKS)}")
    if preset not in PRESETS[name]:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(PRESETS[name])}")
    cfg = config if config is not None else PRESETS[name][preset]
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"seeds={seeds!r}: must be an integer >= 1")
        cfg = replace(cfg, seeds=seeds)
    if plots_dir is None and preset == "full" and config is None:
        plots_dir = Path("docs/img")
    t0 = time.perf_counter()
    print(f"{name} ({preset}): {cfg}", flush=True)
    table = compare(name, cfg, processes)
    print(format_table(table), flush=True)
    plots = [str(p) for p in plot(table, plots_dir)] if plots_dir is not None else []
    return {"bench": name, "preset": preset, "seeds": cfg.seeds, "config": asdict(cfg),
            "table": table, "plots": plots, "wall_s": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

