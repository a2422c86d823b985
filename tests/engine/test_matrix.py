"""Every algorithm on every executor, in both modes, with fewer workers than members and as many.

FIRE once crashed on process workers in async mode (the CLI's defaults) while every test ran it
in-process and synchronously: this matrix runs each combination to the end through the public
``run()`` and then checks what a user relies on:

* the run finished, and ``firepbt check`` finds nothing wrong in the store;
* every member that finished holds weights trained with the hyperparameters it reports
  (never a donor's final checkpoint with explored values it never used);
* FIRE really ran its evaluators.

An executor added later joins ``EXECUTORS``. The Ray executor runs PBT and FIRE in both modes
in a separate parametrisation (marked ``ray``) that shares one private Ray instance, since
starting Ray costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firepbt import PBT, FirePBT, RandomSearch, run
from firepbt.algorithms import Algorithm
from firepbt.algorithms.pb2 import PB2
from firepbt.batched_trainable import BatchedTrainable
from firepbt.executors.base import Executor
from firepbt.executors.batched import BatchedExecutor
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.invariants import check_store
from firepbt.store.base import DONE, EVALUATOR, MEMBER
from firepbt.tasks.toys import DeceptiveToy

TASK = "firepbt.tasks.toys:DeceptiveToy"
STEPS, INTERVAL, EVAL_EVERY = 300, 20, 2  # 14 ready points: long enough for FIRE transfers

ALGORITHMS: dict[str, Callable[[], Algorithm]] = {
    "pbt-truncation": lambda: PBT(population=6, quantile=0.34),
    "pbt-tournament": lambda: PBT(population=6, exploit="tournament"),
    "pbt-ttest": lambda: PBT(population=6, exploit="ttest", fitness_window=4),
    "fire-n2": lambda: FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema"),
    "fire-n3": lambda: FirePBT(population=9, subpop_sizes=(2, 2, 3), smoother="ema"),
    "pb2": lambda: PB2(population=6, quantile=0.34),
    "random": lambda: RandomSearch(population=6),
}


class BatchedDeceptive(BatchedTrainable):
    """K deceptive toys in one object: lets the batched executor's scheduling run the matrix
    on the same task as the others (the stacking itself is tested in tests/executors)."""

    def setup(self, hparams_list: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> None:
        self.slots = []
        for hp, seed in zip(hparams_list, seeds, strict=True):
            toy = DeceptiveToy()
            toy.setup(hp, seed)
            self.slots.append(toy)
        self.hparams = [dict(h) for h in hparams_list]
        self.seeds = list(seeds)

    def train(self, steps: int) -> None:
        for toy in self.slots:
            toy.train(steps)

    def evaluate(self) -> np.ndarray:
        return np.array([toy.evaluate() for toy in self.slots])

    def save(self, i: int, path: Path) -> None:
        self.slots[i].save(path)

    def load(self, i: int, path: Path) -> None:
        self.slots[i].load(path)

    def set_hparams(self, i: int, hparams: Mapping[str, Any]) -> None:
        super().set_hparams(i, hparams)
        self.slots[i].set_hparams(hparams)


def _executor(kind: str | Executor, workers: int) -> str | Executor:
    if not isinstance(kind, str):
        return kind
    if kind == "inprocess":
        return InProcessExecutor(TASK, capacity=workers)
    if kind == "batched":
        return BatchedExecutor(BatchedDeceptive, capacity=workers)
    return kind


EXECUTORS = ("inprocess", "process", "batched")
CASES = [
    pytest.param(alg, ex, mode, share, id=f"{alg}-{ex}-{mode}-{share}",
                 marks=[pytest.mark.timeout(120)])
    for alg in ALGORITHMS
    for ex in EXECUTORS
    for mode in ("sync", "async")
    for share in ("fewer", "all")
]


@pytest.mark.parametrize(("alg_name", "executor", "mode", "share"), CASES)
def test_every_algorithm_runs_to_the_end(
    alg_name: str, executor: str, mode: str, share: str, tmp_path: Path
) -> None:
    run_and_check(alg_name, executor, mode, share, tmp_path)


RAY_CASES = [
    pytest.param(alg, mode, share, id=f"{alg}-ray-{mode}-{share}",
                 marks=[pytest.mark.timeout(180)])
    for alg in ("pbt-truncation", "fire-n2")
    for mode in ("sync", "async")
    for share in ("fewer",)
] + [
    # As many actors as members, every actor up before the first segment (see below).
    pytest.param(alg, "async", "all", id=f"{alg}-ray-async-all", marks=[pytest.mark.timeout(180)])
    for alg in ("pbt-truncation", "fire-n2")
]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One private Ray instance (loopback, 2 logical CPUs) for the Ray cases; always stopped."""
    with pytest.MonkeyPatch.context() as mp:
        # Before Ray is imported: it reads its authentication mode then.
        for key, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
                           ("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0")):
            mp.setenv(key, value)
        ray = pytest.importorskip("ray", reason="Ray is not installed (the ray extra)")
        from firepbt.executors.ray import init_private_ray

        init_private_ray(num_cpus=2)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize(("alg_name", "mode", "share"), RAY_CASES)
