"""Tests for firepbt.api: ``fp.run`` and ``fp.resume`` as a library user calls them.

Runs use the in-process executor and the quadratic toy (milliseconds per run); the process
executor's own behaviour is tested in tests/executors/test_local_executor.py.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import firepbt as fp
from firepbt.api import EXECUTORS, checkpoint_root_for, task_attribute, task_ref_of
from firepbt.errors import ConfigError
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.executors.local import MAIN_GUARD_HINT, WORKER_ENV
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy

GRID = QuadraticToy.grid_hparams()


def quick(store: Any = "memory://", task: Any = "quadratic", **kw: Any) -> fp.Result:
    settings: dict[str, Any] = {"algorithm": fp.PBT(population=4), "steps": 24, "interval": 4,
                                "initial": GRID, "executor": "inprocess", "seed": 3}
    settings.update(kw)
    return fp.run(task, store=store, **settings)


# --- argument validation -----------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["threads", "", "Process", None])
def test_an_unknown_executor_is_refused_naming_it_and_the_choices(
    executor: Any, tmp_path: Path
) -> None:
    store = tmp_path / "x.db"
    with pytest.raises(ConfigError) as err:
        quick(store=str(store), executor=executor)
    assert str(err.value) == f"executor={executor!r}: must be one of process, inprocess, ray"
    assert EXECUTORS == ("process", "inprocess", "ray")
    assert not store.exists()  # refused before the store file is made


# A count that slips through would start no worker and wait for ever: fail fast instead.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", None])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_bad_worker_count_is_refused_naming_it_and_the_rule(
    workers: Any, executor: str, tmp_path: Path
) -> None:
    store = tmp_path / "x.db"
    with pytest.raises(ConfigError) as err:
        quick(store=str(store), executor=executor, workers=workers)
    assert str(err.value) == f"workers={workers!r}: must be an int >= 1"
    assert not store.exists()


def test_a_bool_worker_count_is_refused() -> None:
    with pytest.raises(ConfigError, match="workers=True"):
        quick(workers=True)


def test_the_process_executor_refuses_a_task_no_worker_can_import() -> None:
    class Local(QuadraticToy):  # defined in a function: a worker process cannot import it
        pass

    assert task_ref_of(Local) is None
    with pytest.raises(ConfigError) as err:
        quick(task=Local, executor="process")
    msg = str(err.value)
    assert "Local" in msg and "needs an importable task" in msg
    assert "executor='inprocess'" in msg
    assert quick(task=Local).status() == "finished"  # in-process needs no import


def test_a_task_without_a_space_is_refused_naming_it_and_the_ways_to_give_one() -> None:
    class Spaceless(QuadraticToy):
        SPACE = None  # type: ignore[assignment]

    Spaceless.__module__ = "a_module_not_loaded"  # no module-level SPACE to fall back on
    with pytest.raises(ConfigError) as err:
        quick(task=Spaceless)
    msg = str(err.value)
    assert "task 'test_a_task_without_a_space" in msg and "has no search space" in msg
    assert "SPACE = fp.Space(...)" in msg and "space=" in msg and "--space" in msg
    assert quick(task=Spaceless, space=QuadraticToy.SPACE).status() == "finished"


@pytest.mark.parametrize("missing", ["steps", "interval"])
def test_steps_and_interval_without_defaults_are_refused_naming_the_key(missing: str) -> None:
    class NoDefaults(QuadraticToy):
        DEFAULTS = None  # type: ignore[assignment]

    NoDefaults.__module__ = "a_module_not_loaded"
    settings = {"steps": 24, "interval": 4, missing: None}
    with pytest.raises(ConfigError) as err:
        quick(task=NoDefaults, **settings)
    msg = str(err.value)
    assert msg.startswith(f"{missing} is not set and task ")
    assert f"has no DEFAULTS[{missing!r}]: pass {missing}= (CLI: --{missing})" in msg


def test_fp_run_inside_a_worker_process_is_refused_with_the_main_guard_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_ENV, "1")
    with pytest.raises(ConfigError) as err:
        quick()
    assert MAIN_GUARD_HINT in str(err.value) and "QuadraticToy" in str(err.value)


# --- the task's own settings: class attributes, else its module's ------------------------------

TASK_MODULE = '''
import firepbt as fp
from firepbt.tasks.toys import QuadraticToy

SPACE = fp.Space(h0=fp.Uniform(0.0, 1.0), h1=fp.Uniform(0.0, 1.0))
DEFAULTS = {"steps": 12, "interval": 4, "eval_every": 2}
METRIC = fp.Metric("q", mode="max")


class Bare(QuadraticToy):
    """Takes everything from its module: the base's SPACE/DEFAULTS are hidden."""
    SPACE = None
    DEFAULTS = None

    def evaluate(self):
        return {"q": super().evaluate(), "other": 0.0}


class Own(Bare):
    DEFAULTS = {"steps": 8, "interval": 4}
