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


def best_test_accuracy(store: str) -> float:
    """Test accuracy of the population's best member (its newest checkpoint)."""
    from firepbt.result import Result
    from firepbt.store import open_store
    from firepbt.tasks.fmnist import FashionMNISTMLP

    res = Result(open_store(store))
    assert res.best is not None
    w = res.store.worker(res.best)
    assert w.checkpoint is not None
    t = FashionMNISTMLP()
    t.setup(dict(w.hparams), 0)
    t.load(Path(res.store.checkpoint(w.checkpoint).path))
    return t.test_accuracy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("task", choices=("fmnist", "nqm"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, help="task default when absent")
    args = p.parse_args()

    ratios: list[float] = []
    test_ratios: list[float] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="firepbt-measure-") as tmp:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            store = str(Path(tmp) / f"{args.task}-{seed}.db")
            fp.run(args.task, algorithm=fp.PBT(population=args.population), steps=args.steps,
                   store=store, workers=args.workers, seed=seed)
            test = (lambda t: t.test_accuracy()) if args.task == "fmnist" else None
            out = replay(store, seed=1000 + seed, inspect=test)
            assert out.metric is not None and out.population_metric is not None
            if args.task == "nqm":  # metric = -loss; lower loss is better
                pop, rep = -out.population_metric, -out.metric
                ratio = rep / pop
                text = f"loss: population best {pop:.4f}, replay {rep:.4f}, ratio {ratio:.3f}"
            else:
                pop, rep = out.population_metric, out.metric
                ratio = rep / pop
                # The selected member's validation score is biased upwards (the max of the
                # population); test accuracy of both models is not.
                pop_test = best_test_accuracy(store)
                text = (f"val accuracy: population best {pop:.4f}, replay {rep:.4f}, "
                        f"replay/best {ratio:.4f}; test accuracy: best member {pop_test:.4f}, "
                        f"replay {out.inspected:.4f}, replay/best "
                        f"{out.inspected / pop_test:.4f}")
                test_ratios.append(out.inspected / pop_test)
            ratios.append(ratio)
            rows.append({"seed": seed, "population": pop, "replay": rep, "ratio": ratio,
                         "pieces": len(out.schedule)})
            print(f"{args.task} seed {seed}: {text} ({len(out.schedule)} schedule pieces, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    target = "ratio <= 1.1" if args.task == "nqm" else "ratio >= 0.99"
    ok = [r <= 1.1 for r in ratios] if args.task == "nqm" else [r >= 0.99 for r in ratios]
    print(f"{args.task}: ratio mean {statistics.mean(ratios):.4f}, min {min(ratios):.4f}, "
          f"max {max(ratios):.4f}; target {target} met in {sum(ok)}/{len(ok)} seeds")
    if test_ratios:
        print(f"fmnist test-accuracy ratio mean {statistics.mean(test_ratios):.4f}, "
              f"min {min(test_ratios):.4f}")
    print(json.dumps({"task": args.task, "population": args.population, "runs": rows}))


if __name__ == "__main__":
    main()