def test_pbt_and_fire_run_to_the_end_on_ray(
    alg_name: str, mode: str, share: str, tmp_path: Path, ray_instance: None
) -> None:
    from firepbt.executors.ray import RayExecutor

    # A quarter CPU per member, so that 8 workers fit the 2 logical CPUs at once.
    workers = 2 if share == "fewer" else len(ALGORITHMS[alg_name]().topology())
    ex = RayExecutor(TASK, workers=workers, resources={"cpu": 0.25})
    # Every actor up before the first segment: Ray starts 2 worker processes at a time here,
    # and if P1's members finish (milliseconds a segment on this toy) before any P2 member
    # reports its first interval, FIRE rightly starts no evaluator: no P1 member is left to
    # take a transfer.
    assert ex.wait_ready(timeout=120) == workers
    run_and_check(alg_name, ex, mode, share, tmp_path)


def run_and_check(alg_name: str, executor: str | Executor, mode: str, share: str, tmp_path: Path,
                  **kwargs: Any) -> None:
    """Run ``alg_name`` to the end through ``run()`` and check what a user relies on."""
    algorithm = ALGORITHMS[alg_name]()
    total = len(algorithm.topology())
    workers = 2 if share == "fewer" else total
    result = run(
        TASK, algorithm=algorithm, steps=STEPS, interval=INTERVAL, eval_every=EVAL_EVERY,
        store=str(tmp_path / "run.db"), executor=_executor(executor, workers), workers=workers,
        mode=mode, seed=7, **kwargs,
    )
    store = result.store
    assert result.status() == "finished"
    assert check_store(store) == []
    # Nothing trains past the budget, evaluators included (a transfer hands their weights on).
    assert max(c.step for c in store.checkpoints(include_deleted=True)) <= STEPS
    members = [w for w in store.workers() if w.role == MEMBER]
    assert members and all(w.status == DONE and w.step == STEPS for w in members)
    for w in members:
        assert w.checkpoint is not None
        trained_with = store.checkpoint(w.checkpoint).hparams
        assert dict(trained_with) == dict(w.hparams), (
            f"member {w.id} reports {dict(w.hparams)} but its weights were trained with "
            f"{dict(trained_with)}"
        )
    assert result.best is not None and result.best_metric is not None
    if alg_name.startswith("fire"):
        evaluators = {w.id for w in store.workers() if w.role == EVALUATOR}
        started = [e for e in result.events("start_evaluator") if e.worker in evaluators]
        assert started, "FIRE ran no evaluator"
        assert len(result.events("stop_evaluator")) == len(started)
