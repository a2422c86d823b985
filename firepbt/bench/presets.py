"""The comparison benches as presets over :func:`firepbt.compare.compare`.

``firepbt bench toys|nqm|fmnist|rl|teacher-student|fire-init|fire-init-deceptive|fire-robust|
async-sync [--preset quick|full] [--seeds N] [--json]`` runs one :class:`Preset`: a few tables,
each one
``compare()`` on one task (its methods, worker budget, run settings, hand-tuned baselines in
the schedule language of ``firepbt.schedules``), then prints every table. There is no second
harness: a bench is exactly what ``firepbt compare`` would run with the same settings, and its
folder (``runs/bench/NAME-PRESET/TABLE``) holds the same ``compare.json`` and ``compare.html``.
Like any comparison it resumes: runs already in the folder are not trained again (delete the
folder to measure afresh; a changed setting or algorithm default is refused, naming it).

Common set-up (unless a table says otherwise): every method gets the same worker budget W
(FIRE: members + evaluators; the others W members), in-process synchronous runs (exactly
reproducible from the seed), two runs at a time, seeds 0..N-1. The answer of a run is P1's
best member (``Result.best_metric``). Tuned baselines pick their peak on a grid by the mean
metric over tuning seeds 10000.. (apart from the test seeds), and report that tuning compute.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from firepbt.algorithms import PBT, Algorithm, RandomSearch
from firepbt.algorithms.fire import FirePBT
from firepbt.algorithms.pb2 import PB2
from firepbt.compare import Method, better_p, compare
from firepbt.errors import ConfigError
from firepbt.space import LogUniform, Space
from firepbt.tasks.toys import DeceptiveToy, PlainToy

SIZES = ("quick", "full")
JOBS = 2  # runs at a time: the machine has 2 cores and is shared
POPULATION = 22  # FIRE's default 8 + 8 + 6; PBT and random search get all 22 as members
# Peak learning rates tried for the NQM's hand-tuned schedules: a factor 2**(1/4) grid from 1/4
# to 1.0, the top of the search space FIRE and PBT draw from (so every method has the same
# learning rates to choose from; the NQM itself tolerates up to 2 / max curvature = 2).
PEAK_GRID = tuple(2.0 ** (k / 4) for k in range(-8, 1))
TUNING_SEEDS = (10_000, 10_001, 10_002)  # disjoint from the test seeds 0..N-1
STEP_DECAY = "lr=step({peak}, 0.1, 0.5, 0.75)"  # x0.1 at 50 % and again at 75 %
COSINE = "lr=cosine({peak})"  # half a cosine from the peak down to 0


def schedule_free(warmup_steps: int) -> str:
    """Schedule-Free SGD (Defazio et al. 2024) at a constant learning rate after a linear
    warm-up: the baseline without a schedule. It takes about ten times SGD's learning rate, so
    its peak is ten times the grid's."""
    return f"lr=constant({{peak*10}}); optimizer=schedulefree; warmup_steps={warmup_steps}"


class PlainFullRange(PlainToy):
    """Plain toy whose members start anywhere in SPACE (random search never explores)."""

    INIT_SPACE: ClassVar[Space] = PlainToy.SPACE


class DeceptiveFullRange(DeceptiveToy):
    """Deceptive toy whose members start anywhere in SPACE (random search never explores)."""

    INIT_SPACE: ClassVar[Space] = DeceptiveToy.SPACE


def _method(name: str, label: str, algorithm: Any, **kw: Any) -> Method:
    return Method(name, algorithm, label, **kw)


FIRE = _method("fire", "FIRE PBT", lambda w: FirePBT(population=w))
PBT_ = _method("pbt", "PBT", lambda w: PBT(population=w))
PB2_ = _method("pb2", "PB2", lambda w: PB2(population=w))
RANDOM = _method("random", "random search", lambda w: RandomSearch(population=w))


def _fire_ranked(rank_at: str) -> Any:
    return lambda w: FirePBT(population=w, pbt=PBT(rank_at=rank_at))


