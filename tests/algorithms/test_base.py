"""The algorithm base: the default replacement of a persistently failed member."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from firepbt.algorithms.base import GiveUp, Replace, Snapshot, WorkerView
from firepbt.algorithms.pbt import PBT
from firepbt.space import LogUniform, Space

SPACE = Space(lr=LogUniform(1e-3, 1.0))


def member(wid: int, fitness: float | None, subpop: int = 1, **kw: object) -> WorkerView:
    view = WorkerView(id=wid, role="member", subpop=subpop, hparams={"lr": 0.1 * (wid + 1)},
                      step=100, checkpoint=100 + wid, curve=(fitness,))
    return replace(view, **kw)  # type: ignore[arg-type]


def replace_failed(workers: list[WorkerView], failed: int, seed: int = 0):
    snap = Snapshot(workers={w.id: w for w in workers}, ready=(failed,), tick=0, space=SPACE,
                    interval=10, total_steps=1000)
    decisions, state = PBT(population=len(workers)).replace(
        snap, None, failed, "Traceback ...\nValueError: boom", np.random.default_rng(seed))
    assert state is None  # PBT has no state; the default replacement keeps it
    return decisions


def test_a_failed_member_restarts_from_the_best_peer_of_its_subpopulation() -> None:
    workers = [member(0, 0.0), member(1, 3.0), member(2, 2.0), member(3, 9.0, subpop=2)]
    (d,) = replace_failed(workers, failed=0)
    assert isinstance(d, Replace)
    # Member 3 is better but in another sub-population: never a donor for member 0.
    assert (d.worker, d.donor, d.donor_checkpoint) == (0, 1, 101)
    assert set(d.ops) == {"lr"} and SPACE.contains(d.new_hparams)
    assert d.error.endswith("ValueError: boom")


def test_ties_go_to_the_lower_id_and_invalid_or_failed_peers_never_donate() -> None:
    workers = [member(0, 0.0), member(1, None), member(2, 5.0, status="failed"),
               member(3, 2.0), member(4, 2.0), member(5, 7.0, checkpoint=None)]
    (d,) = replace_failed(workers, failed=0)
    assert isinstance(d, Replace) and d.donor == 3


def test_without_a_peer_that_could_donate_the_member_stays_failed() -> None:
    (d,) = replace_failed([member(0, 1.0), member(1, None)], failed=0)
    assert d == GiveUp(0, "Traceback ...\nValueError: boom")
