"""Nothing that failed reports success: failures seen as a user sees them, through subprocesses
with the CLI's defaults (process workers, async mode) and through ``fp.run``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import firepbt as fp
from firepbt.errors import ConfigError, RunFailed

FIREPBT = [sys.executable, "-m", "firepbt.cli"]

TASKS = '''
from pathlib import Path

import firepbt as fp

SPACE = fp.Space(x=fp.Uniform(0.0, 1.0))


class Base(fp.Trainable):
    SPACE = SPACE

    def setup(self, hparams, seed):
        self.hparams, self.value = dict(hparams), 0.0

    def train(self, steps):
        self.value += steps * self.hparams["x"]

    def evaluate(self):
        return self.value

    def save(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "v").write_text(repr(self.value))

    def load(self, path):
        self.value = float((Path(path) / "v").read_text())


class Broken(Base):
    def train(self, steps):
        raise ValueError("boom: the task cannot train")


class HalfBroken(Base):
    def train(self, steps):
        if self.seed % 2 == 0 and self.value >= 10:
            raise ValueError("boom: even seeds fail after their first segment")
        super().train(steps)


class NaNs(Base):
    def evaluate(self):
        return float("nan")


class Duck:
    """The training methods, without subclassing fp.Trainable."""

    SPACE = SPACE

    def setup(self, hparams, seed):
        self.hparams, self.value = dict(hparams), 0.0

    def train(self, steps):
        self.value += steps * self.hparams["x"]

    def evaluate(self):
        return self.value

    def save(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "v").write_text(repr(self.value))

    def load(self, path):
        self.value = float((Path(path) / "v").read_text())


class NotATask:
    SPACE = SPACE

    def fit(self):
        pass
'''


@pytest.fixture()
def tasks(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.py"
    path.write_text(TASKS)
    return path


def firepbt(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIREPBT, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_task(tasks: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return firepbt("run", f"{tasks}:{name}", "--population", "4", "--steps", "40",
                   "--interval", "10", "--store", str(tasks.parent / f"{name}.db"), "-q",
                   *extra, cwd=tasks.parent)


def test_a_run_where_every_member_fails_exits_non_zero_with_the_first_traceback(
    tasks: Path,
) -> None:
    proc = run_task(tasks, "Broken")
    assert proc.returncode == 1, proc.stderr
    assert "run failed" in proc.stderr and "4 of 4 members failed" in proc.stderr
    assert "ValueError: boom: the task cannot train" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr  # the user's full traceback
    assert "firepbt status" in proc.stderr and "--failures" in proc.stderr
    status = firepbt("status", str(tasks.parent / "Broken.db"), cwd=tasks.parent)
    assert "status: failed" in status.stdout and "run failed:" in status.stdout
    assert "segment" in status.stdout and "attempt 3" in status.stdout
    assert "ValueError: boom" in status.stdout and "Traceback" not in status.stdout
    full = firepbt("status", str(tasks.parent / "Broken.db"), "--failures", cwd=tasks.parent)
    assert "Traceback (most recent call last)" in full.stdout


def test_a_run_with_some_failures_ends_normally_and_says_how_many(tasks: Path) -> None:
    proc = run_task(tasks, "HalfBroken")
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stderr and "--failures" in proc.stderr
    status = firepbt("status", str(tasks.parent / "HalfBroken.db"), cwd=tasks.parent)
    assert "status: finished" in status.stdout
    assert "failures:" in status.stdout and "even seeds fail" in status.stdout
    assert firepbt("check", str(tasks.parent / "HalfBroken.db"), cwd=tasks.parent).returncode == 0


def test_a_run_without_any_valid_fitness_fails(tasks: Path) -> None:
    proc = run_task(tasks, "NaNs")
    assert proc.returncode == 1
    assert "NaN, inf, None or not a number" in proc.stderr


def test_fp_run_raises_when_every_member_fails(tasks: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    monkeypatch.syspath_prepend(str(tasks.parent))
    import tasks as user_tasks  # type: ignore[import-not-found]

    with pytest.raises(RunFailed, match="ValueError: boom"):
        fp.run(user_tasks.Broken, steps=20, interval=10, store="memory://",
               algorithm=fp.PBT(population=2), executor="inprocess")


def test_a_class_with_the_training_methods_runs_without_subclassing(tasks: Path) -> None:
    proc = run_task(tasks, "Duck")
    assert proc.returncode == 0, proc.stderr
    assert "best_metric: None" not in proc.stdout


def test_a_class_without_the_training_methods_is_refused_before_anything_starts(
    tasks: Path,
) -> None:
    proc = run_task(tasks, "NotATask")
    assert proc.returncode == 2
    assert "lacks setup, train, evaluate, save, load" in proc.stderr
    assert "firepbt.Trainable" in proc.stderr
    assert not (tasks.parent / "NotATask.db").exists()
    with pytest.raises(ConfigError, match="lacks"):
        fp.run(type("Empty", (), {}), space=fp.Space(x=fp.Uniform(0, 1)), steps=2, interval=1,
               store="memory://")


def test_a_script_without_the_main_guard_gets_one_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(TASKS + textwrap.dedent('''
        result = fp.run(Base, SPACE, fp.PBT(population=2), steps=20, interval=10,
                        store="memory://", workers=2)
        print("best", result.best)
    '''))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "if __name__ == \"__main__\":" in proc.stderr
    assert "best" not in proc.stdout
    # One error, not one traceback per worker and per retry.
    assert proc.stderr.count("Traceback (most recent call last)") <= 2
    assert "ConnectionResetError" not in proc.stderr


def test_fire_runs_with_the_cli_defaults_and_its_report_shows_evaluators(tmp_path: Path
                                                                          ) -> None:
    store = tmp_path / "fire.db"
    proc = firepbt("run", "nqm", "--algorithm", "fire", "--population", "10", "--steps", "600",
                   "--store", str(store), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rejected a stale result" not in proc.stderr
    assert firepbt("check", str(store), cwd=tmp_path).returncode == 0
    status = firepbt("status", str(store), cwd=tmp_path).stdout
    assert "status: finished" in status and status.count("evaluator") >= 3
    report = store.with_suffix(".html").read_text()
    assert "Evaluator" in report or "evaluator" in report


def test_status_of_a_run_whose_task_cannot_load_names_that_cause(tmp_path: Path) -> None:
    # Loads in the controller, not in a worker (as with a dependency missing there).
    (tmp_path / "broken_task.py").write_text(TASKS + textwrap.dedent('''
        import os
        if os.environ.get("FIREPBT_WORKER_PROCESS"):
            raise ImportError("no such dependency")
    '''))
    proc = firepbt("run", "broken_task.py:Base", "--population", "2", "--steps", "20",
                   "--interval", "10", "--store", "b.db", "-q", cwd=tmp_path)
    assert proc.returncode != 0 and "no such dependency" in proc.stderr
    status = firepbt("status", "b.db", cwd=tmp_path)
    assert "run failed: the run stopped" in status.stdout
    assert "no such dependency" in status.stdout and "NaN" not in status.stdout
