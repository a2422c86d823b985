"""System overhead: the sleep task, ready + checkpoint every 10 steps, on every executor.

Two workloads (``WORKLOADS``): 4 members x 200 steps of 20 ms on 4 workers (ideal wall 4.0 s,
each member's 200 x 20 ms on its own worker) and 16 members x 100 steps on 16 workers (ideal
2.0 s: many short segments at once, where the cost of each dispatch, each checkpoint and of
starting workers shows). Efficiency = ideal / measured wall time. SQLite file store, PBT, async.

Two figures per run, each run in a fresh interpreter: *cold* starts the clock before the
executor is built (worker start-up counted: a fresh run's experience), *warm* once every worker
has loaded the task (the cost per segment, which is what grows with run length). Importing the
library happens before either clock, as it always did: the imports the run's construction does
lazily (scipy's Latin hypercube for the initial draw) are done first and printed apart, since
they cost 0.3 s on a quiet machine and several seconds on a loaded one, against a 4 s ideal.

``--executor ray`` runs the workloads on Ray actors instead, in a private Ray instance started
before the clock (on a cluster Ray is already up; its start is printed apart). Each member asks
for an equal share of the machine's CPUs (0.5 for 4 members on 2 cores).

``--peer raytune`` also runs each workload through Ray Tune's PBT
(``firepbt.bench.raytune_peer``, needs ``pip install 'firepbt[raytune]'``): the peer figure is
measured in the same command, never quoted; without Ray Tune the option stops with the reason.

The process bench ends with FIRE PBT as users run it (22 workers, process executor, async: 8 + 8
members and 6 evaluators, a curve point every step) next to PBT with 22 members on 22 workers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from firepbt.algorithms import PBT, Algorithm
from firepbt.algorithms.fire import FirePBT
from firepbt.controller import Controller, RunConfig
from firepbt.errors import ConfigError
from firepbt.executors.base import Executor
from firepbt.executors.local import LocalExecutor
from firepbt.space import LogUniform, Space
from firepbt.states import COMPLETED
from firepbt.store import SQLiteStore

MEMBERS, STEPS, INTERVAL, STEP_S = 4, 200, 10, 0.02
#: (members = workers, steps) of the workloads the Ray executor is measured on; the first is
#: the classic one above.
WORKLOADS = ((4, 200), (16, 100))
TASK = "firepbt.tasks.sleep:SleepTask"
#: Ray Tune PBT runs are stopped after this many times the ideal wall time.
PEER_BUDGET_X = 30


FIRE_WORKERS = 22


def _algorithm(name: str, population: int) -> Algorithm:
    if name == "fire":
        return FirePBT(population=population)
    return PBT(population=population)


def _lazy_imports(alg: Algorithm, space: Space) -> float:
    """Do the imports the run's construction would do lazily; return how long they took."""
    t0 = time.perf_counter()
    alg.initial_hparams(space, np.random.default_rng(0))  # pure: no state, no files
    return time.perf_counter() - t0


def measure(workers: int = MEMBERS, mode: str = "async", algorithm: str = "pbt",
            population: int = MEMBERS, eval_every: int = INTERVAL, steps: int = STEPS,
            executor: str = "process", warm: bool = False) -> dict[str, Any]:
    """One run of the sleep task; ``executor="ray"`` needs this process connected to Ray
    (:func:`measure_ray`), and ``warm`` starts the clock once every worker has loaded the
    task."""
    alg = _algorithm(algorithm, population)
    members = sum(1 for r in alg.topology() if r.role == "member")
    ideal = steps * STEP_S * max(1.0, members / workers)
    space = Space(lr=LogUniform(1e-3, 1.0), step_s=STEP_S)
    imports_s = _lazy_imports(alg, space)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        t0 = time.perf_counter()
        ex: Executor
        if executor == "ray":
            import ray

            from firepbt.executors.ray import RayExecutor

            share = math.floor(ray.cluster_resources()["CPU"] / workers * 1e4) / 1e4
            ex = RayExecutor(TASK, workers=workers, resources={"cpu": min(1.0, share)})
        else:
            ex = LocalExecutor(TASK, workers=workers)
        if warm:
            ex.wait_ready()
            t0 = time.perf_counter()
        ctl = Controller(
            store=store, executor=ex, checkpoint_root=Path(tmp) / "ckpt",
            task_ref=TASK, space=space, algorithm=alg,
            config=RunConfig(steps=steps, interval=INTERVAL, eval_every=eval_every, mode=mode),
        )
        ctl.start()
        while ctl.step(timeout=1.0):
            pass
        wall = time.perf_counter() - t0
        # The process tree of a Ray instance is not this process's: no figure there.
        peak = ex.peak_rss_bytes() if isinstance(ex, LocalExecutor) else 0
        ctl.close()
        exploits = len(store.events(kind="exploit"))
        transfers = len(store.events(kind="transfer"))
        evaluations = len(store.events(kind="start_evaluator"))
        # More than the nominal count when async exploits copy a donor that is a segment
        # behind: the member trains those steps again. That is work, not overhead, but it
        # lengthens the wall time the ideal does not count.
        done = store.segments(status=COMPLETED)
        segments_run = len(done)
        # The longest chain of segments one worker ran: the ideal wall of the work actually
        # done, so ideal_run / wall is the system's own overhead, re-trained steps excluded.
        per_worker = Counter(seg.worker for seg in done)
        ideal_run = max(per_worker.values(), default=0) * INTERVAL * STEP_S
        store.close()
    return {
        "algorithm": algorithm, "mode": mode, "workers": workers, "ideal_s": round(ideal, 3),
        "wall_s": round(wall, 3), "efficiency": round(ideal / wall, 3), "warm": warm,
        "lazy_imports_s": round(imports_s, 3),
        "peak_rss_mib": round(peak / 2**20, 1), "segments": members * steps // INTERVAL,
        "segments_run": segments_run, "ideal_run_s": round(ideal_run, 3),
        "efficiency_run": round(ideal_run / wall, 3), "exploits": exploits,
        "transfers": transfers, "evaluations": evaluations,
    }


