"""A newcomer's first hour, through subprocesses as a user types the commands (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from firepbt.cli import build_parser

FIREPBT = [sys.executable, "-m", "firepbt.cli"]

HELPERS = '''
def scale(x):
    return 2.0 * x
'''

TASK = '''
from pathlib import Path

import firepbt as fp
from helpers import scale  # a sibling module, as in any small project

SPACE = fp.Space(lr=fp.LogUniform(1e-3, 1.0))
DEFAULTS = {"steps": 40, "interval": 10}


class Task(fp.Trainable):
    def setup(self, hparams, seed):
        self.hparams, self.value = dict(hparams), 0.0

    def train(self, steps):
        self.value += steps * scale(self.hparams["lr"])

    def evaluate(self):
        return self.value

    def save(self, path):
        (Path(path) / "value.txt").write_text(repr(self.value))

    def load(self, path):
        self.value = float((Path(path) / "value.txt").read_text())
'''


def firepbt(*argv: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*FIREPBT, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "my_task.py").write_text(TASK)
    return folder


def test_module_level_space_sibling_imports_and_resume_from_another_folder(project: Path
                                                                            ) -> None:
    run = firepbt("run", "my_task.py:Task", "--store", "st.db", "-q", cwd=project, check=True)
    assert run.stderr == ""  # a healthy quiet run says nothing
    assert "best:" in run.stdout or "best" in run.stdout
    # From the parent folder: the stored task path is absolute.
    resumed = firepbt("resume", "proj/st.db", "-q", cwd=project.parent, check=True)
    assert "status: finished" in resumed.stdout


def test_module_ref_in_the_current_folder(project: Path) -> None:
    firepbt("run", "my_task:Task", "--store", "m.db", "-q", "--no-report", cwd=project,
            check=True)


def test_inline_space_and_errors_that_name_the_key(project: Path) -> None:
    ok = firepbt("run", "my_task.py:Task", "--space", "lr=loguniform(1e-2, 1e-1)",
                 "--store", "s.db", "-q", "--no-report", cwd=project, check=True)
    assert ok.returncode == 0
    bad = firepbt("run", "my_task.py:Task", "--space", "lr=loguniform(0, 1)", cwd=project)
    assert bad.returncode == 2 and "lr=" in bad.stderr and "must be > 0" in bad.stderr
    steps = firepbt("run", "my_task.py:Task", "--steps", "0", cwd=project)
    assert steps.returncode == 2 and "steps=0" in steps.stderr and "DEFAULTS" not in steps.stderr
    workers = firepbt("run", "my_task.py:Task", "--workers", "0", cwd=project)
    assert workers.returncode == 2 and "workers=0" in workers.stderr
    fire = firepbt("run", "quadratic", "--algorithm", "fire", cwd=project)
    assert fire.returncode == 2 and "use interval >= 7" in fire.stderr
    assert "eval_every <= 0" not in fire.stderr


def test_one_store_per_experiment_and_short_mismatch_errors(project: Path) -> None:
    for _ in range(2):
        firepbt("run", "my_task.py:Task", "-q", "--no-report", cwd=project, check=True)
    stores = sorted((project / "runs").glob("my_task-pbt-*.db"))
    assert len(stores) == 2
    firepbt("run", "my_task.py:Task", "--name", "exp", "-q", "--no-report", cwd=project,
            check=True)
    assert (project / "runs" / "exp.db").exists()
    again = firepbt("run", "my_task.py:Task", "--name", "exp", "--steps", "60", "-q",
                    cwd=project)
    assert again.returncode == 2
    assert "steps: stored 40, given 60" in again.stderr and len(again.stderr) < 400


def test_best_weights_export_and_load(project: Path) -> None:
    firepbt("run", "my_task.py:Task", "--store", "w.db", "-q", "--no-report", cwd=project,
            check=True)
    out = firepbt("export", "w.db", "--checkpoint", "best", cwd=project, check=True)
    assert "best" in out.stdout
    assert float((project / "best" / "value.txt").read_text()) > 0
    again = firepbt("export", "w.db", "--checkpoint", "best", cwd=project)
    assert again.returncode == 2 and "exists already" in again.stderr
    missing = firepbt("export", "w.db", "--member", "99", cwd=project)
    assert missing.returncode == 2 and "--member 99" in missing.stderr
    assert "Traceback" not in missing.stderr
    piped = subprocess.run(f"{' '.join(FIREPBT)} status w.db | head -1", shell=True, cwd=project,
                           capture_output=True, text=True, timeout=60)
    assert "BrokenPipe" not in piped.stderr and "Traceback" not in piped.stderr


def test_edited_task_is_refused_on_resume_unless_allowed(project: Path) -> None:
    firepbt("run", "my_task.py:Task", "--store", "e.db", "-q", "--no-report", cwd=project,
            check=True)
    source = project / "my_task.py"
    source.write_text(source.read_text().replace("LogUniform(1e-3, 1.0)", "LogUniform(1e-4, 1.0)"))
    refused = firepbt("resume", "e.db", "-q", cwd=project)
    assert refused.returncode == 2
    assert "another SPACE" in refused.stderr and "lr.low: stored 0.001, given 0.0001" in (
        refused.stderr)
    firepbt("resume", "e.db", "-q", "--allow-changed-task", cwd=project, check=True)
    source.write_text(TASK + "\n# an edit\n")
    code = firepbt("resume", "e.db", "-q", cwd=project)
    assert code.returncode == 2 and "changed since the run started" in code.stderr


def test_resume_with_another_task_file(project: Path) -> None:
    firepbt("run", "my_task.py:Task", "--store", "t.db", "-q", "--no-report", cwd=project,
            check=True)
    (project / "moved_task.py").write_text(TASK)
    out = firepbt("resume", "t.db", "--task", "moved_task.py:Task", "-q", cwd=project,
                  check=True)
    assert "status: finished" in out.stdout


def test_every_option_has_help_and_there_is_a_version() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers
                                                                         ._group_actions[0])))
    missing = []
    for name, sub in subparsers.choices.items():  # type: ignore[attr-defined]
        for action in sub._actions:
            if action.help in (None, "") and action.dest != "help":
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    out = subprocess.run([*FIREPBT, "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("firepbt ")
    bench = subprocess.run([*FIREPBT, "bench", "--help"], capture_output=True, text=True,
                           timeout=60)
    assert "decision-cost" in bench.stdout
    run = subprocess.run([*FIREPBT, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert "acrobot" in run.stdout and "lunarlander" in run.stdout and "(default: 8)" in run.stdout


def signal_once_training(tmp_path: Path, store: str, sig: int) -> tuple[int, str]:
    """Run the sleep task as a shell job (its own process group, so a signal reaches the
    workers too, as Ctrl-C in a terminal does), send ``sig`` to the group once training has
    started; returns the exit status and what it printed after that."""
    proc = subprocess.Popen([*FIREPBT, "run", "sleep", "--population", "4", "--store", store],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # bounded: the run ends by itself
        if "member-steps" in line:
            os.killpg(proc.pid, sig)
            break
    rest = proc.stderr.read()
    return proc.wait(timeout=60), rest


def test_ctrl_c_stops_with_one_line_and_no_worker_tracebacks(tmp_path: Path) -> None:
    code, rest = signal_once_training(tmp_path, "s.db", signal.SIGINT)
    assert code == 130
    assert "resumable: firepbt resume s.db" in rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    resumed = firepbt("resume", "s.db", "-q", cwd=tmp_path, check=True)
    assert "status: finished" in resumed.stdout


def test_status_after_a_kill_says_no_controller_runs_it(tmp_path: Path) -> None:
    signal_once_training(tmp_path, "k.db", signal.SIGKILL)
    out = firepbt("status", "k.db", cwd=tmp_path, check=True).stdout
    assert "status: running" in out
    assert "no controller is running it any more" in out and "firepbt resume k.db" in out
