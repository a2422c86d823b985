"""System overhead: 4 members x 200 steps of 20 ms, ready + checkpoint every 10 steps.

Ideal wall time is 4.0 s (each member's 200 x 20 ms on its own worker). Efficiency = ideal /
measured wall time, worker start-up included. Peers measured on the same machine for the same
work: Ray Tune PBT 16.0 s, Syne Tune 11.3 s.

A second table runs FIRE PBT as users run it (22 workers, process executor, async mode: 8 + 8
members and 6 evaluators, a curve point every step) next to PBT with 22 members on 22 workers.
Ideal is again one member's 200 x 20 ms; FIRE's evaluators train on the 6 spare workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from firepbt.algorithms import PBT, Algorithm
from firepbt.algorithms.fire import FirePBT
from firepbt.controller import Controller, RunConfig
from firepbt.executors.local import LocalExecutor
from firepbt.space import LogUniform, Space
from firepbt.store import SQLiteStore

MEMBERS, STEPS, INTERVAL, STEP_S = 4, 200, 10, 0.02


FIRE_WORKERS = 22


def _algorithm(name: str, population: int) -> Algorithm:
    if name == "fire":
        return FirePBT(population=population)
    return PBT(population=population)


def measure(workers: int = MEMBERS, mode: str = "async", algorithm: str = "pbt",
            population: int = MEMBERS, eval_every: int = INTERVAL) -> dict[str, Any]:
    alg = _algorithm(algorithm, population)
    members = sum(1 for r in alg.topology() if r.role == "member")
    ideal = STEPS * STEP_S * max(1.0, members / workers)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        space = Space(lr=LogUniform(1e-3, 1.0), step_s=STEP_S)
        t0 = time.perf_counter()
        executor = LocalExecutor("firepbt.tasks.sleep:SleepTask", workers=workers)
        ctl = Controller(
            store=store, executor=executor, checkpoint_root=Path(tmp) / "ckpt",
            task_ref="firepbt.tasks.sleep:SleepTask", space=space,
            algorithm=alg,
            config=RunConfig(steps=STEPS, interval=INTERVAL, eval_every=eval_every, mode=mode),
        )
        ctl.start()
        while ctl.step(timeout=1.0):
            pass
        wall = time.perf_counter() - t0
        peak = executor.peak_rss_bytes()
        ctl.close()
        exploits = len(store.events(kind="exploit"))
        transfers = len(store.events(kind="transfer"))
        evaluations = len(store.events(kind="start_evaluator"))
        store.close()
    return {
        "algorithm": algorithm, "mode": mode, "workers": workers, "ideal_s": round(ideal, 3),
        "wall_s": round(wall, 3), "efficiency": round(ideal / wall, 3),
        "peak_rss_mib": round(peak / 2**20, 1), "segments": members * STEPS // INTERVAL,
        "exploits": exploits, "transfers": transfers, "evaluations": evaluations,
    }


def measure_fresh(**kw: Any) -> dict[str, Any]:
    """``measure`` in a new interpreter: worker start-up (the fork server too) is counted
    every time, never served warm by an earlier run."""
    code = ("import json; from firepbt.bench.overhead import measure; "
            f"print(json.dumps(measure(**{kw!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(name: str = "overhead", preset: str = "quick", seeds: int | None = None
         ) -> dict[str, Any]:
    repeats = seeds or (3 if preset == "quick" else 5)
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
