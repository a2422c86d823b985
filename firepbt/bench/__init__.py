"""Benchmarks that print their figures (``firepbt bench NAME [--json]``).

The comparisons (toys, nqm, fmnist, rl, teacher-student, fire-init, fire-init-deceptive,
fire-robust, fire-evaluators, async-sync) are presets over :func:`firepbt.compare.compare`
(``firepbt.bench.presets``); the others measure the engine itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from firepbt.errors import ConfigError

_PRESETS = ("toys", "nqm", "fmnist", "rl", "teacher-student", "fire-init",
            "fire-init-deceptive", "fire-robust", "fire-evaluators", "async-sync")
BENCHES = {
    "overhead": "firepbt.bench.overhead",
    "controller": "firepbt.bench.controller",
    "batched": "firepbt.bench.batched",
    "decision-cost": "firepbt.bench.decision_cost",
    **{name: "firepbt.bench.presets" for name in _PRESETS},
}


def run_bench(name: str, preset: str = "quick", seeds: int | None = None) -> dict[str, Any]:
    """Run benchmark ``name``; returns the figures (also printed as it goes)."""
    if name not in BENCHES:
        raise ConfigError(f"bench {name!r}: unknown; expected one of {', '.join(BENCHES)}")
    module_name, _, function = BENCHES[name].partition(":")
    main = getattr(importlib.import_module(module_name), function or "main")
    result: dict[str, Any] = main(name=name, preset=preset, seeds=seeds)
    return result