# FIRE on the NQM in synchronous in-process rounds (the reference) against asynchronous mode on
# 2 process workers, with the equal-step ranking (default) and the old latest-value ranking
# inside every sub-population, and asynchronous in-process (the same staggering, no timing).
ASYNC_ROWS = (
    _method("sync-inprocess", "sync-inprocess", lambda w: FirePBT(population=w)),
    _method("async-process", "async-process", _fire_ranked("equal_step"),
            executor="process", mode="async", processes=2),
    _method("async-process-latest", "async-process-latest", _fire_ranked("latest"),
            executor="process", mode="async", processes=2),
    _method("async-inprocess-latest", "async-inprocess-latest", _fire_ranked("latest"),
            mode="async", processes=2),
)


def _fire_init(init: str, gp_fit: str) -> Any:
    # parent_factor=None: the explore of the time, so that the table in results.md reproduces.
    return lambda w: FirePBT(population=w, init=init, gp_fit=gp_fit, parent_factor=None)


def _pbt_init(init: str) -> Any:
    return lambda w: PBT(population=w, init=init)


# i.i.d. against Latin hypercube initial hyperparameters, and FIRE's GP fitted by
# scikit-learn against the grid; the reference row is FIRE's old defaults (iid, sklearn).
INIT_ROWS = (
    _method("fire-iid-sklearn", "fire-iid-sklearn", _fire_init("iid", "sklearn")),
    _method("fire-lhs-sklearn", "fire-lhs-sklearn", _fire_init("lhs", "sklearn")),
    _method("fire-iid-grid", "fire-iid-grid", _fire_init("iid", "grid")),
    _method("fire-lhs-grid", "fire-lhs-grid", _fire_init("lhs", "grid")),
    _method("pbt-iid", "pbt-iid", _pbt_init("iid")),
    _method("pbt-lhs", "pbt-lhs", lambda w: PBT(population=w)),
)


def _fire_parent_factor(factor: float | None, transfer_to: str = "child") -> Any:
    return lambda w: FirePBT(population=w, parent_factor=factor, transfer_to=transfer_to)


# Robustness Decisions (fire-pbt.md section 12, issue #11), each on its own against FIRE as it
# was before them (P2 explores like P1, x1.2): a wider explore step inside the parent
# sub-population P2 (x1.5, or x2: the default since), and transfers onto P1's worst member
# instead of the child. PBT rows: the comparison, and (NQM) the i.i.d. PBT row whose 10th
# percentile defines "at PBT's level" as in the fire-init bench.
ROBUST_ROWS = (
    _method("fire", "FIRE PBT", _fire_parent_factor(None)),
    _method("fire-parent-x1.5", "fire-parent-x1.5", _fire_parent_factor(1.5)),
    _method("fire-parent-x2", "fire-parent-x2", _fire_parent_factor(2.0)),
    _method("fire-transfer-worst", "fire-transfer-worst", _fire_parent_factor(None, "worst")),
    PBT_,
)


def _fire_evaluators(share: float) -> Any:
    return lambda w: FirePBT(population=w, evaluators=max(1, round(share * w)))


# The two robustness Decisions measured second (issue #11), each against the default FIRE: the
# evaluators' share of the workers (default round(0.28 W): 6 of 22; here 3 and 9, the members
# sharing the rest), and how free evaluators pick among parents none of which has been
# evaluated yet (default: the lower id; "fittest": the better task fitness first).
EVALUATOR_ROWS = (
    FIRE,
    _method("fire-evaluators-0.14", "fire-evaluators-0.14", _fire_evaluators(0.14)),
    _method("fire-evaluators-0.41", "fire-evaluators-0.41", _fire_evaluators(0.41)),
    _method("fire-parents-fittest", "fire-parents-fittest",
            lambda w: FirePBT(population=w, parent_order="fittest")),
    PBT_,
)


