"""The ``firepbt`` command line: run, status, resume, report, export, check, bench, demo."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from firepbt.errors import FirePBTError

ALGORITHMS = ("pbt", "fire", "random")


def _algorithm(args: argparse.Namespace) -> Any:
    from firepbt.algorithms import PBT, RandomSearch

    pbt_kw: dict[str, Any] = {"exploit": args.exploit, "quantile": args.quantile}
    if args.algorithm == "pbt":
        return PBT(population=args.population, **pbt_kw)
    if args.algorithm == "random":
        return RandomSearch(population=args.population)
    from firepbt.algorithms.fire import FirePBT

    return FirePBT(population=args.population, pbt=PBT(population=2, **pbt_kw),
                   smoother=args.smoother)


class _Progress:
    """A live progress bar (rich) fed by the controller after every handled result."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} member-steps"),
                TextColumn("{task.fields[best]}"), TimeElapsedColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("training", total=1, best="")
        return self

    def __call__(self, ctl: Any) -> None:
        done, total = ctl.progress()
        best = ctl.best()
        text = f"best member {best[0]}: {best[1]:.4g}" if best else ""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, best=text)
        elif total and done * 10 // total != getattr(self, "_last_decile", -1):
            self._last_decile = done * 10 // total
            print(f"  {done}/{total} member-steps {text}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def cmd_run(args: argparse.Namespace) -> int:
    from firepbt.api import run
    from firepbt.report import write_report

    algorithm = _algorithm(args)
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    with _Progress(not args.quiet) as progress:
        result = run(
            args.task, algorithm=algorithm, steps=args.steps, interval=args.interval,
            eval_every=args.eval_every, store=args.store, workers=args.workers,
            executor=args.executor, seed=args.seed, mode=args.mode,
            max_failures=args.max_failures, segment_timeout_s=args.segment_timeout,
            on_event=progress,
        )
    _print_summary(result.summary())
    if args.no_report or args.store.startswith("memory://"):
        return 0
    print(f"report: {write_report(result.store)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from firepbt.api import resume
    from firepbt.report import write_report

    with _Progress(not args.quiet) as progress:
        result = resume(_existing(args.store), workers=args.workers, executor=args.executor,
                        on_event=progress)
    _print_summary(result.summary())
    print(f"report: {write_report(result.store)}")
    return 0


def _existing(path: str) -> str:
    if "://" not in path and not Path(path).exists():
        raise FirePBTError(f"store {path!r} does not exist")
    return path


def _result(path: str) -> Any:
    from firepbt.result import Result
    from firepbt.store import open_store

    return Result(open_store(_existing(path)))


def _print_summary(summary: dict[str, Any]) -> None:
    sched = summary.pop("schedule", [])
    for k, v in summary.items():
        print(f"{k:>12}: {v}")
    if sched:
        print("best lineage schedule:")
        for piece in sched:
            hp = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(piece["hparams"].items()))
            print(f"  steps {piece['start_step']:>6}-{piece['end_step']:<6} {hp}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_status(args: argparse.Namespace) -> int:
    res = _result(args.store)
    exp = res.experiment
    holder = res.store.lock_holder()
    print(f"task: {exp.get('task')}  algorithm: {exp['algorithm']['name']}  "
          f"status: {res.status()}")
    if holder is not None:
        h, beat = holder
        print(f"lock: pid {h.pid} on {h.host} (last heartbeat {beat:.0f})")
    cfg = exp["config"]
    print(f"steps {cfg['steps']}  interval {cfg['interval']}  eval_every {cfg['eval_every']}  "
          f"seed {cfg['seed']}  mode {cfg['mode']}")
    finals = res.final_metrics(subpop=None)
    for w in res.store.workers():
        metric = finals.get(w.id)
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(w.hparams.items()))
        shown = "-" if metric is None else f"{metric:.4g}"
        print(f"  {w.role:>9} {w.id:>3} P{w.subpop} {w.status:>6} step {w.step:>6} "
              f"metric {shown:>8}  {hp}")
    print(f"best: {res.best} ({res.best_metric})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from firepbt.report import write_report

    print(write_report(_existing(args.store), args.output))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    res = _result(args.store)
    member = args.member if args.member is not None else res.best
    if member is None:
        raise FirePBTError(f"store {args.store!r} has no member with a valid metric yet")
    pieces = res.schedule(member)
    rows = [{"start_step": p.start_step, "end_step": p.end_step, "worker": p.worker,
             **p.hparams} for p in pieces]
    if args.format == "json":
        text = json.dumps({"member": member, "schedule": rows}, indent=2)
    else:
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from firepbt.invariants import check_store

    problems = check_store(_existing(args.store))
    for p in problems:
        print(f"FAIL {p}")
    print("ok: all invariants hold" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from firepbt.bench import run_bench

    out = run_bench(args.name, preset=args.preset, seeds=args.seeds)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from firepbt.demo import demo

    demo(Path(args.out), quick=args.quick, workers=args.workers)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from firepbt.replay import ScheduleLambda, replay

    res = _result(args.store)
    member = res.best if args.member == "best" else int(args.member)
    out = replay(res.store, member=member, seed=args.seed, from_ancestors=args.from_ancestors,
                 log=print)
    print(f"schedule of member {out.member}" + (" (best)" if out.member == res.best else ""))
    for p in out.schedule:
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(p.hparams.items()))
        print(f"  steps {p.start_step:>6}-{p.end_step:<6} {hp}")
    if out.applied:
        print("applied (read back from the optimiser/scheduler by the integration):")
        for e in out.applied:
            vals = ", ".join(f"{k}={_fmt(v[0]) if len(set(v)) == 1 else v}"
                             for k, v in sorted(e["applied"].items()))
            print(f"  from step {e['step']:>6}: {vals}")
    how = "the exact lineage" if out.from_ancestors else "from scratch"
    print(f"replayed {how} (seed {out.seed}): final metric {_fmt(out.metric)}")
    print(f"population (member {out.member}): final metric {_fmt(out.population_metric)}")
    if out.from_ancestors:
        print(f"largest curve difference to the recorded lineage: "
              f"{_fmt(out.max_curve_difference())}")
    if args.export_lr:
        key = args.lr_key
        Path(args.export_lr).write_text(ScheduleLambda.from_schedule(out.schedule, key).to_json())
        print(f"lr schedule ({key}) for LambdaLR: {args.export_lr}")
    if args.json:
        print(json.dumps({"member": out.member, "seed": out.seed, "metric": out.metric,
                          "population_metric": out.population_metric,
                          "from_ancestors": out.from_ancestors, "task_file": out.task_file}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firepbt", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log warnings and details")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a population")
    r.add_argument("task", help="file.py:Name, module:Name or a builtin task "
                   "(quadratic, moving, plain, deceptive, nqm, fmnist, fmnist-cnn, "
                   "teacher-student, sleep)")
    r.add_argument("--algorithm", choices=ALGORITHMS, default="pbt")
    r.add_argument("--population", type=int, default=8,
                   help="members (FIRE: members + evaluators)")
    r.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    r.add_argument("--steps", type=int, help="training steps per member (task default)")
    r.add_argument("--interval", type=int, help="steps between ready points (task default)")
    r.add_argument("--eval-every", type=int, help="steps between curve points")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--store", default="runs/firepbt.db", help="SQLite file (or memory://)")
    r.add_argument("--mode", choices=("async", "sync"), default="async")
    r.add_argument("--executor", choices=("process", "inprocess"), default="process")
    r.add_argument("--exploit", choices=("truncation", "tournament", "ttest"),
                   default="truncation")
    r.add_argument("--quantile", type=float, default=0.25)
    r.add_argument("--smoother", choices=("gp", "ema"), default="gp", help="FIRE smoother")
    r.add_argument("--max-failures", type=int, default=3)
    r.add_argument("--segment-timeout", type=float, help="seconds before a segment is killed")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="show an experiment's state")
    s.add_argument("store")
    s.set_defaults(fn=cmd_status)

    rs = sub.add_parser("resume", help="continue a stopped or killed run")
    rs.add_argument("store")
    rs.add_argument("--workers", type=int, default=2)
    rs.add_argument("--executor", choices=("process", "inprocess"), default="process")
    rs.add_argument("-q", "--quiet", action="store_true")
    rs.set_defaults(fn=cmd_resume)

    rp = sub.add_parser("report", help="write the HTML report")
    rp.add_argument("store")
    rp.add_argument("-o", "--output")
    rp.set_defaults(fn=cmd_report)

    ex = sub.add_parser("export", help="the best lineage's schedule as JSON or CSV")
    ex.add_argument("store")
    ex.add_argument("--format", choices=("json", "csv"), default="json")
    ex.add_argument("--member", type=int, help="another member than the best")
    ex.add_argument("-o", "--output")
    ex.set_defaults(fn=cmd_export)

    ck = sub.add_parser("check", help="verify the store's invariants")
    ck.add_argument("store")
    ck.set_defaults(fn=cmd_check)

    b = sub.add_parser("bench", help="benchmarks that print their figures")
    b.add_argument("name")
    b.add_argument("--json", action="store_true", help="print one JSON object last")
    b.add_argument("--preset", choices=("quick", "full"), default="quick")
    b.add_argument("--seeds", type=int)
    b.set_defaults(fn=cmd_bench)

    rl = sub.add_parser("replay", help="train one fresh model with the learned schedule")
    rl.add_argument("store")
    rl.add_argument("--member", default="best", help="'best' or a member id")
    rl.add_argument("--seed", type=int, default=0, help="seed of the fresh model")
    rl.add_argument("--from-ancestors", action="store_true",
                    help="replay the exact lineage (root's seed, weight copies) as a check")
    rl.add_argument("--export-lr", metavar="FILE.json",
                    help="write the lr schedule for firepbt.replay.ScheduleLambda / LambdaLR")
    rl.add_argument("--lr-key", default="lr", help="the learning-rate hyperparameter's name")
    rl.add_argument("--json", action="store_true", help="print one JSON object last")
    rl.set_defaults(fn=cmd_replay)

    d = sub.add_parser("demo", help="the README's main job: FIRE PBT vs PBT, then a report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--quick", action="store_true", help="a smaller run (for tests)")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except FirePBTError as exc:
        print(f"firepbt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        store = getattr(args, "store", "STORE")
        print(f"\nfirepbt: stopped; the store is resumable: firepbt resume {store}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
