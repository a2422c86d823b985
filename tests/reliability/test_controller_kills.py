"""Scenarios 5, 6 and 12 (Ctrl-C/SIGTERM): the controller process is killed, then resumed.

A controller runs in a child process with ``FIREPBT_CRASH_AT=<point>:<N>``, so it SIGKILLs
itself at the N-th hit of a named crash point (deterministic, no sleeps). The test process then
resumes the store with a new controller and compares with an uninterrupted run of the same seed:
with the in-process executor the two must be identical (events, schedules, final state, curves).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from rel_helpers import assert_invariants, fingerprint, leftover_temp_dirs, run_child

from firepbt import resume
from firepbt.checkpoints import default_root as checkpoint_root
from firepbt.cli import main as cli_main
from firepbt.controller import Controller
from firepbt.errors import ExperimentLocked
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.store import COMPLETED, LockHolder, MemoryStore, open_store
from firepbt.tasks.toys import QuadraticToy

PBT_RUN = """
from firepbt import PBT, run
run("quadratic", algorithm=PBT(population=4), steps=60, interval=4, store={store!r},
    executor="inprocess", workers=2, seed=7, mode={mode!r}{extra})
"""

FIRE_RUN = """
from firepbt import run
from firepbt.algorithms.fire import FirePBT
run("deceptive", algorithm=FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema"),
    steps=400, store={store!r}, executor="inprocess", workers=2, seed=1, mode={mode!r}{extra})
"""


def child_run(template: str, store: Path, mode: str, crash_at: str | None = None,
              extra: str = "") -> int:
    env = {"FIREPBT_CRASH_AT": crash_at} if crash_at else {}
    proc = run_child(template.format(store=str(store), mode=mode, extra=extra), env=env)
    if crash_at is None:
        assert proc.returncode == 0, proc.stderr
    return proc.returncode


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Uninterrupted runs, one per (algorithm, mode), computed once."""
    root = tmp_path_factory.mktemp("baseline")
    out = {}
    for name, template, mode in (("pbt-async", PBT_RUN, "async"), ("pbt-sync", PBT_RUN, "sync"),
                                 ("fire-sync", FIRE_RUN, "sync")):
        path = root / f"{name}.db"
        child_run(template, path, mode)
        assert_invariants(path)
        out[name] = fingerprint(path)
    return out


def kill_and_resume(template: str, path: Path, mode: str, crash_at: str) -> None:
    rc = child_run(template, path, mode, crash_at)
    assert rc == -signal.SIGKILL, f"the controller was not killed at {crash_at}"
    # The store a killed controller leaves is consistent (its uncommitted checkpoint files are
    # still on disk: the next start removes them).
    assert_invariants(path, files=False)
    store = open_store(str(path), create=False)
    assert store.get_state("status") == "running"
    store.close()
    resume(str(path), executor="inprocess", workers=2)
    assert_invariants(path)
    # The resumed controller swept partial checkpoint writes of the killed one.
    assert leftover_temp_dirs(checkpoint_root(path)) == []


PBT_POINTS = [
    "controller.before_commit:1",
    "controller.before_commit:17",
    "controller.after_commit:1",
    "controller.after_commit:23",
    "controller.after_decision:9",
    "exploit.copy:1",
    "exploit.copy:3",
    "checkpoint.after_write:12",
    "checkpoint.before_rename:31",
    "worker.mid_segment:40",
    "worker.before_save:5",
]


