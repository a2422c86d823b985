"""firepbt.replay and `firepbt replay`: the learned schedule on a fresh model, lineage replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import firepbt as fp
from firepbt.errors import ConfigError
from firepbt.replay import ScheduleLambda, replay, task_file
from firepbt.result import Result, SchedulePiece


@pytest.fixture(scope="module")
def nqm_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Process workers, async: the way users run it. 6 members, 10 ready points each.
    path = tmp_path_factory.mktemp("replay") / "nqm.db"
    fp.run("nqm", algorithm=fp.PBT(population=6), steps=1000, interval=100, eval_every=10,
           store=str(path), workers=2, seed=0)
    return str(path)


def test_from_ancestors_reproduces_the_recorded_lineage_exactly(nqm_store: str) -> None:
    res = Result(fp.store.open_store(nqm_store))
    assert res.events("exploit"), "the run must have exploited for this test to mean anything"
    best = res.best
    assert best is not None
    chain_writers = {p.worker for p in res.schedule(best)}
    out = replay(nqm_store, from_ancestors=True)
    assert out.member == best
    assert out.metric == out.population_metric == res.best_metric
    assert out.max_curve_difference() == 0.0
    assert [s for s, _ in out.curve] == [s for s, _ in out.recorded]
    if len(chain_writers) > 1:  # weights were copied: the replay went through a checkpoint
        assert len(out.schedule) >= 2


def test_fresh_replay_follows_the_schedule_with_another_seed(nqm_store: str) -> None:
    lines: list[str] = []
    out = replay(nqm_store, seed=123, log=lines.append)
    assert lines == [f"task firepbt.tasks.nqm:NQM: importing {task_file('nqm')}"]
    assert out.seed == 123 and not out.from_ancestors
    assert [s for s, _ in out.curve] == list(range(10, 1001, 10))
    assert out.metric is not None and out.population_metric is not None
    assert out.metric != out.population_metric  # other gradient noise
    assert out.metric > -0.5  # it trained (the start is -1.0)


def test_replay_a_member_that_is_not_the_best(nqm_store: str) -> None:
    res = Result(fp.store.open_store(nqm_store))
    other = next(m for m in res.final_metrics() if m != res.best)
    out = replay(nqm_store, member=other, from_ancestors=True)
    assert out.member == other and out.metric == res.final_metrics()[other]


def test_schedule_lambda_drives_lambda_lr() -> None:
    torch = pytest.importorskip("torch")
    pieces = [SchedulePiece(0, 100, 0, {"lr": 0.1}), SchedulePiece(100, 300, 2, {"lr": 0.1}),
              SchedulePiece(300, 400, 1, {"lr": 0.02})]
    fn = ScheduleLambda.from_schedule(pieces)
    assert (fn.boundaries, fn.lrs) == ([300], [0.1, 0.02])
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=5.0)
    sched = ScheduleLambda.from_json(fn.to_json()).lr_scheduler(opt)
    seen = []
    for _ in range(400):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == seen[299] == 0.1
    assert seen[300] == pytest.approx(0.02) and seen[399] == pytest.approx(0.02)
    assert sched.state_dict()["lr_lambdas"][0]["lrs"] == [0.1, 0.02]  # picklable state


def test_schedule_lambda_validates() -> None:
    with pytest.raises(ConfigError, match="lrs=.*len"):
        ScheduleLambda([10], [0.1])
    with pytest.raises(ConfigError, match=r"lrs=.*> 0"):
        ScheduleLambda([10], [0.1, 0.0])
    with pytest.raises(ConfigError, match="key='lr'"):
        ScheduleLambda.from_schedule([SchedulePiece(0, 10, 0, {"learning_rate": 0.1})])


def test_cli_replay_prints_the_file_both_metrics_and_exports(nqm_store: str,
                                                             tmp_path: Path) -> None:
    lr_file = tmp_path / "lr.json"
    proc = subprocess.run(
        [sys.executable, "-m", "firepbt.cli", "replay", nqm_store, "--seed", "4",
         "--export-lr", str(lr_file), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"importing {task_file('nqm')}" in proc.stdout
    assert "replayed from scratch (seed 4)" in proc.stdout
    assert "population (member" in proc.stdout
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["seed"] == 4 and last["metric"] is not None
    assert ScheduleLambda.from_json(lr_file.read_text()).base_lr > 0


def test_cli_replay_of_a_missing_store_fails(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firepbt.cli", "replay", str(tmp_path / "nope.db")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
