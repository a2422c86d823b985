"""Issue #8 a and g: what a killed controller's worker processes may (not) do afterwards.

The controller runs in a child process on the process executor (the CLI default) and SIGKILLs
itself at a named crash point. Its workers must die with it (they would otherwise finish their
segment and write the checkpoint a resumed run uses), must not print tracebacks on the user's
terminal, and the kill must not leak multiprocessing temp dirs. A segment re-issued on resume
writes a new checkpoint id, so a late write under the old lease can never collide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rel_helpers import REPO, assert_invariants, run_child, write_task

from firepbt.checkpoints import CheckpointDir, default_root
from firepbt.controller import Controller
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.invariants import check_store
from firepbt.store import PENDING, open_store
from firepbt.tasks.toys import QuadraticToy

# A worker whose first train() call claims the marker file and then waits for a "go" file (or
# ten minutes): it stands for a long training step that is still running when the controller
# dies. Every other call trains normally.
BLOCKING_TASK = """
import os
import time
from pathlib import Path

from firepbt.tasks.toys import QuadraticToy


class Blocking(QuadraticToy):
    def train(self, steps):
        d = Path(os.environ["BLOCK_DIR"])
        try:
            fd = os.open(d / "blocker", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().train(steps)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        deadline = time.monotonic() + 600
        while not (d / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().train(steps)
"""

CONTROLLER = """
from firepbt import PBT, run
if __name__ == "__main__":
    run({task!r}, algorithm=PBT(population=2), steps=40, interval=4, store={store!r},
        executor="process", workers=2, seed=3)
"""


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _kill_controller_mid_segment(tmp_path: Path, go: bool) -> tuple[int, str, Path]:
    """Run a controller that dies while a worker is inside a segment; return that worker's
    pid, the controller's stderr, and the store path.

    The controller SIGKILLs itself at its first commit, while the other worker is blocked in
    its first segment; with ``go`` the blocked worker is then released to finish its segment.
    Output goes to files: an orphan holding a pipe would make ``communicate()`` wait for it.
    """
    task = write_task(tmp_path, BLOCKING_TASK)
    block = tmp_path / "block"
    block.mkdir()
    store = tmp_path / "run.db"
    script = tmp_path / "controller.py"
    script.write_text(textwrap.dedent(CONTROLLER.format(task=f"{task}:Blocking",
                                                        store=str(store))))
    env = {**os.environ, "BLOCK_DIR": str(block), "TMPDIR": str(tmp_path / "tmp"),
           "FIREPBT_CRASH_AT": "controller.after_commit:1"}
    (tmp_path / "tmp").mkdir()
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=str(REPO), env=env,
                                stdout=fh, stderr=fh)
        assert proc.wait(timeout=120) == -signal.SIGKILL
    blocker = int((block / "blocker").read_text())
    if go:
        (block / "go").touch()
    return blocker, err, store


@pytest.fixture
def orphans() -> list[int]:
    """Pids to SIGKILL after the test, so that a failing test leaves no process behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_die_with_their_killed_controller(tmp_path: Path, orphans: list[int]) -> None:
    """#8a: a worker inside a segment dies with its controller instead of finishing it.

    Before: the orphan went on training (here: for ten minutes) and would have written its
    checkpoint under the id the resumed run re-issues.
    """
    pid, _, store = _kill_controller_mid_segment(tmp_path, go=False)
    orphans.append(pid)
    assert _wait_gone(pid, within_s=30), f"worker {pid} outlived its controller"
    # The orphan wrote nothing, and the resumed run finishes cleanly on the same store.
    assert not [p for p in default_root(store).iterdir() if p.name.startswith(".tmp-")
                and f"-{pid}-" in p.name]


def test_orphaned_workers_print_no_traceback(tmp_path: Path, orphans: list[int]) -> None:
    """#8g: a worker whose controller died leaves quietly (no BrokenPipe/ConnectionReset
    traceback on the user's terminal), even when its segment would have ended afterwards."""
    pid, err, _ = _kill_controller_mid_segment(tmp_path, go=True)
    orphans.append(pid)
    assert _wait_gone(pid, within_s=30)
    text = err.read_text()
    assert "Traceback" not in text and "Error" not in text, text


def test_a_killed_controller_leaks_no_multiprocessing_temp_dir(
    tmp_path: Path, orphans: list[int]
) -> None:
    """#8g: each kill used to leave a /tmp/pymp-* folder (the fork server's socket) forever.

    Now a marker <tmp>/firepbt-mp-<pid> names it, and the next controller's executor removes
    the dirs named by the markers of dead pids.
    """
    pid, _, store = _kill_controller_mid_segment(tmp_path, go=True)
    orphans.append(pid)
    assert _wait_gone(pid, within_s=30)
    tmp = tmp_path / "tmp"
    assert [p.name for p in tmp.iterdir()], "the killed controller made no temp dir at all"
    code = f"""
    from firepbt import resume
    if __name__ == "__main__":
        resume({str(store)!r}, workers=2)
    """
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "BLOCK_DIR": str(tmp_path / "block"), "TMPDIR": str(tmp)}
    done = subprocess.run([sys.executable, str(script)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp.iterdir()) == []
    assert_invariants(store)


def test_resumed_segments_write_new_checkpoint_ids(tmp_path: Path) -> None:
    """#8a: a late write under the old lease never collides with the re-issued segment.

    A controller is killed; a worker of the old lease writes its segment's checkpoint *after*
    the resumed controller's start-up sweep (the race the orphans used to win). Before, the
    resumed segment kept the old ``to_checkpoint`` id and failed with "checkpoint ... exists
    already"; after 4 kills a population of 2 ended with both members failed.
    """
    store_path = tmp_path / "run.db"
    code = f"""
    from firepbt import PBT, run
    run("quadratic", algorithm=PBT(population=2), steps=40, interval=4,
        store={str(store_path)!r}, executor="inprocess", workers=2, seed=3)
    """
    proc = run_child(code, env={"FIREPBT_CRASH_AT": "controller.after_commit:3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = open_store(str(store_path), create=False)
    old = {s.id: s.to_checkpoint for s in store.segments(status=PENDING)}
    assert old
    ctl = Controller(store=store, executor=InProcessExecutor(QuadraticToy, capacity=2),
                     checkpoint_root=default_root(store_path))
    ctl.start()
    for cid in old.values():  # the dead controller's workers finish late
        assert cid is not None
        CheckpointDir(default_root(store_path)).write(
            cid, lambda p: (p / "late.txt").write_text("late"), {"late": True})
    ctl.run()
    assert store.events(kind="failure") == [], [e.info for e in store.events(kind="failure")]
    assert all(w.status == "done" and w.step == 40 for w in store.workers())
    assert not {store.segment(sid).to_checkpoint for sid in old} & set(old.values())
    # The late writes are leaks of the old lease: check names each one (the next start
    # removes them); everything else holds.
    assert_invariants(store, files=False)
    leaks = [p for p in check_store(store) if p.startswith("files:")]
    assert len(leaks) == len(old) and all("leaked checkpoint folder" in p for p in leaks), leaks
    store.close()
