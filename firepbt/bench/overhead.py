"""System overhead: 4 members x 200 steps of 20 ms, ready + checkpoint every 10 steps.

Ideal wall time is 4.0 s (each member's 200 x 20 ms on its own worker). Efficiency = ideal /
measured wall time, worker start-up included. Peers measured on the same machine for the same
work: Ray Tune PBT 16.0 s, Syne Tune 11.3 s.

A second workload has 16 members x 100 steps of 20 ms on 16 workers (ideal 2.0 s): many
short segments at once, where the cost of each dispatch and of starting workers shows.

A third table runs FIRE PBT as users run it (22 workers, process executor, async mode: 8 + 8
members and 6 evaluators, a curve point every step) next to PBT with 22 members on 22 workers.
Ideal is again one member's 200 x 20 ms; FIRE's evaluators train on the 6 spare workers.

``--executor ray`` runs both workloads on Ray actors instead, in a private Ray instance started
before the clock (on a cluster Ray is already up; its start is printed apart). Each member asks
for an equal share of the machine's CPUs (0.5 for 4 members on 2 cores). Two figures per run:
*cold* counts starting the actors (a fresh run's experience), *warm* starts the clock once
every actor has loaded the task (the cost per segment, which is what grows with run length).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from firepbt.algorithms import PBT, Algorithm
from firepbt.algorithms.fire import FirePBT
from firepbt.controller import Controller, RunConfig
from firepbt.errors import ConfigError
from firepbt.executors.base import Executor
from firepbt.executors.local import LocalExecutor
from firepbt.space import LogUniform, Space
from firepbt.store import SQLiteStore

MEMBERS, STEPS, INTERVAL, STEP_S = 4, 200, 10, 0.02
#: (members = workers, steps) of the workloads the Ray executor is measured on; the first is
#: the classic one above.
WORKLOADS = ((4, 200), (16, 100))
TASK = "firepbt.tasks.sleep:SleepTask"


FIRE_WORKERS = 22


def _algorithm(name: str, population: int) -> Algorithm:
    if name == "fire":
        return FirePBT(population=population)
    return PBT(population=population)


def measure(workers: int = MEMBERS, mode: str = "async", algorithm: str = "pbt",
            population: int = MEMBERS, eval_every: int = INTERVAL, steps: int = STEPS,
            executor: str = "process", warm: bool = False) -> dict[str, Any]:
    """One run of the sleep task; ``executor="ray"`` needs this process connected to Ray
    (:func:`measure_ray`), and ``warm`` starts the clock once its actors are up."""
    alg = _algorithm(algorithm, population)
    members = sum(1 for r in alg.topology() if r.role == "member")
    ideal = steps * STEP_S * max(1.0, members / workers)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        space = Space(lr=LogUniform(1e-3, 1.0), step_s=STEP_S)
        t0 = time.perf_counter()
        ex: Executor
        if executor == "ray":
            import ray

            from firepbt.executors.ray import RayExecutor

            share = math.floor(ray.cluster_resources()["CPU"] / workers * 1e4) / 1e4
            ex = RayExecutor(TASK, workers=workers, resources={"cpu": min(1.0, share)})
            if warm:
                ex.wait_ready()
                t0 = time.perf_counter()
        else:
            ex = LocalExecutor(TASK, workers=workers)
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
        store.close()
    return {
        "algorithm": algorithm, "mode": mode, "workers": workers, "ideal_s": round(ideal, 3),
        "wall_s": round(wall, 3), "efficiency": round(ideal / wall, 3),
        "peak_rss_mib": round(peak / 2**20, 1), "segments": members * steps // INTERVAL,
        "exploits": exploits, "transfers": transfers, "evaluations": evaluations,
    }


def measure_fresh(ray_members: int | None = None, ray_steps: int = STEPS,
                  **kw: Any) -> dict[str, Any]:
    """``measure`` (or ``measure_ray`` with ``ray_members``) in a new interpreter: worker
    start-up (the fork server too) is counted every time, never served warm by an earlier
    run."""
    call = (f"measure_ray({ray_members!r}, {ray_steps!r})" if ray_members is not None
            else f"measure(**{kw!r})")
    code = ("import json; from firepbt.bench.overhead import measure, measure_ray; "
            f"print(json.dumps({call}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


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


def main_ray(repeats: int) -> dict[str, Any]:
    """Both workloads on the Ray executor, ``repeats`` fresh Ray instances each."""
    out: dict[str, Any] = {"bench": "overhead", "executor": "ray", "step_s": STEP_S,
                           "interval": INTERVAL, "workloads": {}}
    for members, steps in WORKLOADS:
        label = f"{members}x{steps}"
        print(f"{members} members x {steps} steps x {STEP_S * 1000:.0f} ms on {members} Ray "
              f"actors (ideal {steps * STEP_S:.1f} s):", flush=True)
        runs = []
        for i in range(repeats):
            r = measure_fresh(ray_members=members, ray_steps=steps)
            runs.append(r)
            print(f"  run {i + 1}/{repeats}: Ray started in {r['ray_start_s']:.1f} s (not "
                  f"counted); cold wall {r['cold']['wall_s']:.2f} s, efficiency "
                  f"{r['cold']['efficiency']:.3f}; warm wall {r['warm']['wall_s']:.2f} s, "
                  f"efficiency {r['warm']['efficiency']:.3f}", flush=True)
        cold = sorted(r["cold"]["efficiency"] for r in runs)
        warm = sorted(r["warm"]["efficiency"] for r in runs)
        out["workloads"][label] = {
            "members": members, "steps": steps, "ideal_s": runs[0]["cold"]["ideal_s"],
            "efficiency_cold_median": cold[len(cold) // 2],
            "efficiency_warm_median": warm[len(warm) // 2], "runs": runs,
        }
        print(f"  median efficiency: cold {cold[len(cold) // 2]:.3f}, warm "
              f"{warm[len(warm) // 2]:.3f} (target >= 0.8)", flush=True)
    return out


def main(name: str = "overhead", preset: str = "quick", seeds: int | None = None,
         executor: str = "process") -> dict[str, Any]:
    repeats = seeds or (3 if preset == "quick" else 5)
    if executor == "ray":
        return main_ray(repeats)
    if executor != "process":
        raise ConfigError(f"executor={executor!r}: the overhead bench runs 'process' or 'ray'")
    runs = []
    for i in range(repeats):
        r = measure_fresh()
        runs.append(r)
        print(f"run {i + 1}/{repeats}: wall {r['wall_s']:.2f} s (ideal {r['ideal_s']:.1f} s), "
              f"efficiency {r['efficiency']:.3f}, peak RSS of process tree "
              f"{r['peak_rss_mib']:.0f} MiB, {r['exploits']} exploits", flush=True)
    sync = measure_fresh(mode="sync")
    print(f"sync mode: wall {sync['wall_s']:.2f} s, efficiency {sync['efficiency']:.3f}")
    best = min(runs, key=lambda r: r["wall_s"])
    effs = sorted(r["efficiency"] for r in runs)
    out = {
        "bench": "overhead", "members": MEMBERS, "steps": STEPS, "interval": INTERVAL,
        "step_s": STEP_S, "ideal_s": best["ideal_s"],
        "wall_s_median": sorted(r["wall_s"] for r in runs)[len(runs) // 2],
        "efficiency_median": effs[len(effs) // 2], "efficiency_best": effs[-1],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "runs": runs,
        "sync": sync, "peers_same_work_s": {"ray_tune_pbt": 16.0, "syne_tune": 11.3},
    }
    print(f"median efficiency {out['efficiency_median']:.3f} (target >= 0.9)")
    wide = [measure_fresh(workers=16, population=16, steps=100) for _ in range(repeats)]
    effs = sorted(r["efficiency"] for r in wide)
    print(f"16 members x 100 steps on 16 workers (ideal {wide[0]['ideal_s']:.1f} s): walls "
          + ", ".join(f"{r['wall_s']:.2f}" for r in wide)
          + f" s, median efficiency {effs[len(effs) // 2]:.3f}", flush=True)
    out["wide_16x100"] = {"efficiency_median": effs[len(effs) // 2], "runs": wide}
    out["fire"] = fire_rows()
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