def _fresh(call: str) -> dict[str, Any]:
    """Evaluate ``call`` (a call of this module) in a new interpreter: worker start-up (the
    fork server too) is counted every time, never served warm by an earlier run."""
    code = ("import json; from firepbt.bench import overhead; "
            f"print(json.dumps(overhead.{call}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_fresh(**kw: Any) -> dict[str, Any]:
    """``measure`` in a new interpreter."""
    return _fresh(f"measure(**{kw!r})")


def measure_ray(members: int, steps: int) -> dict[str, Any]:
    """Start a private Ray instance, then measure the workload cold and warm on it."""
    import ray

    from firepbt.executors.ray import init_private_ray

    t0 = time.perf_counter()
    init_private_ray()
    started = time.perf_counter() - t0
    try:
        cold = measure(workers=members, population=members, steps=steps, executor="ray")
        warm = measure(workers=members, population=members, steps=steps, executor="ray",
                       warm=True)
    finally:
        ray.shutdown()
    return {"ray_start_s": round(started, 3), "cold": cold, "warm": warm}


def measure_peer(members: int, steps: int) -> dict[str, Any]:
    """The workload through Ray Tune's PBT (``firepbt.bench.raytune_peer``)."""
    from firepbt.bench.raytune_peer import measure_raytune

    # A cap, so that a pathological peer cannot hold the bench for ever (its figure is then
    # an upper bound, and says so).
    return measure_raytune(members, steps, INTERVAL, STEP_S, budget_s=PEER_BUDGET_X * steps
                           * STEP_S)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _peer_rows(repeats: int, out: dict[str, Any]) -> None:
    """Ray Tune PBT on each workload, into ``out["workloads"][label]["raytune"]``."""
    for members, steps in WORKLOADS:
        label = f"{members}x{steps}"
        runs = []
        for _ in range(repeats):
            runs.append(_fresh(f"measure_peer({members!r}, {steps!r})"))
        effs = [r["efficiency"] for r in runs]
        row = out["workloads"].setdefault(label, {})
        row["raytune"] = {"efficiency_median": _median(effs), "runs": runs}
        unfinished = sum(not r["finished"] for r in runs)
        print(f"Ray Tune PBT {members} x {steps}: walls "
              + ", ".join(f"{r['wall_s']:.1f}" for r in runs)
              + f" s, median efficiency {_median(effs):.3f}"
              + (f" ({unfinished} run(s) stopped at the {PEER_BUDGET_X}x-ideal cap: an upper "
                 "bound)" if unfinished else ""), flush=True)


def main_ray(repeats: int, peer: bool = False) -> dict[str, Any]:
    """Both workloads on the Ray executor, ``repeats`` fresh Ray instances each."""
    out: dict[str, Any] = {"bench": "overhead", "executor": "ray", "step_s": STEP_S,
                           "interval": INTERVAL, "workloads": {}}
    for members, steps in WORKLOADS:
        label = f"{members}x{steps}"
        print(f"{members} members x {steps} steps x {STEP_S * 1000:.0f} ms on {members} Ray "
              f"actors (ideal {steps * STEP_S:.1f} s), load average {_load()}:", flush=True)
        runs = []
        for i in range(repeats):
            r = _fresh(f"measure_ray({members!r}, {steps!r})")
            runs.append(r)
            print(f"  run {i + 1}/{repeats}: Ray started in {r['ray_start_s']:.1f} s (not "
                  f"counted); cold {_figures(r['cold'])}; warm {_figures(r['warm'])}",
                  flush=True)
        cold = _median([r["cold"]["efficiency"] for r in runs])
        warm = _median([r["warm"]["efficiency"] for r in runs])
        out["workloads"][label] = {
            "members": members, "steps": steps, "ideal_s": runs[0]["cold"]["ideal_s"],
            "efficiency_cold_median": cold, "efficiency_warm_median": warm, "runs": runs,
        }
        print(f"  median efficiency: cold {cold:.3f}, warm {warm:.3f} (target >= 0.8)",
              flush=True)
    if peer:
        _peer_rows(repeats, out)
    out["load_end"] = _load()
    return out


def _figures(r: dict[str, Any]) -> str:
    return (f"wall {r['wall_s']:.2f} s, efficiency {r['efficiency']:.3f} "
            f"({r['efficiency_run']:.3f} on the {r['segments_run']} segments run, "
            f"{r['segments']} nominal; {r['exploits']} exploits)")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(name: str = "overhead", preset: str = "quick", seeds: int | None = None,
         executor: str = "process", peer: bool = False) -> dict[str, Any]:
    """Every workload cold and warm on ``executor``, then (process) sync mode and the FIRE
    rows, then, with ``peer`` (``--peer raytune``), Ray Tune PBT on the same workloads."""
    repeats = seeds or (3 if preset == "quick" else 5)
    if peer:
        from firepbt.bench.raytune_peer import available

        if (why := available()) is not None:  # before minutes of measuring, not after
            raise ConfigError(f"--peer raytune: {why}")
    if executor == "ray":
        return main_ray(repeats, peer)
    if executor != "process":
        raise ConfigError(f"executor={executor!r}: the overhead bench runs 'process' or 'ray'")
    out: dict[str, Any] = {"bench": "overhead", "executor": "process", "step_s": STEP_S,
                           "interval": INTERVAL, "load_start": _load(), "workloads": {}}
    for members, steps in WORKLOADS:
        label = f"{members}x{steps}"
        print(f"{members} members x {steps} steps x {STEP_S * 1000:.0f} ms on {members} worker "
              f"processes (ideal {steps * STEP_S:.1f} s), load average {_load()}:", flush=True)
        row: dict[str, Any] = {"members": members, "steps": steps}
        for i in range(repeats):
            for kind in ("cold", "warm"):
                r = measure_fresh(workers=members, population=members, steps=steps,
                                  warm=kind == "warm")
                row.setdefault(kind, {"runs": []})["runs"].append(r)
            c, w = row["cold"]["runs"][-1], row["warm"]["runs"][-1]
            print(f"  run {i + 1}/{repeats}: cold {_figures(c)}; warm {_figures(w)}; peak RSS "
                  f"{c['peak_rss_mib']:.0f} MiB; lazy imports {c['lazy_imports_s']:.2f} s (not "
                  "counted)", flush=True)
        for kind in ("cold", "warm"):
            for key in ("efficiency", "efficiency_run"):
                row[kind][f"{key}_median"] = _median([r[key] for r in row[kind]["runs"]])
        row["ideal_s"] = row["cold"]["runs"][0]["ideal_s"]
        out["workloads"][label] = row
        print(f"  median efficiency: cold {row['cold']['efficiency_median']:.3f}, warm "
              f"{row['warm']['efficiency_median']:.3f} (target >= 0.95); on the segments run: "
              f"cold {row['cold']['efficiency_run_median']:.3f}, warm "
              f"{row['warm']['efficiency_run_median']:.3f}", flush=True)
    sync = measure_fresh(mode="sync")
    print(f"sync mode, 4 x 200 cold: wall {sync['wall_s']:.2f} s, efficiency "
          f"{sync['efficiency']:.3f}", flush=True)
    out["sync"] = sync
    out["fire"] = fire_rows()
    if peer:
        _peer_rows(repeats, out)
    out["load_end"] = _load()
    return out

def fire_rows() -> dict[str, Any]:
    """FIRE PBT and PBT side by side at 22 workers, process executor, async (CLI defaults)."""
    rows = {}
    print(f"{FIRE_WORKERS} workers x {STEPS} steps of {STEP_S * 1000:.0f} ms, process executor, "
          "async, a curve point every step:")
    for name in ("pbt", "fire"):
        r = measure_fresh(algorithm=name, population=FIRE_WORKERS, workers=FIRE_WORKERS,
                          eval_every=1)
        rows[name] = r
        extra = (f", {r['evaluations']} evaluations, {r['transfers']} transfers"
                 if name == "fire" else "")
        print(f"  {name:>4}: wall {r['wall_s']:.2f} s (ideal {r['ideal_s']:.1f} s), efficiency "
              f"{r['efficiency']:.3f}, peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"{r['exploits']} exploits{extra}", flush=True)
    return rows
