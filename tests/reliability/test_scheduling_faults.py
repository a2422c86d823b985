"""Scenarios 3, 10, 11, 16 and 17: leases, stale results, donors gone, bad fitness, evaluators.

Deterministic doubles of the executor (subclasses of the in-process one) play the part of a
slow worker judged dead, a duplicated message or a dying evaluator; nothing waits on a timer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from rel_helpers import assert_invariants

from firepbt import PBT, Result, run
from firepbt.algorithms.base import Decision, Exploit, Snapshot
from firepbt.algorithms.fire import FirePBT
from firepbt.checkpoints import CheckpointDir
from firepbt.errors import RunFailed
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.store import EVALUATOR, MemoryStore
from firepbt.tasks.toys import DeceptiveToy, QuadraticToy
from firepbt.trainable import SegmentResult, SegmentSpec

GRID = QuadraticToy.grid_hparams()


def quick(store: object = "memory://", **kw: Any) -> Any:
    settings: dict[str, Any] = {"algorithm": PBT(population=4), "steps": 40, "interval": 4,
                                "initial": GRID, "executor": "inprocess", "workers": 2,
                                "seed": 3, "store": store}
    settings.update(kw)
    return run(settings.pop("task", "quadratic"), **settings)


class LateResultExecutor(InProcessExecutor):
    """Judges worker 1's first segment dead, then delivers its real result late (old lease)."""

    def __init__(self) -> None:
        super().__init__(QuadraticToy, capacity=2)
        self.late: SegmentResult | None = None
        self.delivered_late = False

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        out = []
        for r in super().poll(timeout):
            if self.late is None and r.worker == 1 and r.error is None:
                self.late = r
                out.append(SegmentResult(r.worker, r.segment, r.epoch, (), r.end_step - 4,
                                         None, None, error="worker judged dead (no heartbeat)"))
            else:
                out.append(r)
        if self.late is not None and not self.delivered_late and len(out) and out[0].worker != 1:
            self.delivered_late = True
            out.append(self.late)
        return out


def test_late_result_of_a_worker_judged_dead_is_rejected_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """#10: rescheduled once; the late result carries the old lease and is dropped."""
    ex = LateResultExecutor()
    with caplog.at_level(logging.WARNING, logger="firepbt"):
        res = quick(executor=ex)
    assert ex.delivered_late and ex.late is not None
    assert any("rejected a stale result for worker 1" in m for m in caplog.messages)
    # Its checkpoint was never committed and is gone; the re-run wrote another one.
    assert ex.late.checkpoint_path is not None and not Path(ex.late.checkpoint_path).exists()
    seg = res.store.segment(ex.late.segment)
    assert seg.attempts == 1 and seg.epoch == ex.late.epoch + 1 and seg.status == "completed"
    assert len(res.events("failure")) == 1
    assert_invariants(res.store)


class DuplicatingExecutor(InProcessExecutor):
    """Delivers every 5th result twice (a retried message), the copy one poll later."""

    def __init__(self) -> None:
        super().__init__(QuadraticToy, capacity=2)
        self.n = 0
        self.copies: list[SegmentResult] = []
        self.duplicated: list[SegmentResult] = []

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        out = self.copies + super().poll(timeout)
        self.copies = []
        for r in out[-1:]:
            self.n += 1
            if self.n % 5 == 0:
                self.copies.append(r)
                self.duplicated.append(r)
        return out


def test_duplicate_and_superseded_results_are_dropped_keeping_committed_checkpoints() -> None:
    """#16: results for an older version or lease are dropped, never applied twice."""
    ex = DuplicatingExecutor()
    res = quick(executor=ex)
    assert ex.duplicated
    for r in ex.duplicated:
        # Applied once: one checkpoint record, one set of curve rows for that segment.
        rows = [m for m in res.store.metrics(r.worker) if m.segment == r.segment]
        assert len(rows) == len(r.points)
    assert_invariants(res.store)  # committed checkpoints of duplicates were kept


_deleted: list[int] = []


@dataclasses.dataclass(frozen=True)
class DonorVanishes(PBT):
    """PBT whose first exploit's donor checkpoint is deleted behind the controller's back."""

    root: ClassVar[list[Path]] = []

    def decide(
        self, snapshot: Snapshot, state: Any, rng: np.random.Generator
    ) -> tuple[list[Decision], Any]:
        out, state = super().decide(snapshot, state, rng)
        for d in out:
            if isinstance(d, Exploit) and not _deleted:
                _deleted.append(d.donor_checkpoint)
                shutil.rmtree(self.root[0] / f"c{d.donor_checkpoint:09d}")
        return out, state


def test_donor_checkpoint_gone_during_exploit_skips_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """#3: never a crash, never a restart from scratch: the exploit is skipped and logged."""
    _deleted.clear()
    DonorVanishes.root[:] = [tmp_path / "s.db.ckpt"]
    with caplog.at_level(logging.WARNING, logger="firepbt"):
        res = quick(store=str(tmp_path / "s.db"), algorithm=DonorVanishes(population=4))
    skipped = res.events("exploit_skipped")
    # Every member that chose the vanished checkpoint skips it (with equal-step ranking more
    # than one ready member may pick that donor before it writes a new checkpoint).
    assert skipped and all(e.donor_checkpoint == _deleted[0] for e in skipped)
    assert any("skipped" in m for m in caplog.messages)
    # The member kept its own weights: its next segment starts from its own checkpoint.
    member = skipped[0].worker
    after = [s for s in res.store.segments(worker=member) if s.start_step == skipped[0].step
             or s.from_checkpoint == _deleted[0]]
    assert all(s.from_checkpoint != _deleted[0] for s in after)
    assert res.status() == "finished"
    assert all(w.step == 40 for w in res.store.workers())
    assert_invariants(res.store)


