"""Golden event logs: seeded synchronous in-process runs whose every event is committed to the
repository, so that a refactor of the engine can prove it changes structure, not behaviour.

    python tests/engine/golden_runs.py    # regenerate (only in a commit that changes behaviour
                                          # on purpose, saying which behaviour and why)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "golden"


def _runs() -> dict[str, Callable[[], Any]]:
    from firepbt import PBT, FirePBT, run

    def go(task: str, algorithm: Any, steps: int) -> Any:
        return run(task, algorithm=algorithm, steps=steps, store="memory://",
                   executor="inprocess", workers=4, mode="sync", seed=5)

    return {
        "pbt-truncation-deceptive": lambda: go("deceptive", PBT(population=8), 400),
        "pbt-ttest-deceptive": lambda: go(
            "deceptive", PBT(population=8, exploit="ttest", fitness_window=5), 400),
        "pbt-truncation-nqm": lambda: go("nqm", PBT(population=8), 1000),
        "fire-gp-deceptive": lambda: go(
            "deceptive", FirePBT(population=10, subpop_sizes=(4, 3)), 400),
        "fire-ema-deceptive": lambda: go(
            "deceptive", FirePBT(population=10, subpop_sizes=(4, 3), smoother="ema"), 400),
        "fire-gp-nqm": lambda: go("nqm", FirePBT(population=10, subpop_sizes=(4, 3)), 1000),
        "fire-ema-nqm": lambda: go(
            "nqm", FirePBT(population=10, subpop_sizes=(4, 3), smoother="ema"), 1000),
    }


NAMES = ("pbt-truncation-deceptive", "pbt-ttest-deceptive", "pbt-truncation-nqm",
         "fire-gp-deceptive", "fire-ema-deceptive", "fire-gp-nqm", "fire-ema-nqm")


def _plain(x: Any) -> Any:
    """JSON-able, floats to 12 significant digits (the same machine reproduces them exactly;
    the rounding only keeps the files readable)."""
    if isinstance(x, float):
        return x if not math.isfinite(x) else float(f"{x:.12g}")
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in sorted(x.items())}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def event_log(name: str) -> list[dict[str, Any]]:
    """Every event of golden run ``name``, without wall-clock times."""
    result = _runs()[name]()
    return [
        _plain({"kind": e.kind, "worker": e.worker, "step": e.step, "donor": e.donor,
                "donor_checkpoint": e.donor_checkpoint, "old": e.old_hparams or {},
                "new": e.new_hparams or {}, "info": dict(e.info)})
        for e in result.events()
    ]


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name in sys.argv[1:] or NAMES:
        log = event_log(name)
        (HERE / f"{name}.json").write_text(json.dumps(log, indent=0) + "\n")
        print(f"{name}: {len(log)} events")


if __name__ == "__main__":
    main()
