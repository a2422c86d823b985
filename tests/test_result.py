"""Tests for firepbt.result: the queries a user makes over a finished (or running) run.

Two kinds of store: one written record by record here (every value known, so the best member
and its lineage can be checked exactly), and real in-process runs of the quadratic toy (so
``best_checkpoint()`` is checked against the task's own ``load``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firepbt as fp
from firepbt.errors import CheckpointError, RunFailed
from firepbt.result import LINEAGE_KINDS, Result, SchedulePiece, _merge
from firepbt.storage import MANIFEST
from firepbt.store import EVALUATOR, MEMBER, MemoryStore, open_store
from firepbt.store.base import CheckpointRecord, EventRecord, MetricRow, WorkerRecord
from firepbt.tasks.toys import QuadraticToy

GRID = QuadraticToy.grid_hparams()

# --- a store written by hand -------------------------------------------------------------------


class Writer:
    """Writes an experiment's records the way the controller would, without running one."""

    def __init__(self, mode: str = "max") -> None:
        self.store = MemoryStore()
        self.store.create_experiment({"algorithm": {"name": "pbt"},
                                      "metric": {"name": "acc", "mode": mode}})
        self.ids = itertools.count(1)
        self.segments = itertools.count(1)

    def worker(self, wid: int, checkpoint: int | None, subpop: int = 1,
               role: str = MEMBER, step: int = 8) -> None:
        self.store.put_worker(WorkerRecord(wid, role, subpop, {}, step, checkpoint))

    def checkpoint(self, worker: int, step: int, parent: int | None, **hparams: Any) -> int:
        cid = next(self.ids)
        self.store.add_checkpoint(CheckpointRecord(cid, worker, step, f"/nowhere/c{cid}",
                                                   "x", hparams, parent, 0.0))
        return cid

    def points(self, worker: int, *points: tuple[int, float | None]) -> None:
        seg = next(self.segments)
        self.store.add_metrics([MetricRow(worker, seg, s, v, 0.0) for s, v in points])

    def event(self, kind: str, worker: int, step: int, **kw: Any) -> None:
        self.store.add_event(EventRecord(0, kind, worker, step, 0.0, **kw))


def exploit_story(mode: str = "max") -> Result:
    """Member 1 adopts member 0's step-4 checkpoint; member 2 sits in sub-population 2, worker
    3 is an evaluator, member 4's last point is invalid.

    ===========  ==============================================  ========================
    worker       points (step, value)                            along its lineage
    ===========  ==============================================  ========================
    0            (2, .1) (4, .2) (6, .3) (8, .5)                 all               -> .5
    1            (2, .9) (4, .95) (6, .4) (8, .6)                0's to 4, own after -> .6
    2 (P2)       (8, .99)                                        not in P1
    3 (eval)     (12, .98), on from 0's step-8 weights           no member
    4            (4, .7) (8, None)                               latest valid      -> .7
    ===========  ==============================================  ========================
    """
    w = Writer(mode)
    c1 = w.checkpoint(0, 4, None, lr=0.1)
    c2 = w.checkpoint(0, 8, c1, lr=0.1)
    w.checkpoint(1, 4, None, lr=0.5)  # member 1's own first half: replaced by the exploit
    c4 = w.checkpoint(1, 8, c1, lr=0.2)
    c5 = w.checkpoint(2, 8, None, lr=0.3)
    c6 = w.checkpoint(3, 12, c2, lr=0.1)
    c7 = w.checkpoint(4, 4, None, lr=0.9)
    c8 = w.checkpoint(4, 8, c7, lr=0.9)
    for wid, cid, sub, role in ((0, c2, 1, MEMBER), (1, c4, 1, MEMBER), (2, c5, 2, MEMBER),
                                (3, c6, 2, EVALUATOR), (4, c8, 1, MEMBER)):
        w.worker(wid, cid, sub, role)
    w.points(0, (2, 0.1), (4, 0.2))
    w.points(0, (6, 0.3), (8, 0.5))
    w.points(1, (2, 0.9), (4, 0.95))
    w.points(1, (6, 0.4), (8, 0.6))
    w.points(2, (8, 0.99))
    w.points(3, (12, 0.98))
    w.points(4, (4, 0.7))
    w.points(4, (8, None))
    w.event("ready", 1, 4)
    w.event("exploit", 1, 4, donor=0, donor_checkpoint=c1, old_hparams={"lr": 0.5},
            new_hparams={"lr": 0.2})
    w.event("failure", 4, 4, info={"segment": 9, "attempt": 2, "error": "Traceback\nE: x\n"})
    w.event("transfer", 2, 8, donor=0, donor_checkpoint=c2)
    w.event("stop", 3, 8)
    return Result(w.store)


def test_the_best_member_is_the_one_of_p1_with_the_best_latest_valid_metric() -> None:
    res = exploit_story()
    assert res.final_metrics() == {0: 0.5, 1: 0.6, 4: 0.7}
    assert res.final_metrics(subpop=None) == {0: 0.5, 1: 0.6, 2: 0.99, 4: 0.7}
    assert res.final_metrics(subpop=2) == {2: 0.99}
    assert (res.best, res.best_metric) == (4, 0.7)


