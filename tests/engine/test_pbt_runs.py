"""End-to-end PBT runs through the real engine (controller, executors, SQLite store)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from firepbt import PBT, RandomSearch, Result, run
from firepbt.errors import ConfigError
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy

GRID = QuadraticToy.grid_hparams()  # h = (1, 0) and (0, 1): each alone can never reach the optimum


def lineage_key(res: Result) -> list[tuple]:
    """Events without wall-clock times, for exact comparisons."""
    return [
        (e.kind, e.worker, e.step, e.donor, e.donor_checkpoint,
         sorted((e.new_hparams or {}).items()), sorted((e.info or {}).items(), key=str))
        for e in res.events()
    ]


def test_pbt_reaches_optimum_with_processes_while_fixed_grid_stalls(tmp_path: Path) -> None:
    # Sync mode: decisions are taken at round ends in a fixed order, so the outcome does not
    # depend on which worker process finishes first (async runs on processes are not replayable).
    pbt = run("quadratic", algorithm=PBT(population=2), initial=GRID, store=str(tmp_path / "p.db"),
              workers=2, executor="process", seed=3, mode="sync")
    fixed = run("quadratic", algorithm=RandomSearch(population=2), initial=GRID,
                store=str(tmp_path / "r.db"), workers=2, executor="process", seed=3, mode="sync")
    assert pbt.best_metric is not None and pbt.best_metric >= 1.19
    assert fixed.best_metric is not None and fixed.best_metric < 0.5
    assert len(pbt.lineage()) > 0 and len(fixed.lineage()) == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_seeded_inprocess_runs_are_identical(mode: str) -> None:
    a = run("quadratic", algorithm=PBT(population=4), store="memory://", executor="inprocess",
            workers=2, seed=11, mode=mode)
    b = run("quadratic", algorithm=PBT(population=4), store="memory://", executor="inprocess",
            workers=2, seed=11, mode=mode)
    c = run("quadratic", algorithm=PBT(population=4), store="memory://", executor="inprocess",
            workers=2, seed=12, mode=mode)
    assert lineage_key(a) == lineage_key(b)
    assert lineage_key(a) != lineage_key(c)
    assert a.schedule(a.best) == b.schedule(b.best)  # type: ignore[arg-type]


def test_exploit_lineage_and_schedule_are_consistent() -> None:
    res = run("quadratic", algorithm=PBT(population=4), store="memory://", executor="inprocess",
              seed=5, mode="sync")
    store = res.store
    exploits = res.events("exploit")
    assert exploits
    for e in exploits:
        donor_ckpt = store.checkpoint(e.donor_checkpoint)  # type: ignore[arg-type]
        assert donor_ckpt.worker == e.donor or e.donor is not None
        assert e.old_hparams != e.new_hparams or e.info["ops"]
        assert e.step == donor_ckpt.step  # the member continues from the donor's step count
    # The schedule of every member covers [0, steps] without gaps, in order.
    steps = res.experiment["config"]["steps"]
    for w in store.workers():
        pieces = res.schedule(w.id)
        assert pieces[0].start_step == 0 and pieces[-1].end_step == steps
        assert all(p.end_step == q.start_step for p, q in zip(pieces, pieces[1:], strict=False))
        # The last piece's hyperparameters are the member's current ones.
        assert pieces[-1].hparams == dict(w.hparams)


def test_more_members_than_workers_and_quantile_zero_never_exploits() -> None:
    res = run("quadratic", algorithm=PBT(population=6, quantile=0.0), store="memory://",
              executor="inprocess", workers=2, seed=1)
    assert res.events("exploit") == []
    assert all(w.step == 200 for w in res.store.workers())


def test_resume_of_a_finished_store_redoes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    run("quadratic", algorithm=PBT(population=2), store=path, executor="inprocess", seed=2)
    store = open_store(path)
    n_segments = len(store.segments())
    store.close()
    from firepbt import resume

    res = resume(path, executor="inprocess")
    assert len(res.store.segments()) == n_segments
    assert res.status() == "finished"


def test_resume_with_different_settings_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    run("quadratic", algorithm=PBT(population=2), store=path, executor="inprocess", seed=2)
    with pytest.raises(ConfigError, match="different algorithm"):
        run("quadratic", algorithm=PBT(population=3), store=path, executor="inprocess", seed=2)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"steps": 0}, "steps=0"),
        ({"interval": 500}, "interval=500"),
        ({"eval_every": 0}, "eval_every=0"),
        ({"mode": "both"}, "mode='both'"),
        ({"workers": 0}, "workers=0"),
        ({"executor": "gpu"}, "executor='gpu'"),
        ({"initial": [{"h0": 2.0, "h1": 0.0}]}, "initial[0]"),
    ],
)
def test_invalid_settings_are_rejected_before_anything_starts(
    kwargs: dict, needle: str, tmp_path: Path
) -> None:
    settings = {"executor": "inprocess", **kwargs}
    with pytest.raises(ConfigError) as err:
        run("quadratic", algorithm=PBT(population=2), store=str(tmp_path / "x.db"), **settings)
    assert needle in str(err.value)


def test_invalid_algorithm_settings_name_value_and_rule() -> None:
    with pytest.raises(ConfigError, match=r"quantile=0\.7: must lie in \[0, 0\.5\]"):
        PBT(quantile=0.7)
    with pytest.raises(ConfigError, match="exploit='best'"):
        PBT(exploit="best")


def test_checkpoints_are_collected_but_current_ones_survive(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    res = run("quadratic", algorithm=PBT(population=4), store=str(path), executor="inprocess",
              seed=4, keep_checkpoints=1)
    store = res.store
    live = [c for c in store.checkpoints()]
    total = store.checkpoints(include_deleted=True)
    assert len(live) < len(total)  # garbage was collected
    for w in store.workers():
        rec = store.checkpoint(w.checkpoint)  # type: ignore[arg-type]
        assert not rec.deleted and Path(rec.path).exists()
    assert not math.isnan(res.best_metric or math.nan)
