"""Issue #8 d: lock fencing. A controller paused past its lock's expiry never commits again.

Controller A pauses itself with SIGSTOP at a deterministic point (its progress callback after
the 10th decision). Controller B takes the experiment over as if A's lock had expired and runs
the experiment to the end. Then A is continued: its next commit is fenced (the store checks,
inside the transaction, that A still holds the lock), so A stops with ``LockLost`` and commits
nothing; the store equals an uninterrupted run's. Before, A carried on writing over B's state
until an id collision stopped it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rel_helpers import REPO, assert_invariants, fingerprint, run_child

from firepbt import resume
from firepbt.checkpoints import default_root
from firepbt.controller import Controller
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.invariants import check_store
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy

RUN = """
import os, signal
from firepbt import PBT, run
paused = []
def pause(ctl):
    if not paused and ctl.store.get_state("tick") == 10:
        paused.append(True)
        os.kill(os.getpid(), signal.SIGSTOP)
run("quadratic", algorithm=PBT(population=4), steps=40, interval=4, store={store!r},
    executor="inprocess", workers=2, seed=11{extra})
"""


class Impatient(Controller):
    """A controller that counts any lock as expired: what B sees once A's lock went stale."""

    LOCK_STALE_S = 1e-3


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_a_controller_paused_past_its_lock_expiry_commits_nothing(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.db"
    done = run_child(RUN.format(store=str(baseline), extra=""))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "run.db"
    a = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RUN.format(store=str(path),
                                                          extra=", on_event=pause"))],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _stopped(a.pid):  # waiting for a state, not injecting a fault by time
            assert a.poll() is None and time.monotonic() < deadline, "A never paused"
            time.sleep(0.01)
        store = open_store(str(path), create=False)
        b = Impatient(store=store, executor=InProcessExecutor(QuadraticToy, capacity=2),
                      checkpoint_root=default_root(path))
        b.run()
        assert store.get_state("status") == "finished"
        committed = fingerprint(path)
        os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 1, err
    assert "LockLost" in err and "lost the experiment lock" in err, err
    # A committed nothing after B took over: B's finished run is intact and equals an
    # uninterrupted run.
    assert fingerprint(path) == committed == fingerprint(baseline)
    assert store.get_state("status") == "finished"
    # A may have trained one more segment before its commit was refused: those files have no
    # record (check names them), and the next start removes them.
    assert_invariants(path, files=False)
    leaks = [p for p in check_store(store) if p.startswith("files:")]
    assert all("leaked checkpoint folder" in p and "no record" in p for p in leaks), leaks
    store.close()
    resume(str(path), executor="inprocess", workers=2)
    assert_invariants(path)


def test_a_controller_that_lost_its_lock_leaves_the_new_holders_status_alone(
        tmp_path: Path) -> None:
    # A stops with LockLost while B (here: a holder from another host) runs the experiment: A
    # must not write "crashed" and its traceback over the status B keeps.
    from firepbt import PBT, run
    from firepbt.errors import LockLost
    from firepbt.store.base import LockHolder

    def take_over(ctl: Controller) -> None:
        if ctl.store.get_state("tick") == 5 and ctl.store.lock_holder()[0].host != "b-host":
            b = LockHolder(pid=1, host="b-host", since=time.time(), token="b")
            ctl.store.acquire_lock(b, stale_after_s=1e-3, now=time.time() + 3600)

    path = tmp_path / "run.db"
    try:
        run("quadratic", algorithm=PBT(population=4), steps=40, interval=4, store=str(path),
            executor="inprocess", workers=2, seed=11, on_event=take_over)
    except LockLost:
        pass
    else:
        raise AssertionError("A kept committing after B took the lock")
    store = open_store(str(path), create=False)
    assert store.lock_holder()[0].host == "b-host"
    assert store.get_state("status") == "running"
    assert store.get_state("error") is None