@dataclass(frozen=True)
class Table:
    """One ``compare()`` of a bench, and how its table prints.

    Attributes:
        key: the table's name ("deceptive", "nqm", ...) and its folder.
        task: the task (a built-in name or ``module:Name``).
        methods: the rows (:class:`firepbt.compare.Method`).
        baselines: hand-tuned schedules by short name ({peak}: tuned on ``peaks``).
        settings: more keyword arguments of ``compare()`` (steps, space, test, ...).
        value: what a run's value is called in print; ``negate``: print ``-value`` (the NQM
            reports its loss, the task's metric is minus the loss).
        reference: the row the p-values compare against.
        report: "value" (the metric) or "test" (``compare(test=...)``: held-out data).
    """

    key: str
    task: str
    methods: tuple[Method, ...]
    baselines: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    value: str = "objective"
    negate: bool = False
    reference: str = "fire"
    report: str = "value"
    workers: int = POPULATION
    auc: bool = False  # also print the area under each answer's curve (its mean value)


@dataclass(frozen=True)
class Preset:
    """A comparison bench: its tables and seeds for each size (``quick``, ``full``)."""

    name: str
    seeds: Mapping[str, int]
    tables: Mapping[str, tuple[Table, ...]]
    pbt_level: str | None = None  # fire-init: count FIRE seeds at this row's 10th percentile


def _both(*tables: Table) -> dict[str, tuple[Table, ...]]:
    return {size: tables for size in SIZES}


def _nqm(methods: tuple[Method, ...], reference: str = "fire", tuned: bool = True) -> Table:
    """The noisy quadratic model's learning rate (the loss relative to the start, lower is
    better); ``tuned``: with step decay and cosine, their peak tuned on :data:`PEAK_GRID`,
    following the schedule step by step."""
    return Table(
        "nqm", "nqm", methods,
        {"step": STEP_DECAY, "cosine": COSINE} if tuned else {},
        {"peaks": PEAK_GRID, "tuning_seeds": TUNING_SEEDS, "schedule_every": 1} if tuned else {},
        value="loss", negate=True, reference=reference,
    )


FMNIST_SPACE = Space(lr=LogUniform(1e-3, 0.1), momentum=0.9, weight_decay=0.0, eval_size=1000,
                     optimizer="sgd", warmup_steps=0)


