"""Tests for firepbt.faults: env-selected crashes in real child processes, one-shot markers."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from firepbt import faults
from firepbt.errors import ConfigError
from firepbt.faults import KNOWN_CRASH_POINTS, InjectedFault, arm, crash_point

# Hits "p" three times, printing after each hit survives; the parent reads how far it got.
CHILD = (
    "from firepbt.faults import crash_point\n"
    "for i in range(1, 4):\n"
    "    crash_point('p')\n"
    "    print(i, flush=True)\n"
)


def run_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FIREPBT_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", CHILD], env=full, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(autouse=True)
def no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.CRASH_AT_ENV, raising=False)
    monkeypatch.delenv(faults.FAULT_DIR_ENV, raising=False)


def test_known_crash_points_include_the_documented_names() -> None:
    for name in (
        "checkpoint.after_write",
        "checkpoint.before_rename",
        "controller.before_commit",
        "controller.after_commit",
        "controller.after_decision",
        "worker.mid_segment",
        "worker.before_save",
        "exploit.copy",
        "evaluator.start",
    ):
        assert name in KNOWN_CRASH_POINTS
    assert len(set(KNOWN_CRASH_POINTS)) == len(KNOWN_CRASH_POINTS)


def test_nothing_happens_without_env() -> None:
    crash_point("checkpoint.after_write")  # would kill pytest if it fired


def test_crash_at_nth_hit_kills_child_with_sigkill() -> None:
    done = run_child({faults.CRASH_AT_ENV: "p:2"})
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1"]


def test_crash_at_default_is_first_hit() -> None:
    done = run_child({faults.CRASH_AT_ENV: "p"})
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""


def test_crash_at_other_name_does_not_fire() -> None:
    done = run_child({faults.CRASH_AT_ENV: "q"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "3"]


def test_crash_marker_is_one_shot_across_processes(tmp_path: Path) -> None:
    marker = arm(tmp_path, "p")
    first = run_child({faults.FAULT_DIR_ENV: str(tmp_path)})
    assert first.returncode == -signal.SIGKILL
    assert first.stdout == ""
    assert not marker.exists()
    second = run_child({faults.FAULT_DIR_ENV: str(tmp_path)})
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["1", "2", "3"]


def test_raise_marker_raises_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.FAULT_DIR_ENV, str(tmp_path))
    marker = arm(tmp_path, "worker.before_save", "raise")
    crash_point("worker.mid_segment")  # another point: untouched
    assert marker.exists()
    with pytest.raises(InjectedFault, match="worker.before_save") as info:
        crash_point("worker.before_save")
    assert info.value.name == "worker.before_save"
    assert not marker.exists()
    crash_point("worker.before_save")  # one-shot: disarmed now


def test_enospc_marker_raises_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.FAULT_DIR_ENV, str(tmp_path))
    arm(tmp_path, "checkpoint.after_write", "enospc")
    with pytest.raises(OSError) as info:
        crash_point("checkpoint.after_write")
    assert info.value.errno == errno.ENOSPC
    crash_point("checkpoint.after_write")


def test_after_lets_hits_pass_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.FAULT_DIR_ENV, str(tmp_path))
    arm(tmp_path, "x", "raise", after=2)
    crash_point("x")
    crash_point("x")
    with pytest.raises(InjectedFault):
        crash_point("x")
    crash_point("x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["p:0", "p:-1", "p:two", ":3"])
def test_malformed_crash_at_is_a_config_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.CRASH_AT_ENV, value)
    with pytest.raises(ConfigError, match="FIREPBT_CRASH_AT"):
        crash_point("p")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "boom"}, "kind"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"after": -1}, "after"),
    ],
)
def test_arm_validates(tmp_path: Path, kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {"name": "p", "kind": "crash"} | kwargs
    with pytest.raises(ConfigError, match=key):
        arm(tmp_path, **args)  # type: ignore[arg-type]
