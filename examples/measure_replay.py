"""Measure replay: does the learned schedule alone, on a fresh model, reach the population's best?

For each seed: train a PBT population, then `firepbt.replay.replay(store, seed=1000 + seed)`
trains one fresh model (another init, another data order / gradient noise) with the best
member's schedule. Prints one line per run and a summary; the last line is JSON.

    python examples/measure_replay.py fmnist --seeds 3 --population 8
    python examples/measure_replay.py nqm --seeds 5 --population 8

Targets (issue #14): Fashion-MNIST replay accuracy >= 99 % of the population's best; NQM replay
loss within 1.1x of the population's best loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import firepbt as fp
from firepbt.replay import replay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("task", choices=("fmnist", "nqm"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, help="task default when absent")
    args = p.parse_args()

    ratios = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="firepbt-measure-") as tmp:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            store = str(Path(tmp) / f"{args.task}-{seed}.db")
            fp.run(args.task, algorithm=fp.PBT(population=args.population), steps=args.steps,
                   store=store, workers=args.workers, seed=seed)
            out = replay(store, seed=1000 + seed)
            assert out.metric is not None and out.population_metric is not None
            if args.task == "nqm":  # metric = -loss; lower loss is better
                pop, rep = -out.population_metric, -out.metric
                ratio = rep / pop
                text = f"loss: population best {pop:.4f}, replay {rep:.4f}, ratio {ratio:.3f}"
            else:
                pop, rep = out.population_metric, out.metric
                ratio = rep / pop
                text = (f"val accuracy: population best {pop:.4f}, replay {rep:.4f}, "
                        f"replay/best {ratio:.4f}")
            ratios.append(ratio)
            rows.append({"seed": seed, "population": pop, "replay": rep, "ratio": ratio,
                         "pieces": len(out.schedule)})
            print(f"{args.task} seed {seed}: {text} ({len(out.schedule)} schedule pieces, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    target = "ratio <= 1.1" if args.task == "nqm" else "ratio >= 0.99"
    ok = [r <= 1.1 for r in ratios] if args.task == "nqm" else [r >= 0.99 for r in ratios]
    print(f"{args.task}: ratio mean {statistics.mean(ratios):.4f}, min {min(ratios):.4f}, "
          f"max {max(ratios):.4f}; target {target} met in {sum(ok)}/{len(ok)} seeds")
    print(json.dumps({"task": args.task, "population": args.population, "runs": rows}))


if __name__ == "__main__":
    main()