def test_lower_is_better_picks_the_lowest() -> None:
    res = exploit_story(mode="min")
    assert res.metric == fp.Metric("acc", "min")
    assert (res.best, res.best_metric) == (0, 0.5)


def test_the_curve_of_an_exploited_member_follows_its_weights_not_its_id() -> None:
    res = exploit_story()
    # Member 1's own points up to step 4 belong to weights it threw away.
    assert res.current_curve(1) == [(2, 0.1), (4, 0.2), (6, 0.4), (8, 0.6)]
    assert res.curves()[1] == [(2, 0.9), (4, 0.95), (6, 0.4), (8, 0.6)]


def test_the_schedule_follows_the_checkpoint_chain_and_merges_equal_pieces() -> None:
    res = exploit_story()
    assert res.schedule(1) == [SchedulePiece(0, 4, 0, {"lr": 0.1}),
                               SchedulePiece(4, 8, 1, {"lr": 0.2})]
    assert res.schedule(0) == [SchedulePiece(0, 8, 0, {"lr": 0.1})]  # two pieces, one merged
    # An evaluator's weights descend from its parent's.
    assert res.schedule(3) == [SchedulePiece(0, 8, 0, {"lr": 0.1}),
                               SchedulePiece(8, 12, 3, {"lr": 0.1})]


def test_lineage_is_the_exploit_transfer_and_replace_events_oldest_first() -> None:
    res = exploit_story()
    assert [(e.kind, e.worker, e.donor) for e in res.lineage()] == [
        ("exploit", 1, 0), ("transfer", 2, 0)]
    assert set(LINEAGE_KINDS) == {"exploit", "transfer", "replace"}
    assert [e.kind for e in res.events("stop")] == ["stop"]


def test_failures_are_listed_with_their_tracebacks() -> None:
    res = exploit_story()
    (f,) = res.failures()
    assert (f.worker, f.segment, f.attempt, f.step) == (4, 9, 2, 4)
    assert f.last_line == "E: x"
    assert res.failure() is None  # a run that is not marked failed did not fail


def test_summary_names_the_algorithm_metric_best_and_counts() -> None:
    summary = exploit_story().summary()
    assert summary["algorithm"] == "pbt" and summary["metric"] == "acc (higher is better)"
    assert (summary["best"], summary["best_metric"]) == (4, 0.7)
    assert (summary["exploits"], summary["transfers"], summary["failures"]) == (1, 1, 1)
    assert summary["schedule"] == [{"start_step": 0, "end_step": 8, "worker": 4,
                                    "hparams": {"lr": 0.9}}]


VALUES = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]),
                   st.floats(-10, 10, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(finals=st.lists(VALUES, min_size=1, max_size=6), mode=st.sampled_from(["max", "min"]))
def test_best_is_the_best_valid_value_and_the_lowest_id_among_equals(
    finals: list[float | None], mode: str
) -> None:
    w = Writer(mode)
    for wid, value in enumerate(finals):
        w.worker(wid, w.checkpoint(wid, 4, None, lr=1.0), step=4)
        w.points(wid, (4, value))
    res = Result(w.store)
    valid = {k: v for k, v in enumerate(finals) if v is not None}
    if not valid:
        assert res.best is None and res.best_metric is None
        return
    target = max(valid.values()) if mode == "max" else min(valid.values())
    assert res.best == min(k for k, v in valid.items() if v == target)
    assert res.best_metric == target


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([{"a": 1}, {"a": 2}]),
                          st.integers(1, 5)), max_size=12))
def test_merge_keeps_the_steps_and_joins_only_equal_neighbours(
    plan: list[tuple[int, dict[str, int], int]],
) -> None:
    pieces, step = [], 0
    for worker, hparams, length in plan:
        pieces.append(SchedulePiece(step, step + length, worker, hparams))
        step += length
    merged = _merge(pieces)
    assert (merged[0].start_step, merged[-1].end_step) == (0, step) if merged else pieces == []
    assert all(a.end_step == b.start_step for a, b in itertools.pairwise(merged))
    assert all((a.worker, a.hparams) != (b.worker, b.hparams)
               for a, b in itertools.pairwise(merged))
    # Every step keeps the hyperparameters and writer it had.
    for p in pieces:
        (m,) = [m for m in merged if m.start_step <= p.start_step < m.end_step]
        assert (m.worker, m.hparams) == (p.worker, p.hparams)


def test_an_empty_store_has_no_experiment_and_says_which_store() -> None:
    res = Result(MemoryStore())
    with pytest.raises(KeyError, match="memory://"):
        _ = res.experiment
    assert res.status() == "unknown" and res.failure() is None


# --- real runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Result:
    store = tmp_path_factory.mktemp("run") / "run.db"
    return fp.run("quadratic", algorithm=fp.PBT(population=4), steps=40, interval=4,
                  initial=GRID, store=str(store), executor="inprocess", seed=3)