'''


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "module_settings.py"
    path.write_text(TASK_MODULE)
    return path


def test_module_level_space_defaults_and_metric_are_found(task_file: Path) -> None:
    res = fp.run(f"{task_file}:Bare", algorithm=fp.PBT(population=2), store="memory://",
                 executor="inprocess")
    assert res.metric == fp.Metric("q", "max")
    assert res.experiment["config"]["steps"] == 12
    assert {w.step for w in res.store.workers()} == {12}
    # eval_every=2 from the module's DEFAULTS: points at 2, 4, ... 12.
    assert sorted({m.step for m in res.store.metrics()}) == [2, 4, 6, 8, 10, 12]


def test_a_class_attribute_wins_over_the_modules(task_file: Path) -> None:
    res = fp.run(f"{task_file}:Own", algorithm=fp.PBT(population=2), store="memory://",
                 executor="inprocess")
    assert res.experiment["config"]["steps"] == 8
    assert res.metric.name == "q"  # no class METRIC: the module's


@given(on_class=st.one_of(st.none(), st.integers()), in_module=st.one_of(st.none(), st.text()))
def test_task_attribute_is_the_class_value_else_the_module_value(
    on_class: Any, in_module: Any
) -> None:
    module = types.ModuleType("firepbt_test_task_attribute")
    module.NAME = in_module  # type: ignore[attr-defined]
    cls = type("T", (), {"NAME": on_class, "__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        assert task_attribute(cls, "NAME") == (on_class if on_class is not None else in_module)
        assert task_attribute(cls, "ABSENT") is None
    finally:
        del sys.modules[module.__name__]


def test_task_refs_are_importable_names_or_none() -> None:
    assert task_ref_of(QuadraticToy) == "firepbt.tasks.toys:QuadraticToy"
    assert task_ref_of("quadratic") == "firepbt.tasks.toys:QuadraticToy"
    assert task_ref_of("tasks/x.py:T") == f"{Path('tasks/x.py').resolve()}:T"
    assert task_ref_of(lambda h, c, r: None) is None


def test_a_store_files_checkpoints_sit_beside_it_under_its_full_name(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "sweep.1")) as st:
        assert checkpoint_root_for(st) == tmp_path / "sweep.1.ckpt"


# --- run, resume -------------------------------------------------------------------------------


def test_resume_of_a_finished_store_returns_the_same_result(tmp_path: Path) -> None:
    store = str(tmp_path / "run.db")
    first = quick(store=store)
    assert first.status() == "finished" and first.best is not None
    before = (first.best, first.best_metric, first.final_metrics(), len(first.events()))
    again = fp.resume(store, executor="inprocess")
    assert (again.best, again.best_metric, again.final_metrics(), len(again.events())) == before
    assert again.schedule(again.best) == first.schedule(first.best)  # type: ignore[arg-type]


def test_run_on_a_finished_store_warns_and_returns_its_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = str(tmp_path / "run.db")
    first = quick(store=store)
    with caplog.at_level(logging.WARNING, logger="firepbt"):
        again = quick(store=store)
    assert any("already holds a finished run" in m and "use another store" in m
               for m in caplog.messages)
    assert (again.best, again.final_metrics()) == (first.best, first.final_metrics())


def test_run_accepts_an_executor_instance_and_a_store_instance() -> None:
    st = open_store("memory://")
    res = quick(store=st, executor=InProcessExecutor(QuadraticToy, capacity=2))
    assert res.store is st and res.status() == "finished"


def test_resume_of_an_empty_store_is_refused_naming_it(tmp_path: Path) -> None:
    store = tmp_path / "empty.db"
    open_store(str(store)).close()
    with pytest.raises(ConfigError, match=r"holds no experiment to resume"):
        fp.resume(str(store), executor="inprocess")


def test_resume_refuses_an_edited_task_file_unless_allowed(task_file: Path,
                                                          tmp_path: Path) -> None:
    store = str(tmp_path / "run.db")
    fp.run(f"{task_file}:Bare", algorithm=fp.PBT(population=2), store=store,
           executor="inprocess")
    task_file.write_text(TASK_MODULE + "\n# edited after the run started\n")
    with pytest.raises(ConfigError) as err:
        fp.resume(store, executor="inprocess")
    assert f"the task's file {task_file}" in str(err.value)
    assert "changed since the run started" in str(err.value)
    assert "allow_changed_task=True" in str(err.value)
    assert fp.resume(store, executor="inprocess", allow_changed_task=True).status() == "finished"


def test_resume_refuses_a_task_with_another_space(task_file: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "run.db")
    fp.run(f"{task_file}:Bare", algorithm=fp.PBT(population=2), store=store,
           executor="inprocess")
    # Another file (this process already imported the first one under its path).
    other = tmp_path / "other" / "module_settings.py"
    other.parent.mkdir()
    other.write_text(TASK_MODULE.replace("h1=fp.Uniform(0.0, 1.0)", "h1=fp.Uniform(0.0, 2.0)"))
    with pytest.raises(ConfigError, match="has another SPACE than when the run") as err:
        fp.resume(store, task=f"{other}:Bare", executor="inprocess")
    assert "h1.high: stored 1.0, given 2.0" in str(err.value)


def test_a_resume_with_another_task_records_it_for_later_resumes(
    task_file: Path, tmp_path: Path
) -> None:
    store = str(tmp_path / "run.db")
    fp.run(f"{task_file}:Bare", algorithm=fp.PBT(population=2), store=store,
           executor="inprocess")
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "module_settings.py").write_text(TASK_MODULE)
    fp.resume(store, task=f"{moved / 'module_settings.py'}:Bare", executor="inprocess")
    with open_store(store, create=False) as st:
        assert st.get_state("task") == f"{moved / 'module_settings.py'}:Bare"
