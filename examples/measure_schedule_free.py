"""Schedule-Free SGD against the tuned cosine schedule, with the bench presets' protocol.

    python examples/measure_schedule_free.py teacher-student   # ~2.5 min here
    python examples/measure_schedule_free.py fmnist            # ~1 min here

The rows are exactly the ``schedule-free`` (and, for teacher-student, ``cosine``) baselines of
``firepbt bench teacher-student|fmnist --preset full``: the peak tuned on the preset's grid and
tuning seeds (Schedule-Free at ten times the grid's value), then seeds 0-4. A cheap random
search row stands beside them because ``compare()`` needs one method. The figures are in
docs/results-real.md.
"""

from __future__ import annotations

import sys
import time

from firepbt.algorithms import RandomSearch
from firepbt.bench.presets import COSINE, FMNIST_SPACE, schedule_free
from firepbt.compare import Method, compare

RANDOM = Method("random", lambda w: RandomSearch(population=w), "random search")


def main(task: str) -> None:
    t0 = time.time()
    if task == "teacher-student":
        settings = {"baselines": [schedule_free(200), COSINE], "steps": 4000, "interval": 200,
                    "eval_every": 25, "peaks": tuple(0.01 * 2 ** (k / 2) for k in range(6)),
                    "tuning_seeds": (10_000, 10_001)}
    elif task == "fmnist":
        settings = {"baselines": [schedule_free(80)], "steps": 1600, "interval": 100,
                    "eval_every": 10, "peaks": (0.01, 0.03, 0.1), "tuning_seeds": (10_000,),
                    "space": FMNIST_SPACE, "test": "test_accuracy"}
    else:
        raise SystemExit(f"task {task!r}: expected teacher-student or fmnist")
    out = compare(task, methods=[RANDOM], seeds=5, workers=2, out=f"runs/schedule-free-{task}",
                  executor="inprocess", mode="sync", processes=1, schedule_every=1, jobs=2,
                  log=lambda line: None, **settings)
    for key, m in out["methods"].items():
        values = m["test"]["values"] if "test" in m else m["values"]
        if task == "teacher-student":
            values = [-v for v in values]  # the task's metric is -FVU
        mean = sum(values) / len(values)
        print(f"{m.get('label', key)}: mean {mean:.4f}, per seed "
              + " ".join(f"{v:.4f}" for v in values))
    print(f"wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "teacher-student")
