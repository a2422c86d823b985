"""The ``firepbt`` command line: run, status, resume, report, export, check, bench, demo."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from firepbt.errors import FirePBTError, RunFailed

ALGORITHMS = ("pbt", "fire", "pb2", "random")
EXPLOIT_RULES = ("truncation", "tournament", "ttest")
SMOOTHERS = ("gp", "ema")


def _algorithm(args: argparse.Namespace) -> Any:
    from firepbt.algorithms import PBT, RandomSearch

    pbt_kw: dict[str, Any] = {"exploit": args.exploit, "quantile": args.quantile}
    if args.algorithm == "pbt":
        return PBT(population=args.population, **pbt_kw)
    if args.algorithm == "random":
        return RandomSearch(population=args.population)
    if args.algorithm == "pb2":
        from firepbt.algorithms.pb2 import PB2

        return PB2(population=args.population, **pbt_kw)
    from firepbt.algorithms.fire import FirePBT

    return FirePBT(population=args.population, pbt=PBT(population=2, **pbt_kw),
                   smoother=args.smoother, n_subpops=args.n_subpops,
                   evaluators=args.evaluators, p_stat=args.p_stat)


def _subpop_bests(ctl: Any) -> str:
    """'P1 0.91 | P2 0.88': the best latest metric of each sub-population (FIRE)."""
    best = ctl.best_per_subpop()
    sign = ctl.metric.sign  # fitness back to the task's own values
    return " | ".join(f"P{k} {sign * v:.4g}" for k, v in sorted(best.items()))


class _Progress:
    """Live progress fed by the controller after every handled result: a rich bar with the
    ETA on a terminal, a line per tenth of the run otherwise, nothing with ``-q``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._last_decile = -1

    def __enter__(self) -> _Progress:
        if self.enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[best]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("training", total=None, steps="starting workers",
                                            best="")
        return self

    def __call__(self, ctl: Any) -> None:
        if not self.enabled:
            return
        done, total = ctl.progress()
        text = _subpop_bests(ctl)
        text = f"best {text}" if text else ""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total,
                             steps=f"{done}/{total} member-steps", best=text)
        elif total and done * 10 // total != self._last_decile:
            self._last_decile = done * 10 // total
            print(f"  {done}/{total} member-steps {text}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _default_store(args: argparse.Namespace) -> str:
    """One store per experiment: runs/NAME.db, NAME from --name or task, algorithm and time."""
    if args.store:
        return str(args.store)
    name = args.name
    if not name:
        task = args.task.rsplit(":", 1)
        stem = Path(task[0]).stem if task[0].endswith(".py") else task[0].split(".")[-1]
        name = f"{stem}-{args.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 2
        base = name
        while Path(f"runs/{name}.db").exists():  # two runs within one second
            name, n = f"{base}-{n}", n + 1
    return f"runs/{name}.db"


def _resources(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--resources 'cpu=1,gpu=0.25'`` as the API's resources_per_member (None: not given)."""
    if args.resources is None:
        return None
    from firepbt.executors.ray import parse_resources

    return parse_resources(args.resources)


def _executor_options(parser: argparse.ArgumentParser) -> None:
    """--executor, --address and --resources: the same on run and resume."""
    parser.add_argument("--executor", choices=("process", "inprocess", "ray"), default="process",
                        help="process: worker processes; inprocess: one process, reproducible; "
                        "ray: Ray actors (pip install 'firepbt[ray]')")
    parser.add_argument("--address", help="ray: 'local' (default: a private Ray instance on "
                        "this machine), 'auto' (the cluster this machine is a node of) or "
                        "'ray://HOST:10001'")
    parser.add_argument("--resources", help="ray: one member's resources, e.g. "
                        "'cpu=1,gpu=0.25,memory=4GiB' (other keys: Ray custom resources); "
                        "default cpu=1")


def _metric(args: argparse.Namespace) -> Any:
    from firepbt.trainable import Metric

    if args.metric is None and args.metric_mode is None:
        return None  # the task's METRIC, else the default
    return Metric(args.metric or "fitness", args.metric_mode or "max")


def cmd_run(args: argparse.Namespace) -> int:
    from firepbt.api import run
    from firepbt.space_spec import parse_space

    algorithm = _algorithm(args)
    space = parse_space(args.space) if args.space else None
    args.store = _default_store(args)
    if "://" not in args.store:
        Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        print(f"store: {args.store}", file=sys.stderr)
    with _Progress(not args.quiet) as progress:
        result = run(
            args.task, space=space, algorithm=algorithm, steps=args.steps,
            interval=args.interval, eval_every=args.eval_every, store=args.store,
            checkpoints=args.checkpoints, workers=args.workers, executor=args.executor,
            seed=args.seed, mode=args.mode,
            resources_per_member=_resources(args), ray_address=args.address,
            max_failures=args.max_failures, segment_timeout_s=args.segment_timeout,
            metric=_metric(args), on_event=progress,
        )
    _print_summary(result.summary())
    if not args.no_report:
        _report(result, args.store)
    return 0


def _report(result: Any, store: str) -> None:
    """Write the HTML report beside a store file; a server store has no "beside"."""
    from firepbt.report import write_report

    if store.startswith("memory://"):
        return
    if "://" in store and not store.startswith("sqlite:"):
        print(f"report: firepbt report {store} -o FILE.html (the store is not a file)")
        return
    print(f"report: {write_report(result.store)}")


def cmd_resume(args: argparse.Namespace) -> int:
    from firepbt.api import resume
    from firepbt.store import open_store
    from firepbt.tasks import BUILTIN

    # Resuming runs code the store names (unlike status, report, export and check): say which.
    with open_store(_existing(args.store), create=False) as st:
        exp = st.experiment() or {}
    alg = exp.get("algorithm") or {}
    custom = [ex["custom"] for ex in (alg.get("explore"), (alg.get("pbt") or {}).get("explore"))
              if isinstance(ex, dict) and ex.get("custom")]
    task = args.task or str(exp.get("task"))
    print(f"resume: imports code named in the store: task {BUILTIN.get(task, task)}"
          + "".join(f", custom explore {c}" for c in custom), flush=True)
    with _Progress(not args.quiet) as progress:
        result = resume(_existing(args.store), task=args.task, workers=args.workers,
                        executor=args.executor, resources_per_member=_resources(args),
                        ray_address=args.address, allow_changed_task=args.allow_changed_task,
                        on_event=progress)
    _print_summary(result.summary())
    _report(result, args.store)
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
    if exp["algorithm"]["name"] == "fire":
        print("  P1 is the greedy sub-population that holds the answer; P2..Pn are its parent "
              "sub-populations, ranked by how fast evaluators improve their weights with the "
              "hyperparameters of P(k-1)")
    if holder is not None:
        h, beat = holder
        ago = max(0.0, time.time() - beat)
        print(f"lock: pid {h.pid} on {h.host} (last heartbeat {ago:.0f} s ago)")
    if res.status() == "running" and _controller_gone(holder):
        print(f"  no controller is running it any more (stopped or killed): continue it with "
              f"firepbt resume {args.store}")
    cfg = exp["config"]
    print(f"steps {cfg['steps']}  interval {cfg['interval']}  eval_every {cfg['eval_every']}  "
          f"seed {cfg['seed']}  mode {cfg['mode']}  metric {res.metric.describe()}")
    finals = res.final_metrics(subpop=None)
    for w in res.store.workers():
        metric = finals.get(w.id)
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(w.hparams.items()))
        shown = "-" if metric is None else f"{metric:.4g}"
        print(f"  {w.role:>9} {w.id:>3} P{w.subpop} {w.status:>6} step {w.step:>6} "
              f"metric {shown:>8}  {hp}")
    print(f"best: {res.best} ({res.best_metric})")
    _print_eta(res, exp)
    _print_failures(res, args.store, full=args.failures)
    return 0


def _controller_gone(holder: Any) -> bool:
    """Whether a store that says "running" has lost its controller."""
    from firepbt.controller import Controller, _holder_is_dead

    if holder is None:
        return True
    h, beat = holder
    return _holder_is_dead(h) or time.time() - beat > Controller.LOCK_STALE_S


def _print_eta(res: Any, exp: dict[str, Any]) -> None:
    members = [w for w in res.store.workers() if w.role == "member"]
    total = len(members) * exp["config"]["steps"]
    done = sum(min(w.step, exp["config"]["steps"]) for w in members)
    line = f"progress: {done}/{total} member-steps ({100 * done / max(total, 1):.0f} %)"
    if res.status() == "running" and 0 < done < total and exp.get("created"):
        elapsed = max(time.time() - float(exp["created"]), 0.0)
        line += f", ETA {elapsed * (total - done) / done / 60:.1f} min"
    print(line)


def _print_failures(res: Any, store: str, full: bool) -> None:
    failures = res.failures()
    why = res.failure()
    if why is not None:
        print(f"run failed: {why.splitlines()[0]}")
    if not failures:
        return
    print(f"failures: {len(failures)} failed segment attempt(s) of "
          f"{len({f.worker for f in failures})} worker(s)")
    for f in failures:
        print(f"  worker {f.worker:>3} segment {f.segment} attempt {f.attempt} "
              f"step {f.step}: {f.last_line}")
        if full:
            print("    " + f.error.rstrip().replace("\n", "\n    "))
    if not full:
        print(f"full tracebacks: firepbt status {store} --failures")


def cmd_report(args: argparse.Namespace) -> int:
    from firepbt.report import write_report

    print(write_report(_existing(args.store), args.output))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    res = _result(args.store)
    member = args.member if args.member is not None else res.best
    if member is None:
        raise FirePBTError(f"store {args.store!r} has no member with a valid metric yet")
    members = sorted(w.id for w in res.store.workers() if w.role == "member")
    if member not in members:
        raise FirePBTError(f"--member {member}: no such member in {args.store!r} "
                           f"(members: {members[0]}..{members[-1]})")
    if args.checkpoint:
        import shutil

        target = Path(args.checkpoint)
        if target.exists():
            raise FirePBTError(f"--checkpoint {str(target)!r} exists already: give a new folder")
        shutil.copytree(res.best_checkpoint(member), target)
        print(f"member {member}'s weights: {target} (read it with your task's load())")
        return 0
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


def cmd_compare(args: argparse.Namespace) -> int:
    from firepbt.compare import compare
    from firepbt.space_spec import parse_space

    summary = compare(
        args.task, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seeds=args.seeds, workers=args.workers, baselines=args.baseline, out=args.out,
        space=parse_space(args.space) if args.space else None, steps=args.steps,
        interval=args.interval, eval_every=args.eval_every, processes=args.processes,
        executor=args.executor, mode=args.mode, metric=_metric(args),
    )
    print(f"{'method':<36} {'mean':>10} {'sd':>9} {'median':>10} {'wins':>5}")
    for m in summary["methods"].values():
        cells = [f"{x:>10.4g}" if x is not None else f"{'-':>10}"
                 for x in (m["mean"], m["sd"], m["median"])]
        print(f"{m['label']:<36} {cells[0]} {cells[1][1:]} {cells[2]} {m['wins']:>5}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from firepbt.bench import run_bench

    if args.executor is not None or args.peer is not None:
        if args.name != "overhead":
            raise FirePBTError(f"--executor/--peer: only the overhead bench takes them, not "
                               f"{args.name!r}")
        from firepbt.bench.overhead import main as overhead_bench

        out = overhead_bench(preset=args.preset, seeds=args.seeds,
                             executor=args.executor or "process", peer=args.peer == "raytune")
    elif args.store is None:
        out = run_bench(args.name, preset=args.preset, seeds=args.seeds)
    elif args.name != "controller":
        raise FirePBTError(f"--store {args.store!r}: only the controller bench takes a store")
    else:
        from firepbt.bench.controller import main as controller_bench

        out = controller_bench(store=args.store)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from firepbt.demo import demo

    demo(Path(args.out), quick=args.quick, workers=args.workers)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from firepbt.dashboard.server import (
        LOOPBACK_NAMES,
        create_app,
        expand_stores,
        is_loopback,
        serve,
        warn_if_exposed,
    )

    host = args.host or "127.0.0.1"
    # On loopback only loopback Host headers are served (no DNS rebinding); an explicit other
    # address is served under any name (and warned about below).
    hosts = LOOPBACK_NAMES if is_loopback(host) else ("*",)
    stores = [_existing(s) for s in expand_stores(args.stores)]
    app = create_app(stores, poll_s=args.poll, allowed_hosts=hosts)
    warn_if_exposed(host, args.port, lambda m: print(f"firepbt: {m}", file=sys.stderr))
    shown = f"[{host}]" if ":" in host else host
    print(f"firepbt dashboard: http://{shown}:{args.port}/ ({len(stores)} run(s), "
          "read-only; Ctrl-C stops)", flush=True)
    serve(app, host=host, port=args.port)
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (None, or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _builtin_tasks() -> str:
    from firepbt.tasks import BUILTIN

    return ", ".join(BUILTIN)


def build_parser() -> argparse.ArgumentParser:
    from firepbt import __version__

    fmt = _HelpFormatter
    p = argparse.ArgumentParser(prog="firepbt", description=__doc__, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"firepbt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log warnings and details")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a population", formatter_class=fmt)
    r.add_argument("task", help="file.py:Name, module:Name or a built-in task: "
                   f"{_builtin_tasks()}")
    r.add_argument("--algorithm", choices=ALGORITHMS, default="pbt",
                   help="pbt (greedy PBT), fire (FIRE PBT), pb2 (PBT with a GP bandit "
                   "explore) or random (random search)")
    r.add_argument("--population", type=int, default=8,
                   help="workers in the population (FIRE: members + evaluators)")
    r.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    r.add_argument("--space", help="search space, e.g. 'lr=loguniform(1e-4,1e-1); "
                   "momentum=0.9', or a .json file (default: the task's SPACE)")
    r.add_argument("--steps", type=int, help="training steps per member (task DEFAULTS)")
    r.add_argument("--interval", type=int, help="steps between ready points (task DEFAULTS)")
    r.add_argument("--eval-every", type=int,
                   help="steps between curve points (task DEFAULTS, else interval // 10)")
    r.add_argument("--seed", type=int, default=0,
                   help="seeds sampling, exploit/explore and every member")
    r.add_argument("--name", help="the experiment's name: its store is runs/NAME.db")
    r.add_argument("--store", help="store file or URL (memory:// for none); default "
                   "runs/NAME.db, NAME from --name or task-algorithm-time")
    r.add_argument("--checkpoints", help="checkpoint folder or fsspec URL every worker can "
                   "reach (file:///shared/x, s3://bucket/x; docs/checkpoints.md); default "
                   "beside the store file (runs/NAME.db.ckpt)")
    r.add_argument("--mode", choices=("async", "sync"), default="async",
                   help="async: decide at each member's ready point; sync: in rounds")
    _executor_options(r)
    r.add_argument("--exploit", choices=EXPLOIT_RULES, default="truncation",
                   help="PBT's exploit rule (also inside FIRE's sub-populations)")
    r.add_argument("--quantile", type=float, default=0.25,
                   help="truncation: the bottom quantile copies the top quantile")
    r.add_argument("--smoother", choices=SMOOTHERS, default="gp",
                   help="FIRE: how learning curves are smoothed to align them")
    r.add_argument("--n-subpops", type=int, default=2, help="FIRE: sub-populations P1..Pn")
    r.add_argument("--evaluators", type=int,
                   help="FIRE: evaluator workers (default: 28 %% of the population)")
    r.add_argument("--p-stat", type=float, default=0.01,
                   help="FIRE: significance level of the evaluators' sign test")
    r.add_argument("--metric", help="name of the metric evaluate() returns (the key, when it "
                   "returns a dict); default: the task's METRIC, else 'fitness'")
    r.add_argument("--metric-mode", choices=("max", "min"),
                   help="whether higher (max) or lower (min) values of the metric are better; "
                   "default: the task's METRIC, else max")
    r.add_argument("--max-failures", type=int, default=3,
                   help="attempts of a segment before its member is replaced from a donor")
    r.add_argument("--segment-timeout", type=float, help="seconds before a segment is killed")
    r.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="show an experiment's state", formatter_class=fmt)
    s.add_argument("store", help="the experiment's store file or URL")
    s.add_argument("--failures", action="store_true",
                   help="print the full traceback of every failed segment")
    s.set_defaults(fn=cmd_status)

    rs = sub.add_parser("resume", help="continue a stopped or killed run (imports the task "
                        "the store names)", formatter_class=fmt)
    rs.add_argument("store", help="the experiment's store file or URL")
    rs.add_argument("--task", help="file.py:Name or module:Name to use instead of the stored "
                    "task (it must have the same search space)")
    rs.add_argument("--allow-changed-task", action="store_true",
                    help="resume although the task's file or SPACE changed since the start")
    rs.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    _executor_options(rs)
    rs.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    rs.set_defaults(fn=cmd_resume)

    rp = sub.add_parser("report", help="write the HTML report", formatter_class=fmt)
    rp.add_argument("store", help="the experiment's store file or URL")
    rp.add_argument("-o", "--output", help="HTML file to write (default: beside the store)")
    rp.set_defaults(fn=cmd_report)

    ex = sub.add_parser("export", help="the best lineage's schedule as JSON or CSV, or its "
                        "weights", formatter_class=fmt)
    ex.add_argument("store", help="the experiment's store file or URL")
    ex.add_argument("--format", choices=("json", "csv"), default="json",
                    help="format of the schedule")
    ex.add_argument("--member", type=int, help="another member than the best")
    ex.add_argument("--checkpoint", metavar="DIR",
                    help="copy the member's trained weights (its checkpoint folder) to DIR")
    ex.add_argument("-o", "--output", help="file to write the schedule to (default: stdout)")
    ex.set_defaults(fn=cmd_export)

    ck = sub.add_parser("check", help="verify the store's invariants (read-only)",
                        formatter_class=fmt)
    ck.add_argument("store", help="the experiment's store file or URL")
    ck.set_defaults(fn=cmd_check)

    c = sub.add_parser("compare", help="FIRE PBT, PBT, random search and fixed schedules on "
                       "your task, at equal worker budget, over several seeds (resumable)",
                       formatter_class=fmt)
    c.add_argument("task", help="file.py:Name, module:Name or a built-in task")
    c.add_argument("--methods", default="fire,pbt,random",
                   help="comma-separated, among fire, pbt, pb2, random")
    c.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 of every method")
    c.add_argument("--workers", type=int, default=22,
                   help="each method's worker budget (FIRE: members + evaluators)")
    c.add_argument("--baseline", action="append", default=[],
                   help="a fixed schedule, e.g. 'lr=cosine(0.1)' or 'lr=step(1,0.1,0.5,0.75)' "
                   "(constant, cosine, linear, step); repeat for several")
    c.add_argument("--out", default="runs/compare",
                   help="folder for the runs, compare.html and compare.json")
    c.add_argument("--space", help="search space (default: the task's SPACE)")
    c.add_argument("--steps", type=int, help="training steps per member (task DEFAULTS)")
    c.add_argument("--interval", type=int, help="steps between ready points (task DEFAULTS)")
    c.add_argument("--eval-every", type=int, help="steps between curve points")
    c.add_argument("--processes", type=int, default=2, help="worker processes per run")
    c.add_argument("--executor", choices=("process", "inprocess"), default="process",
                   help="process: worker processes; inprocess: one process")
    c.add_argument("--mode", choices=("async", "sync"), default="async",
                   help="async: decide at each member's ready point; sync: in rounds")
    c.add_argument("--metric", help="name of the metric (default: the task's METRIC)")
    c.add_argument("--metric-mode", choices=("max", "min"),
                   help="whether higher (max) or lower (min) is better")
    c.set_defaults(fn=cmd_compare)

    b = sub.add_parser("bench", help="benchmarks that print their figures",
                       formatter_class=fmt)
    b.add_argument("name", help=f"one of: {_bench_names()}")
    b.add_argument("--json", action="store_true", help="print one JSON object last")
    b.add_argument("--preset", choices=("quick", "full"), default="quick",
                   help="size of the comparison benchmarks")
    b.add_argument("--seeds", type=int, help="seeds (overrides the preset)")
    b.add_argument("--store", help="controller bench: also measure this postgresql:// URL")
    b.add_argument("--executor", choices=("process", "ray"),
                   help="overhead bench: measure the 4 x 200 and 16 x 100 workloads on this "
                   "executor (ray: Ray actors in a private Ray instance)")
    b.add_argument("--peer", choices=("raytune",),
                   help="overhead bench: also run the same workloads through Ray Tune's PBT "
                   "(needs the raytune extra: pip install 'firepbt[raytune]')")
    b.set_defaults(fn=cmd_bench)

    rl = sub.add_parser("replay", help="train one fresh model with the learned schedule (imports "
                        "the task the store names)", formatter_class=fmt)
    rl.add_argument("store", help="the experiment's store file or URL")
    rl.add_argument("--member", default="best", help="'best' or a member id")
    rl.add_argument("--seed", type=int, default=0, help="seed of the fresh model")
    rl.add_argument("--from-ancestors", action="store_true",
                    help="replay the exact lineage (root's seed, weight copies) as a check")
    rl.add_argument("--export-lr", metavar="FILE.json",
                    help="write the lr schedule for firepbt.replay.ScheduleLambda / LambdaLR")
    rl.add_argument("--lr-key", default="lr", help="the learning-rate hyperparameter's name")
    rl.add_argument("--json", action="store_true", help="print one JSON object last")
    rl.set_defaults(fn=cmd_replay)

    d = sub.add_parser("demo", help="the README's main job: FIRE PBT vs PBT, then a report",
                       formatter_class=fmt)
    d.add_argument("--out", default="runs/demo", help="folder for the stores and reports")
    d.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    d.add_argument("--quick", action="store_true", help="a smaller run (for tests)")
    d.set_defaults(fn=cmd_demo)

    db = sub.add_parser("dashboard", help="a live web view of one or more runs (read-only)",
                        formatter_class=fmt)
    db.add_argument("stores", nargs="+", metavar="STORE",
                    help="store files or URLs, or folders (every *.db under them)")
    db.add_argument("--port", type=int, default=8000, help="port to serve on")
    db.add_argument("--host", help="address to bind (default 127.0.0.1; another one exposes "
                    "the dashboard to the network, with a warning)")
    db.add_argument("--poll", type=float, default=2.0, help="seconds between page refreshes")
    db.set_defaults(fn=cmd_dashboard)
    return p


def _bench_names() -> str:
    from firepbt.bench import BENCHES

    return ", ".join(BENCHES)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except RunFailed as exc:
        store = getattr(args, "store", None)
        hint = f"\nsee: firepbt status {store} --failures" if store and "://" not in store else ""
        print(f"firepbt: run failed: {exc}{hint}", file=sys.stderr)
        return 1
    except FirePBTError as exc:
        print(f"firepbt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        store = getattr(args, "store", "STORE")
        print(f"\nfirepbt: stopped; the store is resumable: firepbt resume {store}",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `firepbt status STORE | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