def _fmnist(workers: int, steps: int, interval: int, eval_every: int,
            peaks: tuple[float, ...]) -> Table:
    """Fashion-MNIST MLP, only ``lr`` tuned; fitness on 1,000 validation images, the reported
    value the answer's accuracy on the 10,000 test images, measured once at the end."""
    return Table("fmnist", "fmnist", (FIRE, PBT_, PB2_, RANDOM),
                 {"step": STEP_DECAY, "cosine": COSINE,
                  "schedule-free": schedule_free(steps // 20)},
                 {"space": FMNIST_SPACE, "steps": steps, "interval": interval,
                  "eval_every": eval_every, "peaks": peaks, "tuning_seeds": (10_000,),
                  "schedule_every": 1, "test": "test_accuracy"},
                 value="test accuracy", report="test", workers=workers)


# A2C's tuned schedule: the learning rate decays linearly from its peak to 0 (the usual A2C
# recipe, e.g. Stable-Baselines3's linear schedule), at the common fixed entropy cost 0.01.
A2C_LINEAR = "lr=linear({peak}, 0); entropy_cost=constant(0.01)"
# Its peaks: a factor-2 grid up to the top of the search space LogUniform(1e-4, 1e-2) (a
# constant lr of 1e-4 hardly learns Acrobot in 1,000 updates; 3e-3 does; a decaying lr may
# start higher: 8e-3 was the best of 1e-3..8e-3 in a first tuning at 600 updates).
A2C_PEAKS = (1.25e-3, 2.5e-3, 5e-3, 1e-2)


def a2c_schedule_free(warmup_steps: int) -> str:
    """Schedule-Free AdamW at a constant lr (tuned on the same peaks as the linear decay)
    after a linear warm-up, at the same fixed entropy cost: A2C without a schedule."""
    return (f"lr=constant({{peak}}); optimizer=schedulefree-adam; warmup_steps={warmup_steps}; "
            "entropy_cost=constant(0.01)")


def _rl(workers: int, steps: int, interval: int, eval_every: int,
        peaks: tuple[float, ...] = A2C_PEAKS, tuning: tuple[int, ...] = TUNING_SEEDS,
        key: str = "rl", task: str = "acrobot") -> Table:
    """A2C on Acrobot-v1 tuning lr and entropy_cost; fitness: mean return of the last 20
    episodes. The area under the answer's curve is printed too. The tuned schedule
    (:data:`A2C_LINEAR`) follows its lr step by step; its peak is tuned on ``peaks`` over the
    ``tuning`` seeds."""
    return Table(key, task, (FIRE, PBT_, PB2_, RANDOM),
                 {"linear": A2C_LINEAR, "schedule-free": a2c_schedule_free(steps // 20)},
                 {"steps": steps, "interval": interval, "eval_every": eval_every,
                  "peaks": peaks, "tuning_seeds": tuning, "schedule_every": 1},
                 value="final return", workers=workers, auc=True)


def _lunar_lander(workers: int = 12, steps: int = 1500, interval: int = 50,
                  eval_every: int = 5) -> Table:
    """The same table on LunarLander-v3 (Box2D). Not in a preset: at about 66 ms per update
    (5x Acrobot's) 10 seeds x 4 population rows of W = 12 x 1,500 updates is ~13 CPU-hours,
    beyond this machine. Run it with
    ``presets.main("rl", "full", tables=(presets._lunar_lander(),))``. Its peak grid is lower
    than Acrobot's: a constant lr of 1e-3 learns LunarLander."""
    return _rl(workers, steps, interval, eval_every, peaks=(5e-4, 1e-3, 2e-3, 4e-3),
               key="lunarlander", task="lunarlander")


def _teacher_student(steps: int, eval_every: int, peaks: tuple[float, ...],
                     tuning: tuple[int, ...]) -> Table:
    """Online teacher-student regression (the task where greed is punished); populations on
    the batched executor (all 22 workers in one batch), baselines one member at a time (the
    batched task agrees with the single one up to float rounding). Reported: FVU (lower)."""
    batched = "firepbt.tasks.batched_teacher_student:BatchedTeacherStudent"
    rows = tuple(Method(m.name, m.algorithm, m.label, task=batched, executor="batched",
                        processes=POPULATION) for m in (FIRE, PBT_, PB2_, RANDOM))
    return Table("teacher-student", "teacher-student", rows,
                 {"step": STEP_DECAY, "cosine": COSINE,
                  "schedule-free": schedule_free(steps // 20)},
                 {"steps": steps, "interval": 200, "eval_every": eval_every, "peaks": peaks,
                  "tuning_seeds": tuning, "schedule_every": 1},
                 value="FVU", negate=True)


PRESETS: dict[str, Preset] = {
    "toys": Preset("toys", {"quick": 3, "full": 20}, _both(
        Table("deceptive", "deceptive",
              (FIRE, PBT_, PB2_, Method("random", RANDOM.algorithm, RANDOM.label,
                                        task="firepbt.bench.presets:DeceptiveFullRange"))),
        Table("plain", "plain",
              (FIRE, PBT_, PB2_, Method("random", RANDOM.algorithm, RANDOM.label,
                                        task="firepbt.bench.presets:PlainFullRange"))),
    )),
    "nqm": Preset("nqm", {"quick": 3, "full": 20},
                  _both(_nqm((FIRE, PBT_, PB2_, RANDOM)))),
    "fmnist": Preset("fmnist", {"quick": 2, "full": 5}, {
        "quick": (_fmnist(10, 200, 50, 5, (0.03, 0.1)),),
        "full": (_fmnist(16, 1600, 100, 10, (0.01, 0.03, 0.1)),),
    }),
    "rl": Preset("rl", {"quick": 2, "full": 10}, {
        "quick": (_rl(8, 60, 20, 2, (2e-3, 4e-3), (10_000,)),),
        "full": (_rl(12, 300, 30, 3),),
    }),
    "teacher-student": Preset("teacher-student", {"quick": 2, "full": 10}, {
        "quick": (_teacher_student(1000, 25, (0.01, 0.03, 0.1), (10_000,)),),
        "full": (_teacher_student(4000, 25, tuple(0.01 * 2 ** (k / 2) for k in range(6)),
                                  (10_000, 10_001)),),
    }),
    "fire-init": Preset("fire-init", {"quick": 3, "full": 20}, _both(
        _nqm(INIT_ROWS, reference="fire-iid-sklearn", tuned=False),
    ), pbt_level="pbt-iid"),
    "fire-init-deceptive": Preset("fire-init-deceptive", {"quick": 3, "full": 20}, _both(
        Table("deceptive", "deceptive", INIT_ROWS, reference="fire-iid-sklearn"),
    )),
    "fire-robust": Preset("fire-robust", {"quick": 3, "full": 20}, _both(
        _nqm((*ROBUST_ROWS, _method("pbt-iid", "pbt-iid", _pbt_init("iid"))), tuned=False),
        Table("deceptive", "deceptive", ROBUST_ROWS),
        Table("plain", "plain", ROBUST_ROWS),
    ), pbt_level="pbt-iid"),
    "fire-evaluators": Preset("fire-evaluators", {"quick": 3, "full": 20}, _both(
        _nqm((*EVALUATOR_ROWS, _method("pbt-iid", "pbt-iid", _pbt_init("iid"))), tuned=False),
        Table("deceptive", "deceptive", EVALUATOR_ROWS),
        Table("plain", "plain", EVALUATOR_ROWS),
    ), pbt_level="pbt-iid"),
    "async-sync": Preset("async-sync", {"quick": 3, "full": 20}, _both(
        _nqm(ASYNC_ROWS, reference="sync-inprocess", tuned=False),
    )),
}


def main(name: str = "toys", preset: str = "quick", seeds: int | None = None,
         out: str | Path | None = None, jobs: int = JOBS,
         tables: tuple[Table, ...] | None = None) -> dict[str, Any]:
    """Run bench ``name`` through ``compare()``, print its tables, return its figures.

    Args:
        name: a key of :data:`PRESETS`.
        preset: "quick" or "full".
        seeds: seeds 0..seeds-1, overriding the preset's.
        out: the folder; each table's comparison goes to ``out/NAME-PRESET/TABLE``. Default:
            ``$FIREPBT_BENCH_DIR``, else ``runs/bench``. Each run's checkpoints sit beside
            its store, and on a disk every checkpoint pays its fsyncs: a tmpfs folder
            (``FIREPBT_BENCH_DIR=/dev/shm/firepbt-bench``) made an NQM PBT run 4x faster here
            (1.9 s against 7.5 s), at the price of losing the runs at a reboot.
        jobs: runs at the same time.
        tables: other tables than the preset's (tests shrink them).

    Returns:
        ``{"bench", "preset", "seeds", "tables": {key: table}, "wall_s"}``; each table holds
        what it printed (``rows``: per method the values as printed, their statistics and
        the one-sided Mann-Whitney p-values against the reference) and its ``folder``,
        whose ``compare.json`` holds the whole ``compare()`` summary.
    """
    if name not in PRESETS:
        raise ConfigError(f"bench {name!r}: not a comparison; expected one of "
                          f"{', '.join(PRESETS)}")
    p = PRESETS[name]
    if preset not in SIZES:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(SIZES)}")
    n = seeds if seeds is not None else p.seeds[preset]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"seeds={seeds!r}: must be an integer >= 1")
    if out is None:
        out = os.environ.get("FIREPBT_BENCH_DIR") or "runs/bench"
    tables = tables if tables is not None else p.tables[preset]
    for table in tables:  # before any training: the p-values need their reference row
        names = [m.name for m in table.methods]
        if table.reference not in names:
            raise ConfigError(f"table {table.key!r}: reference={table.reference!r} must be one "
                              f"of its methods ({', '.join(names)})")
    t0 = time.perf_counter()
    out_tables: dict[str, Any] = {}
    for table in tables:
        folder = Path(out) / f"{name}-{preset}" / table.key
        print(f"{table.key}: {n} seeds x {len(table.methods)} methods"
              + (f" + {len(table.baselines)} hand-tuned schedules" if table.baselines else "")
              + f" -> {folder}", flush=True)
        summary = compare(
            table.task, methods=table.methods, seeds=n, workers=table.workers,
            baselines=tuple(table.baselines.values()), out=folder, executor="inprocess",
            mode="sync", processes=1, jobs=jobs, log=lambda line: print(f"  {line}", flush=True),
            **table.settings,
        )
        figures = figures_of(table, summary, p.pbt_level)
        print(format_table(figures), flush=True)
        # The whole summary (schedules, curves) is in the folder's compare.json; the bench's
        # own JSON stays a line a person can read.
        out_tables[table.key] = {**figures, "folder": str(folder)}
    return {"bench": name, "preset": preset, "seeds": n, "tables": out_tables,
            "wall_s": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def figures_of(table: Table, summary: dict[str, Any], pbt_level: str | None = None
               ) -> dict[str, Any]:
    """The printed figures of one table, from its ``compare()`` summary."""
    plan = summary["plan"]
    keys = {f"baseline:{i}": short for i, short in enumerate(table.baselines)}
    sign = -1.0 if table.negate else 1.0
    higher = summary["metric"].endswith("(higher is better)") != table.negate
    rows: dict[str, Any] = {}
    for key, m in summary["methods"].items():
        block = m["test"] if table.report == "test" else m
        values = [None if v is None else sign * v for v in block["values"]]
        done = [v for v in values if v is not None]
        row: dict[str, Any] = {
            "label": m["label"], "values": values, "n": len(done),
            "mean": statistics.fmean(done) if done else None,
            "std": statistics.stdev(done) if len(done) > 1 else 0.0,
            "median": statistics.median(done) if done else None,
            "min": min(done) if done else None, "max": max(done) if done else None,
            "wall_s": m["wall_s"],
        }
        for extra in ("peak", "tuning", "tuning_worker_steps", "exploits", "transfers",
                      "lineage_transfers", "stop_reasons"):
            if extra in m:
                row[extra] = m[extra]
        if table.auc:
            row["auc"] = [None if a is None else sign * a for a in m["auc"]]
        rows[keys.get(key, key)] = row
    ref_key = keys.get(table.reference, table.reference)
    ref = summary["methods"][table.reference]
    ref_block = ref["test"] if table.report == "test" else ref
    p_ref = {keys.get(k, k): v for k, v in ref_block["p_better_than"].items()}
    p_rev = {keys.get(k, k): (summary["methods"][k]["test"] if table.report == "test"
                              else summary["methods"][k])["p_better_than"][table.reference]
             for k in summary["methods"] if k != table.reference}
    out: dict[str, Any] = {
        "task": table.key, "value": table.value, "higher_is_better": higher,
        "workers": plan["workers"], "steps": plan["steps"], "interval": plan["interval"],
        "eval_every": plan["eval_every"], "seeds": list(range(len(ref["values"]))),
        "worker_steps_per_run": plan["workers"] * plan["steps"], "reference": ref_key,
        "rows": rows, "p_reference_better": p_ref, "p_better_than_reference": p_rev,
    }
    if table.auc:  # the area under the curve is judged like the final value, both ways
        ref_auc = rows[ref_key]["auc"]
        out["auc_p"] = {k: (_auc_p(ref_auc, r["auc"], higher), _auc_p(r["auc"], ref_auc, higher))
                        for k, r in rows.items() if k != ref_key}
    fire = next((m for m in table.methods if m.name == table.reference), None)
    alg: Algorithm | None = fire.algorithm(plan["workers"]) if fire is not None else None
    if isinstance(alg, FirePBT) and "evaluator_steps" in ref:
        n_eval = alg.n_evaluators
        out["fire"] = {
            "subpop_sizes": list(alg.sizes), "evaluators": n_eval,
            "transfers": ref["transfers"], "lineage_transfers": ref["lineage_transfers"],
            "stop_reasons": ref["stop_reasons"],
            # Share of the evaluators' steps (n_eval x steps) they actually trained.
            "evaluator_budget_used": statistics.fmean(
                s / (n_eval * plan["steps"]) for s in ref["evaluator_steps"]),
        }
    if pbt_level is not None and not higher and pbt_level in rows:
        import numpy as np

        vals = [v for v in rows[pbt_level]["values"] if v is not None]
        threshold = float(np.percentile(vals, 10))
        out["pbt_level"] = {
            "row": pbt_level, "threshold": threshold,
            "counts": {k: sum(1 for v in r["values"] if v is not None and v >= threshold)
                       for k, r in rows.items() if k.startswith("fire")},
        }
    return out


def _num(x: float | None, width: int, digits: int = 5) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_table(t: dict[str, Any]) -> str:
    """Plain text: one row per method, the per-seed values, the one-sided Mann-Whitney
    p-values against the reference row, and FIRE's diagnostics."""
    better = "higher" if t["higher_is_better"] else "lower"
    lines = [f"{t['task']}: {t['value']} ({better} is better), W = {t['workers']} workers x "
             f"{t['steps']} steps, {len(t['seeds'])} seeds"]
    width = max(8, *(len(k) for k in t["rows"]))
    lines.append(f"  {'method':<{width}} {'mean':>10} {'std':>9} {'median':>10} {'min':>10} "
                 f"{'max':>10} {'exploits':>8} {'transfers':>9}")
    for k, r in t["rows"].items():
        counts = "".join(
            f" {statistics.fmean(r[c]):>{w}.1f}" if c in r else f" {'-':>{w}}"
            for c, w in (("exploits", 8), ("transfers", 9)))
        extra = f"  (peak lr {r['peak']:.3g})" if "peak" in r else ""
        lines.append(f"  {k:<{width}} {_num(r['mean'], 10)} {_num(r['std'], 9)} "
                     f"{_num(r['median'], 10)} {_num(r['min'], 10)} {_num(r['max'], 10)}"
                     f"{counts}{extra}")
    for k, r in t["rows"].items():
        lines.append(f"  {k:<{width}} per seed: " + " ".join(
            "failed" if v is None else f"{v:.4f}" for v in r["values"]))
    for k, r in t["rows"].items():
        if "auc" in r:
            aucs = [a for a in r["auc"] if a is not None]
            spread = (f"{statistics.fmean(aucs):.4g} (std {statistics.stdev(aucs):.3g}, median "
                      f"{statistics.median(aucs):.4g})" if len(aucs) > 1 else
                      f"{aucs[0]:.4g}" if aucs else "-")
            lines.append(f"  {k:<{width}} area under the answer's curve: {spread}")
    ref = t["reference"]
    for k, p in t["p_reference_better"].items():
        q = t["p_better_than_reference"][k]
        lines.append(f"  one-sided Mann-Whitney p({ref} better than {k}) = {_p(p)}; "
                     f"p({k} better than {ref}) = {_p(q)}")
    for k, (p, q) in t.get("auc_p", {}).items():
        lines.append(f"  area under the curve: p({ref} better than {k}) = {_p(p)}; "
                     f"p({k} better than {ref}) = {_p(q)}")
    if "fire" in t:
        f = t["fire"]
        lines.append(f"  FIRE {f['subpop_sizes']} + {f['evaluators']} evaluators; transfers "
                     f"per seed {f['transfers']}, in the answer's lineage "
                     f"{f['lineage_transfers']}")
        lines.append(f"  FIRE evaluator stops {f['stop_reasons']}; evaluator budget used "
                     f"{f['evaluator_budget_used']:.0%}")
    level = t.get("pbt_level")
    if level is not None:
        lines.append(f"  seeds at PBT's level (loss >= {level['threshold']:.4f}, the 10th "
                     f"percentile of {level['row']}'s losses): "
                     + ", ".join(f"{k} {c}/{len(t['seeds'])}" for k, c in level["counts"].items()))
    return "\n".join(lines)


def _auc_p(a: list[float | None], b: list[float | None], higher: bool) -> float | None:
    """One-sided Mann-Whitney p of "``a``'s areas are better than ``b``'s" (None under 2 runs
    each)."""
    x = [v for v in a if v is not None]
    y = [v for v in b if v is not None]
    return better_p(x, y, higher) if len(x) > 1 and len(y) > 1 else None


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"
