"""The controller one event at a time, with the simulated executor (no training, no files)."""

from __future__ import annotations

from pathlib import Path

from firepbt.algorithms import PBT
from firepbt.algorithms.fire import FirePBT
from firepbt.controller import Controller, RunConfig
from firepbt.executors.simulated import SimulatedExecutor
from firepbt.space import LogUniform, Space
from firepbt.store import MemoryStore

SPACE = Space(lr=LogUniform(1e-3, 1.0))


def controller(tmp_path: Path, algorithm, mode: str = "async", steps: int = 100) -> Controller:
    return Controller(
        store=MemoryStore(), executor=SimulatedExecutor(capacity=2),
        checkpoint_root=tmp_path / "ckpt", space=SPACE, algorithm=algorithm,
        config=RunConfig(steps=steps, interval=10, eval_every=1, mode=mode, seed=3),
    )


def test_each_step_handles_one_result_and_commits_it(tmp_path: Path) -> None:
    ctl = controller(tmp_path, PBT(population=4))
    ctl.start()
    assert ctl.progress() == (0, 400)
    seen = []
    while ctl.step(timeout=0):
        seen.append(ctl.progress()[0])
        # Everything handled so far is committed: the store agrees with the controller.
        assert sum(min(w.step, 100) for w in ctl.store.workers() if w.role == "member") \
            == seen[-1]
    assert seen == sorted(seen)
    assert ctl.progress() == (400, 400)
    assert ctl.store.get_state("status") == "finished"
    ctl.close()


def test_a_full_fire_run_with_evaluators_on_the_simulated_executor(tmp_path: Path) -> None:
    ctl = controller(tmp_path, FirePBT(population=11, smoother="ema"), mode="sync", steps=200)
    ctl.start()
    while ctl.step(timeout=0):
        pass
    store = ctl.store
    starts = store.events(kind="start_evaluator")
    stops = store.events(kind="stop_evaluator")
    assert starts and len(stops) == len(starts)  # every evaluation ends, at the latest at the end
    assert all(w.status == "done" for w in store.workers() if w.role == "member")
    assert all(w.status == "idle" for w in store.workers() if w.role == "evaluator")
    ctl.close()


def test_evaluators_never_train_past_the_runs_last_step(tmp_path: Path) -> None:
    # An evaluator trains in its parent's steps; past the run's end a transfer of its weights
    # would give a member more steps than the budget (seen on process workers as step 340 of
    # 300). Before the cap, this run scheduled evaluator segments up to step 210 of 200.
    ctl = controller(tmp_path, FirePBT(population=11, smoother="ema"), mode="async", steps=200)
    ctl.start()
    while ctl.step(timeout=0):
        pass
    store = ctl.store
    assert max(s.end_step for s in store.segments()) == 200
    assert max(c.step for c in store.checkpoints(include_deleted=True)) == 200
    assert all(w.step == 200 for w in store.workers() if w.role == "member")
    ctl.close()
