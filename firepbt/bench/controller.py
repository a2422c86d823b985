"""Controller cost: decisions per second with a simulated trainable (no training, no files
written by workers) for populations of 100, 1,000 and 10,000 members.

Every handled result is one decision (a ready point): the store transaction, the algorithm's
``decide`` and the bookkeeping. Target: >= 5,000 decisions/s at 1,000 members, with a cost
per decision that stays nearly flat as the population grows.

``store="postgresql://..."`` (CLI: ``firepbt bench controller --store URL``) adds the same rows
for that PostgreSQL database after the memory and SQLite ones; each run uses a new experiment
(schema) that is dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from firepbt.algorithms import PBT, Algorithm
from firepbt.controller import Controller, RunConfig
from firepbt.executors.simulated import SimulatedExecutor
from firepbt.space import LogUniform, Space
from firepbt.store import MemoryStore, SQLiteStore, Store

_runs = itertools.count(1)


def _open(store_kind: str, tmp: str) -> tuple[Store, str]:
    """The store of one measurement, and a label for it."""
    if store_kind == "memory":
        return MemoryStore(), "memory"
    if store_kind == "sqlite":
        return SQLiteStore(Path(tmp) / "c.db"), "sqlite"
    from firepbt.store.postgres import PostgresStore

    return PostgresStore(store_kind, experiment=f"bench_{os.getpid()}_{next(_runs)}"), "postgres"


def _discard(store: Store, store_kind: str) -> None:
    """Drop a PostgreSQL measurement's experiment (the other stores go with the temp dir)."""
    if store.url.startswith("postgresql://"):
        from firepbt.store.postgres import PostgresStore, drop_experiment

        assert isinstance(store, PostgresStore)
        drop_experiment(store_kind, experiment=store.experiment_name)  # the URL with password


def measure(
    algorithm: Algorithm, intervals: int = 3, store_kind: str = "memory", interval: int = 10,
    eval_every: int = 10,
) -> dict[str, Any]:
    """Run ``algorithm`` on the simulated executor; controller time per handled result.

    ``store_kind``: "memory", "sqlite" or a ``postgresql://`` URL.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store, label = _open(store_kind, tmp)
        ctl = Controller(
            store=store, executor=SimulatedExecutor(capacity=1),
            checkpoint_root=Path(tmp) / "ckpt", space=Space(lr=LogUniform(1e-3, 1.0)),
            algorithm=algorithm,
            config=RunConfig(steps=interval * intervals, interval=interval, eval_every=eval_every),
        )
        ctl.start()
        decisions = 0

        def count(_: Controller) -> None:
            nonlocal decisions
            decisions += 1

        ctl.on_event = count
        t0 = time.perf_counter()
        while ctl.step(timeout=0):
            pass
        wall = time.perf_counter() - t0
        counts = {kind: len(store.events(kind=kind))
                  for kind in ("exploit", "transfer", "start_evaluator")}
        ctl.close()
        store.close()
        _discard(store, store_kind)
    return {
        "population": len(algorithm.topology()), "store": label, "decisions": decisions,
        "wall_s": round(wall, 3), "decisions_per_s": round(decisions / wall, 1),
        "us_per_decision": round(1e6 * wall / max(decisions, 1), 1),
        "exploits": counts["exploit"], "transfers": counts["transfer"],
        "evaluator_starts": counts["start_evaluator"],
    }


def main(name: str = "controller", preset: str = "quick", seeds: int | None = None,
         store: str | None = None) -> dict[str, Any]:
    """Decisions per second for 100, 1,000 and 10,000 members, per store.

    Args:
        store: A ``postgresql://`` URL to measure too, after the memory and SQLite stores.
    """
    rows = []
    kinds = ["memory", "sqlite"] + ([store] if store is not None else [])
    for store_kind in kinds:
        for pop in (100, 1000, 10000):
            # At least ~3,000 decisions per run (short runs are all noise), best of 3: the
            # machine is shared, the fastest run is the least disturbed one.
            intervals = max(3, 3000 // pop)
            r = min((measure(PBT(population=pop), intervals, store_kind) for _ in range(3)),
                    key=lambda row: row["wall_s"])
            rows.append(r)
            print(f"{r['store']:>8} store, {pop:>6} members: {r['decisions_per_s']:>9.0f} "
                  f"decisions/s ({r['us_per_decision']:.0f} us each, {r['exploits']} exploits)",
                  flush=True)
    mem = {r["population"]: r for r in rows if r["store"] == "memory"}
    growth = mem[10000]["us_per_decision"] / mem[100]["us_per_decision"]
    print(f"cost per decision grows x{growth:.2f} from 100 to 10,000 members (memory store)")
    out = {"bench": "controller", "rows": rows,
           "decisions_per_s_at_1000": mem[1000]["decisions_per_s"],
           "cost_growth_100_to_10000": round(growth, 2)}
    if store is not None:
        pg = {r["population"]: r for r in rows if r["store"] == "postgres"}
        out["postgres_decisions_per_s_at_1000"] = pg[1000]["decisions_per_s"]
        print(f"postgres: {pg[1000]['decisions_per_s']:.0f} decisions/s at 1,000 members; cost "
              f"per decision x{pg[10000]['us_per_decision'] / pg[100]['us_per_decision']:.2f} "
              "from 100 to 10,000 members", flush=True)
    return out
