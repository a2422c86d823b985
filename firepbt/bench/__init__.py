"""Benchmarks that print their figures (``firepbt bench NAME [--json]``)."""

from __future__ import annotations

import importlib
from typing import Any

from firepbt.errors import ConfigError

BENCHES = {
    "overhead": "firepbt.bench.overhead",
    "controller": "firepbt.bench.controller",
    "toys": "firepbt.bench.compare",
    "nqm": "firepbt.bench.compare",
    "batched": "firepbt.bench.batched",
    "teacher-student": "firepbt.bench.real",
    "fmnist": "firepbt.bench.real",
    "rl": "firepbt.bench.real",
    "decision-cost": "firepbt.bench.compare:main_decision_cost",
    "async-sync": "firepbt.bench.compare:main_async_sync",
    "fire-init": "firepbt.bench.compare:main_fire_init",
    "fire-init-deceptive": "firepbt.bench.compare:main_fire_init_deceptive",
}


def run_bench(name: str, preset: str = "quick", seeds: int | None = None) -> dict[str, Any]:
    """Run benchmark ``name``; returns the figures (also printed as it goes)."""
    if name not in BENCHES:
        raise ConfigError(f"bench {name!r}: unknown; expected one of {', '.join(BENCHES)}")
    module_name, _, function = BENCHES[name].partition(":")
    main = getattr(importlib.import_module(module_name), function or "main")
    result: dict[str, Any] = main(name=name, preset=preset, seeds=seeds)
    return result
