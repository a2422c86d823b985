"""Whole FIRE PBT runs through the real engine on the cheap toys."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from firepbt.algorithms.fire import FirePBT
from firepbt.api import run
from firepbt.result import Result
from firepbt.store.base import EVALUATOR, MEMBER
from firepbt.tasks.toys import DeceptiveToy, PlainToy


def fire_run(
    task: Any = DeceptiveToy, mode: str = "sync", seed: int = 1, steps: int = 400, **kw: Any
) -> Result:
    kw.setdefault("population", 8)
    kw.setdefault("subpop_sizes", (3, 3))
    kw.setdefault("smoother", "ema")
    return run(
        task,
        algorithm=FirePBT(**kw),
        steps=steps,
        store="memory://",
        executor="inprocess",
        workers=2,
        mode=mode,
        seed=seed,
    )


@pytest.fixture(scope="module")
def sync_run() -> Result:
    return fire_run()


def test_evaluators_start_stop_and_transfer(sync_run: Result) -> None:
    kinds = Counter(e.kind for e in sync_run.events())
    assert kinds["start_evaluator"] >= 4
    # Every evaluator that started was stopped (at the latest by the run's end).
    assert kinds["start_evaluator"] == kinds["stop_evaluator"]
    assert kinds["transfer"] >= 1
    reasons = Counter(e.info["reason"] for e in sync_run.events("stop_evaluator"))
    assert reasons["success"] == kinds["transfer"]
    assert set(reasons) <= {"success", "no_overlap", "p_value", "overwritten", "superseded", "end"}


def test_transfers_are_lineage_events_from_evaluators(sync_run: Result) -> None:
    store = sync_run.store
    evaluators = {w.id for w in store.workers() if w.role == EVALUATOR}
    p1 = {w.id for w in store.workers() if w.role == MEMBER and w.subpop == 1}
    p2 = {w.id for w in store.workers() if w.role == MEMBER and w.subpop == 2}
    transfers = sync_run.events("transfer")
    assert transfers and transfers == [e for e in sync_run.lineage() if e.kind == "transfer"]
    for e in transfers:
        assert e.worker in p1 and e.donor in p2  # weights flow down the chain
        assert e.info["evaluator"] in evaluators
        assert 0.0 <= e.info["p_value"] <= 0.01 and e.info["delta"] > 0.0
        assert e.old_hparams == e.new_hparams  # the child keeps its hyperparameters


def test_schedules_follow_transfers_consistently(sync_run: Result) -> None:
    store = sync_run.store
    for w in store.workers():
        if w.role != MEMBER:
            continue
        pieces = sync_run.schedule(w.id)
        assert pieces[0].start_step == 0 and pieces[-1].end_step == w.step
        for before, after in zip(pieces, pieces[1:], strict=False):
            assert before.end_step == after.start_step
    # A transferred child's weights were trained by the evaluator with the child's own
    # hyperparameters, on top of its parent's history.
    for e in sync_run.events("transfer"):
        ckpt = store.checkpoint(e.donor_checkpoint)
        assert ckpt.worker == e.info["evaluator"]


def without_times(result: Result) -> list[tuple[Any, ...]]:
    return [
        (
            e.kind,
            e.worker,
            e.step,
            e.donor,
            e.donor_checkpoint,
            e.old_hparams,
            e.new_hparams,
            e.info,
        )
        for e in result.events()
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_seeded_runs_are_identical(mode: str) -> None:
    first = fire_run(PlainToy, mode=mode, seed=3, steps=160)
    second = fire_run(PlainToy, mode=mode, seed=3, steps=160)
    assert without_times(first) == without_times(second)
    assert any(e.kind == "start_evaluator" for e in first.events())
    assert without_times(fire_run(PlainToy, mode=mode, seed=4, steps=160)) != without_times(first)


def test_three_subpops_run_end_to_end() -> None:
    result = fire_run(population=9, subpop_sizes=(2, 3, 2), mode="async")
    assert result.status() == "finished"
    levels = Counter(result.store.worker(e.donor).subpop for e in result.events("start_evaluator"))
    assert levels[2] > 0 and levels[3] > 0  # both parent levels were evaluated
    assert all(w.step >= 400 for w in result.store.workers() if w.role == MEMBER)


def test_gp_smoothing_runs_end_to_end() -> None:
    result = run(
        DeceptiveToy,
        algorithm=FirePBT(population=7, subpop_sizes=(3, 3)),
        steps=160,
        store="memory://",
        executor="inprocess",
        mode="sync",
        seed=0,
    )
    stops = result.events("stop_evaluator")
    assert stops and len(stops) == len(result.events("start_evaluator"))


def test_parent_factor_widens_explore_in_p2_only() -> None:
    """``parent_factor=2`` (default): P2's exploits perturb by x2 or /2, P1's keep pbt's
    x1.2 / /1.2; with ``parent_factor=None`` P2 explores like P1."""
    result = fire_run()  # parent_factor=2.0 is the default
    p2 = {w.id for w in result.store.workers() if w.role == MEMBER and w.subpop == 2}
    ops = {True: set(), False: set()}  # in P2 -> the perturbations seen
    for e in result.events("exploit"):
        op = e.info["ops"]["h"].removesuffix(" (clipped)")
        if op != "resample":
            ops[e.worker in p2].add(op)
    assert ops[True] and ops[True] <= {"mul 2", "mul 0.5"}
    assert ops[False] and ops[False] <= {"mul 1.2", "mul 0.8333"}
    same = fire_run(parent_factor=None)
    p2_ops = {e.info["ops"]["h"].removesuffix(" (clipped)") for e in same.events("exploit")
              if e.worker in p2} - {"resample"}
    assert p2_ops and p2_ops <= {"mul 1.2", "mul 0.8333"}


def test_transfer_to_worst_overwrites_another_member_with_the_evaluators_hparams() -> None:
    """``transfer_to="worst"``: a transfer lands on P1's worst member, not necessarily on the
    child it was judged against, and that member takes the evaluator's (frozen child's)
    hyperparameters along with its weights."""
    result = fire_run(transfer_to="worst")
    p1 = {w.id for w in result.store.workers() if w.role == MEMBER and w.subpop == 1}
    evaluator_hparams: dict[int, Any] = {}
    moved = 0
    for e in result.events():
        if e.kind == "start_evaluator":
            evaluator_hparams[e.worker] = e.new_hparams
        elif e.kind == "transfer":
            assert e.worker in p1
            if "compared" in e.info:
                moved += 1
                assert e.info["compared"] in p1 and e.info["compared"] != e.worker
                assert e.new_hparams == evaluator_hparams[e.info["evaluator"]]
            else:
                assert e.new_hparams == e.old_hparams  # it was the worst itself: keeps its own
    assert moved >= 1
    default = fire_run()
    assert all("compared" not in e.info for e in default.events("transfer"))