# -- scenario 11: NaN-like fitness ---------------------------------------------------------------

BAD_VALUES: dict[str, Any] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf,
                              "none": None, "text": "abc"}


class BadFitness(QuadraticToy):
    """Members started with h0 == 1 report a NaN-like fitness (chosen by BAD)."""

    BAD: ClassVar[list[Any]] = [math.nan]
    ALL: ClassVar[list[bool]] = [False]

    def evaluate(self) -> float:
        if self.ALL[0] or self.hparams["h0"] == 1.0:
            return self.BAD[0]  # type: ignore[no-any-return]
        return super().evaluate()


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_nan_like_fitness_ranks_last_and_is_never_a_donor(bad: str) -> None:
    """#11: an invalid observation is stored as None, and such a member never donates."""
    BadFitness.BAD[:] = [BAD_VALUES[bad]]
    BadFitness.ALL[:] = [False]
    res = quick(task=BadFitness)
    invalid = {m.worker for m in res.store.metrics() if m.value is None}
    assert invalid  # recorded as failed observations, not as numbers
    exploits = res.events("exploit")
    assert exploits
    for e in exploits:
        assert e.info["donor_fitness"] is not None and math.isfinite(e.info["donor_fitness"])
    assert_invariants(res.store)


def test_all_invalid_fitness_means_no_exploit_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    BadFitness.BAD[:] = [math.nan]
    BadFitness.ALL[:] = [True]
    store = MemoryStore()
    # A run that ends with no valid fitness anywhere has no answer: it fails (issue 8).
    with caplog.at_level(logging.WARNING, logger="firepbt"), \
            pytest.raises(RunFailed, match="NaN, inf, None or not a number"):
        quick(task=BadFitness, store=store)
    res = Result(store)
    assert res.status() == "failed"
    assert res.events("exploit") == []
    assert any("no member has a valid fitness" in m for m in caplog.messages)
    assert all(w.step == 40 for w in res.store.workers())
    assert_invariants(res.store)


class NoisyDeceptive(DeceptiveToy):
    """Every 7th evaluation is NaN: FIRE's curve fits must drop such points."""

    def evaluate(self) -> float:
        self.calls = getattr(self, "calls", 0) + 1
        return math.nan if self.calls % 7 == 0 else super().evaluate()


def fire(task: Any = DeceptiveToy, executor: Any = "inprocess", store: Any = "memory://") -> Any:
    return run(task, algorithm=FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema"),
               steps=400, store=store, executor=executor, workers=2, mode="sync", seed=1)


def test_fire_with_invalid_curve_points_runs_to_the_end() -> None:
    res = fire(NoisyDeceptive)
    assert any(m.value is None for m in res.store.metrics())
    assert res.events("start_evaluator")
    assert all(w.step == 400 for w in res.store.workers() if w.role == "member")
    assert_invariants(res.store)


# -- scenario 17: evaluators killed or superseded ----------------------------------------------


class EvaluatorKiller(InProcessExecutor):
    """Reports evaluator segments as killed: the first ``n`` of them, or all (n=None)."""

    def __init__(self, evaluators: set[int], n: int | None) -> None:
        super().__init__(DeceptiveToy, capacity=2)
        self.evaluators, self.n, self.killed = evaluators, n, 0

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        out = []
        for r in super().poll(timeout):
            if r.worker in self.evaluators and r.error is None and (
                self.n is None or self.killed < self.n
            ):
                self.killed += 1
                # A worker found dead leaves no checkpoint behind: the process executor removes
                # one it completed but never reported (LocalExecutor._fail). Do the same here.
                assert r.checkpoint_path is not None
                CheckpointDir(Path(r.checkpoint_path).parent).delete(r.checkpoint_path)
                r = SegmentResult(r.worker, r.segment, r.epoch, (), r.end_step, None, None,
                                  error="worker process died (exit code -9)")
            out.append(r)
        return out

    def submit(self, spec: SegmentSpec) -> None:
        super().submit(spec)


EVALUATORS = {6, 7}  # FirePBT(population=8, subpop_sizes=(3, 3)): members 0-5, evaluators 6-7


@pytest.mark.parametrize("n", [1, None])
def test_killed_evaluators_are_requeued_or_stopped_and_never_block_members(
    n: int | None,
) -> None:
    store = MemoryStore()
    ex = EvaluatorKiller(EVALUATORS, n)
    res = fire(executor=ex, store=store)
    assert {w.id for w in store.workers() if w.role == EVALUATOR} == EVALUATORS
    assert ex.killed >= 1
    assert all(w.step == 400 and w.status == "done"
               for w in store.workers() if w.role == "member")
    stops = res.events("stop_evaluator")
    if n is None:  # every evaluator segment dies: evaluators give up, members go on
        assert any(e.info["reason"] == "failed" for e in stops)
        assert res.events("transfer") == []
    else:  # one death: re-queued under a new lease and finished
        assert any(s.attempts == 1 and s.status == "completed" and s.worker in EVALUATORS
                   for s in store.segments())
    assert_invariants(store)