@pytest.mark.parametrize("crash_at", PBT_POINTS)
def test_pbt_killed_at_each_decision_point_resumes_exactly(
    crash_at: str, tmp_path: Path, baselines: dict[str, dict]
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume(PBT_RUN, path, "async", crash_at)
    assert fingerprint(path) == baselines["pbt-async"]


@pytest.mark.parametrize("crash_at", ["controller.after_commit:6", "controller.before_commit:30",
                                      "exploit.copy:2"])
def test_sync_pbt_killed_mid_round_resumes_exactly(
    crash_at: str, tmp_path: Path, baselines: dict[str, dict]
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume(PBT_RUN, path, "sync", crash_at)
    assert fingerprint(path) == baselines["pbt-sync"]


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["evaluator.start:1", "evaluator.start:7",
                                      "controller.after_commit:90", "exploit.copy:5"])
def test_fire_killed_at_evaluator_start_and_commits_resumes_exactly(
    crash_at: str, tmp_path: Path, baselines: dict[str, dict]
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume(FIRE_RUN, path, "sync", crash_at)
    got = fingerprint(path)
    assert got == baselines["fire-sync"]
    assert any(e[0] == "transfer" for e in got["events"])  # the run exercised transfers


def test_killed_twice_still_resumes_exactly(tmp_path: Path, baselines: dict[str, dict]) -> None:
    path = tmp_path / "run.db"
    assert child_run(PBT_RUN, path, "async", "controller.after_commit:10") == -signal.SIGKILL
    # The second controller resumes, and is killed too (its count starts afresh).
    code = f"from firepbt import resume; resume({str(path)!r}, executor='inprocess', workers=2)"
    proc = run_child(code, env={"FIREPBT_CRASH_AT": "controller.before_commit:15"})
    assert proc.returncode == -signal.SIGKILL
    resume(str(path), executor="inprocess", workers=2)
    assert_invariants(path)
    assert fingerprint(path) == baselines["pbt-async"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_leave_a_resumable_store(
    sig: signal.Signals, tmp_path: Path, baselines: dict[str, dict]
) -> None:
    path = tmp_path / "run.db"
    # The controller signals itself from its progress callback after the 20th result: a real
    # signal at a deterministic point.
    extra = (", on_event=lambda c: c.store.get_state('tick') == 20 and "
             f"__import__('os').kill(__import__('os').getpid(), {int(sig)})")
    proc = run_child(PBT_RUN.format(store=str(path), mode="async", extra=extra))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr or "KeyboardInterrupt" in proc.stderr
    store = open_store(str(path), create=False)
    assert store.get_state("status") == "stopped"
    assert store.lock_holder() is None  # released on the way out
    store.close()
    assert_invariants(path)
    resume(str(path), executor="inprocess", workers=2)
    assert fingerprint(path) == baselines["pbt-async"]


# -- the same kills on real worker processes ------------------------------------------------------
#
# With the process executor (the CLI defaults: 2 workers, async) the order in which results
# arrive is up to the OS, so exact equality with an uninterrupted run is not claimed. What is
# claimed: no committed segment is ever run again, no checkpoint is lost or leaked (the files on
# disk are exactly the live records), every member reaches the end (none failed), the invariants
# hold, and `firepbt check` is clean.

PROCESS_POINTS = [p for p in PBT_POINTS if p.startswith(("controller.", "exploit."))]


def on_processes(template: str) -> str:
    return template.replace('executor="inprocess"', 'executor="process"')


def assert_resumed_cleanly(path: Path, steps: int) -> None:
    """The process-executor claims, after the last resume finished the run."""
    assert_invariants(path)  # files on disk == live records included
    assert cli_main(["check", str(path)]) == 0
    store = open_store(str(path), create=False)
    try:
        assert store.get_state("status") == "finished"
        members = [w for w in store.workers() if w.role == "member"]
        assert all(w.status == "done" and w.step == steps for w in members), members
        # A committed segment is never run again: each lineage position (worker, start
        # checkpoint, start step) completed at most once.
        done = Counter((s.worker, s.from_checkpoint, s.start_step)
                       for s in store.segments(status=COMPLETED))
        assert [k for k, n in done.items() if n > 1] == []
        # The killed controller's workers died with it: nothing failed after the kill.
        assert store.events(kind="failure") == []
    finally:
        store.close()


def kill_and_resume_on_processes(template: str, path: Path, crash_at: str,
                                 mode: str = "async") -> None:
    rc = child_run(on_processes(template), path, mode, crash_at)
    assert rc == -signal.SIGKILL, f"the controller was not killed at {crash_at}"
    assert_invariants(path, files=False)
    resume(str(path), workers=2)  # the process executor, as `firepbt resume` runs it
    assert leftover_temp_dirs(checkpoint_root(path)) == []


@pytest.mark.parametrize("crash_at", PROCESS_POINTS)
def test_pbt_on_processes_killed_at_each_decision_point_resumes_cleanly(
    crash_at: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume_on_processes(PBT_RUN, path, crash_at)
    assert_resumed_cleanly(path, steps=60)


@pytest.mark.parametrize("crash_at", ["controller.after_commit:6", "controller.before_commit:30"])
def test_sync_pbt_on_processes_killed_mid_round_resumes_cleanly(
    crash_at: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume_on_processes(PBT_RUN, path, crash_at, mode="sync")
    assert_resumed_cleanly(path, steps=60)


FIRE_PROCESS_RUN = on_processes(FIRE_RUN).replace("steps=400", "steps=200")


@pytest.mark.parametrize("crash_at", ["evaluator.start:1", "evaluator.start:4",
                                      "controller.after_commit:40", "exploit.copy:1"])
def test_fire_on_processes_killed_at_evaluator_start_and_commits_resumes_cleanly(
    crash_at: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    kill_and_resume_on_processes(FIRE_PROCESS_RUN, path, crash_at)
    assert_resumed_cleanly(path, steps=200)
    store = open_store(str(path), create=False)
    assert store.events(kind="start_evaluator")  # the run exercised evaluators
    store.close()


def test_killed_twice_on_processes_still_resumes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    assert child_run(on_processes(PBT_RUN), path, "async",
                     "controller.after_commit:10") == -signal.SIGKILL
    code = f"from firepbt import resume; resume({str(path)!r}, workers=2)"
    proc = run_child(code, env={"FIREPBT_CRASH_AT": "controller.before_commit:15"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resume(str(path), workers=2)
    assert_resumed_cleanly(path, steps=60)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_on_processes_leave_a_resumable_store(
    sig: signal.Signals, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    extra = (", on_event=lambda c: c.store.get_state('tick') == 20 and "
             f"__import__('os').kill(__import__('os').getpid(), {int(sig)})")
    proc = run_child(on_processes(PBT_RUN).format(store=str(path), mode="async", extra=extra))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr or "KeyboardInterrupt" in proc.stderr
    store = open_store(str(path), create=False)
    assert store.get_state("status") == "stopped"
    assert store.lock_holder() is None
    store.close()
    # Results the executor delivered but the stopped controller never handled may have left
    # checkpoint files without a record: the next start removes them.
    assert_invariants(path, files=False)
    resume(str(path), workers=2)
    assert_resumed_cleanly(path, steps=60)


# -- scenario 6: two controllers on one experiment ----------------------------------------------


def _controller(store: object, tmp_path: Path) -> Controller:
    from firepbt import PBT
    from firepbt.controller import RunConfig

    return Controller(
        store=store,  # type: ignore[arg-type]
        executor=InProcessExecutor(QuadraticToy), checkpoint_root=tmp_path / "ck",
        space=QuadraticToy.SPACE, algorithm=PBT(population=2),
        config=RunConfig(steps=8, interval=4),
    )


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_second_controller_fails_fast_naming_the_holder(backend: str, tmp_path: Path) -> None:
    store = MemoryStore() if backend == "memory" else open_store(str(tmp_path / "s.db"))
    first = _controller(store, tmp_path)
    second_store = store if backend == "memory" else open_store(str(tmp_path / "s.db"))
    t0 = time.monotonic()
    with pytest.raises(ExperimentLocked) as err:
        _controller(second_store, tmp_path)
    assert time.monotonic() - t0 < 5  # fails fast, no waiting for the lock
    msg = str(err.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "since" in msg
    first.close()
    _controller(second_store, tmp_path).close()  # released: the next one gets it


def test_lock_of_a_live_process_refuses_and_a_killed_holder_is_taken_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    child_run(PBT_RUN.replace("steps=60", "steps=8"), path, "async")
    # A live process (this test's child) holds the lock: refused, naming it.
    code = f"""
    import sys, time
    from firepbt.store import LockHolder, open_store
    st = open_store({str(path)!r})
    import os, socket
    st.acquire_lock(LockHolder(os.getpid(), socket.gethostname(), time.time(), "child"), 60,
                    time.time())
    print("locked", flush=True)
    sys.stdin.read()
    """
    import subprocess
    import sys
    import textwrap

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentLocked, match=f"pid {holder.pid} on host"):
            resume(str(path), executor="inprocess")
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (SIGKILL, lock never released): its lock is stale at once.
    res = resume(str(path), executor="inprocess")
    assert res.status() == "finished"


def test_stale_lock_expires_after_its_heartbeat_timeout() -> None:
    store = MemoryStore()
    other = LockHolder(999_999, "elsewhere", 0.0, "other")  # a host we cannot check
    store.acquire_lock(other, Controller.LOCK_STALE_S, 1000.0)
    me = LockHolder(os.getpid(), socket.gethostname(), 1000.0, "me")
    with pytest.raises(ExperimentLocked, match="pid 999999 on host elsewhere"):
        store.acquire_lock(me, Controller.LOCK_STALE_S, 1000.0 + Controller.LOCK_STALE_S / 2)
    store.acquire_lock(me, Controller.LOCK_STALE_S, 1000.0 + Controller.LOCK_STALE_S + 1)
    holder = store.lock_holder()
    assert holder is not None and holder[0].token == "me"