def test_best_checkpoint_is_a_folder_the_tasks_own_load_reads(finished: Result) -> None:
    assert finished.best is not None and finished.best_metric is not None
    toy = QuadraticToy()
    toy.setup(GRID[0], seed=0)
    toy.load(finished.best_checkpoint())
    # The weights of the best member's last checkpoint score what its last point recorded.
    assert toy.evaluate() == pytest.approx(finished.best_metric)
    assert toy.step == 40


def test_best_checkpoint_of_another_member_and_of_none(finished: Result) -> None:
    other = next(w for w in finished.final_metrics() if w != finished.best)
    toy = QuadraticToy()
    toy.setup(GRID[0], seed=0)
    toy.load(finished.best_checkpoint(other))
    assert toy.evaluate() == pytest.approx(finished.final_metrics()[other])
    with pytest.raises(KeyError):
        finished.best_checkpoint(999)


def test_the_best_members_schedule_covers_its_steps_with_the_hparams_of_its_checkpoints(
    finished: Result,
) -> None:
    assert finished.best is not None
    pieces = finished.schedule(finished.best)
    assert pieces[0].start_step == 0 and pieces[-1].end_step == 40
    assert all(a.end_step == b.start_step for a, b in itertools.pairwise(pieces))
    # A PBT run with a 2-member grid that reaches Q > 0.39 took hparams from both members.
    assert finished.best_metric is not None and finished.best_metric > 0.39
    assert len({tuple(sorted(p.hparams.items())) for p in pieces}) > 1
    exploits = finished.events("exploit")
    assert exploits and finished.lineage() == [
        e for e in finished.events() if e.kind in LINEAGE_KINDS]


def test_a_corrupted_best_checkpoint_is_refused(tmp_path: Path) -> None:
    res = fp.run("quadratic", algorithm=fp.PBT(population=2), steps=8, interval=4,
                 initial=GRID, store=str(tmp_path / "r.db"), executor="inprocess", seed=3)
    path = res.best_checkpoint()
    data = next(p for p in path.iterdir() if p.name != MANIFEST)
    data.write_bytes(data.read_bytes()[:-1])  # truncated
    with pytest.raises(CheckpointError, match="fails its checksum"):
        res.best_checkpoint()


class FailsOnce(QuadraticToy):
    """The third train() call in this process raises once (a transient fault in user code)."""

    calls = 0

    def train(self, steps: int) -> None:
        FailsOnce.calls += 1
        if FailsOnce.calls == 3:
            raise RuntimeError("transient fault in the task")
        super().train(steps)


def test_failed_segments_are_listed_and_a_run_that_recovered_did_not_fail() -> None:
    FailsOnce.calls = 0
    res = fp.run(FailsOnce, algorithm=fp.PBT(population=2), steps=16, interval=4,
                 initial=GRID, store="memory://", executor="inprocess", seed=3)
    (f,) = res.failures()
    assert f.attempt == 1 and f.segment is not None and f.worker in (0, 1)
    assert f.last_line == "RuntimeError: transient fault in the task"
    assert "Traceback (most recent call last)" in f.error and "in train" in f.error
    assert res.status() == "finished" and res.failure() is None and res.best is not None


class Diverges(QuadraticToy):
    def evaluate(self) -> float:
        return math.nan


def test_a_store_without_any_valid_fitness_has_no_best_and_says_why() -> None:
    store = open_store("memory://")
    with pytest.raises(RunFailed, match="every value the task's evaluate"):
        fp.run(Diverges, algorithm=fp.PBT(population=2), steps=8, interval=4, initial=GRID,
               store=store, executor="inprocess", seed=3)
    res = Result(store)
    assert res.status() == "failed" and res.failures() == []
    assert res.best is None and res.best_metric is None
    assert res.final_metrics() == {0: None, 1: None}
    failure = res.failure()
    assert failure is not None and failure.startswith("no member of 2 ended with a valid fitness")
    with pytest.raises(KeyError, match="has no member with a valid metric yet"):
        res.best_checkpoint()
    assert res.summary()["best"] is None and res.summary()["schedule"] == []


def test_best_checkpoint_of_a_run_whose_checkpoints_are_on_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fsspec", reason="fsspec is not installed (the fsspec extra)")
    from firepbt.controller import Controller, RunConfig
    from firepbt.executors.inprocess import InProcessExecutor

    monkeypatch.chdir(tmp_path)  # what the bug creates in the current directory stays here
    store = open_store(f"sqlite:///{tmp_path / 'run.db'}")
    Controller(store=store, executor=InProcessExecutor(QuadraticToy, capacity=2),
               checkpoint_root=(tmp_path / "ckpt").as_uri(), task_ref="quadratic",
               space=QuadraticToy.SPACE, algorithm=fp.PBT(population=2),
               config=RunConfig(steps=8, interval=4, seed=3)).run()
    res = Result(store)
    toy = QuadraticToy()
    toy.setup(GRID[0], seed=0)
    toy.load(res.best_checkpoint())
    assert toy.evaluate() == pytest.approx(res.best_metric)
