"""The Ray executor as users run it: the ``firepbt`` command in a subprocess, which starts its own
private Ray instance (loopback only) and must leave no Ray process behind.

A controller killed mid-run (SIGKILL at a crash point) is resumed on Ray, and the store ends
clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firepbt.faults import CRASH_AT_ENV
from firepbt.invariants import check_store
from firepbt.result import Result
from firepbt.states import COMPLETED
from firepbt.store import open_store

pytest.importorskip("ray", reason="Ray is not installed (the ray extra)")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

FIREPBT = [sys.executable, "-m", "firepbt.cli"]
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}


def ray_processes() -> set[int]:
    """Pids of Ray's own processes on this machine (raylet, GCS, agents, workers)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith("ray::") or Path(argv0).name in ("raylet", "gcs_server"):
            found.add(int(entry))
    return found


def assert_none_left(before: set[int], limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {sorted(left)}"


def firepbt(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FIREPBT, *args], capture_output=True, text=True, timeout=200, cwd=cwd,
        env={**os.environ, **RAY_ENV, **(env or {})}, start_new_session=True,
    )


def test_cli_run_on_ray_finishes_clean_and_stops_ray(tmp_path: Path) -> None:
    before = ray_processes()
    store = tmp_path / "quad.db"
    out = firepbt("run", "quadratic", "--executor", "ray", "--population", "4", "--workers",
                  "2", "--resources", "cpu=0.5", "--steps", "100", "--interval", "20",
                  "--store", str(store), "-q", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "status: finished" in out.stdout
    check = firepbt("check", str(store))
    assert check.returncode == 0 and "ok: all invariants hold" in check.stdout, check.stdout
    assert_none_left(before)


def test_controller_killed_on_ray_resumes_on_ray(tmp_path: Path) -> None:
    before = ray_processes()
    store = tmp_path / "sleep.db"
    run = subprocess.Popen(
        [*FIREPBT, "run", "sleep", "--executor", "ray", "--population", "4", "--workers", "2",
         "--resources", "cpu=0.5", "--steps", "100", "--interval", "10", "--store", str(store),
         "-q", "--no-report"],
        env={**os.environ, **RAY_ENV, CRASH_AT_ENV: "controller.after_commit:15"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, err = run.communicate(timeout=200)
    finally:
        # Ray's agent processes outlive a SIGKILLed driver for a minute or two (they report
        # the raylet's death to a GCS that is gone); a supervisor would stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == -signal.SIGKILL, err
    with open_store(str(store)) as st:
        done = {s.id for s in st.segments(status=COMPLETED)}
    assert done, "the crash point fired before any segment finished"
    resumed = firepbt("resume", str(store), "--executor", "ray", "--resources", "cpu=0.5",
                      "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    with open_store(str(store)) as st:
        result = Result(st)
        assert result.status() == "finished"
        assert check_store(st) == []
        # What finished before the kill stays finished: resuming redoes none of it.
        assert done <= {s.id for s in st.segments(status=COMPLETED)}
    assert_none_left(before)
