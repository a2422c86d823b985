"""Tests for firepbt.executors.local: real worker processes, driven one segment at a time.

The probe task reports what a test needs to see through its metrics (``metric=`` picks one):
the pid of the process that trained it, and whether its state came from a checkpoint. A
segment with a ``gate`` folder waits inside train() until the test creates ``gate/go``, so a
test can kill or time out a worker that is certainly mid-segment; nothing waits on a timer to
make that happen.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from firepbt.checkpoints import CheckpointDir
from firepbt.errors import TaskLoadError
from firepbt.executors.local import LocalExecutor
from firepbt.trainable import SegmentResult, SegmentSpec

PROBE = """
import os
import time
from pathlib import Path

from firepbt.trainable import Trainable


class Probe(Trainable):
    def setup(self, hparams, seed):
        self.hparams, self.seed, self.total, self.loaded = dict(hparams), seed, 0, 0.0

    def train(self, steps):
        gate = self.hparams.get("gate")
        if gate:
            Path(gate, f"started-{os.getpid()}").touch()
            while not Path(gate, "go").exists():
                time.sleep(0.01)
        self.total += steps

    def evaluate(self):
        return {"fitness": float(self.total), "pid": float(os.getpid()), "loaded": self.loaded}

    def save(self, path):
        Path(path, "total").write_text(str(self.total))

    def load(self, path):
        self.total, self.loaded = int(Path(path, "total").read_text()), 1.0
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("task") / "probe_task.py"
    path.write_text(PROBE)
    return f"{path}:Probe"


def spec(root: Path, worker: int, save: int, *, start: int = 0, metric: str = "fitness",
         load: tuple[int, SegmentResult] | None = None, gate: Path | None = None) -> SegmentSpec:
    return SegmentSpec(
        worker=worker, segment=save, epoch=0,
        hparams={"gate": str(gate)} if gate is not None else {"gate": ""}, seed=1,
        start_step=start, steps=4, eval_every=4,
        load_checkpoint=None if load is None else load[0],
        load_path=None if load is None else load[1].checkpoint_path,
        load_checksum=None if load is None else load[1].checksum,
        save_checkpoint=save, checkpoint_root=str(root), metric=metric,
    )


def results(ex: LocalExecutor, n: int, within_s: float = 60.0) -> list[SegmentResult]:
    """Poll until ``n`` results came back (a generous bound: workers start on a busy machine)."""
    out: list[SegmentResult] = []
    deadline = time.monotonic() + within_s
    while len(out) < n and time.monotonic() < deadline:
        out += ex.poll(timeout=0.5)
    assert len(out) == n, f"{len(out)} of {n} results within {within_s} s"
    return out


def value(result: SegmentResult) -> float:
    assert result.error is None, result.error
    (_, v), = result.points
    assert v is not None
    return v


def wait_for_start(gate: Path, within_s: float = 60.0) -> int:
    """The pid of the worker that reached train() behind ``gate``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        started = list(gate.glob("started-*"))
        if started:
            return int(started[0].name.split("-")[1])
        time.sleep(0.01)
    raise AssertionError(f"no worker reached train() within {within_s} s")


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return gone(pid)


@pytest.fixture
def executor(probe: str) -> Any:
    ex = LocalExecutor(probe, workers=2)
    yield ex
    ex.close()


def test_submitted_segments_come_back_with_their_verified_checkpoints(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    executor.submit(spec(tmp_path, 0, 1))
    executor.submit(spec(tmp_path, 1, 2))
    got = {r.worker: r for r in results(executor, 2)}
    assert sorted(got) == [0, 1]
    for w, save in ((0, 1), (1, 2)):
        r = got[w]
        assert (r.segment, r.end_step, r.points) == (save, 4, ((4, 4.0),))
        assert r.error is None and r.checkpoint_path is not None and r.checksum is not None
        CheckpointDir(tmp_path).verify(r.checkpoint_path, r.checksum)
    assert executor.poll(timeout=0) == []  # nothing in flight: no waiting, nothing made up


def test_submit_beyond_capacity_raises_and_a_freed_slot_takes_work_again(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    assert executor.capacity == 2
    executor.submit(spec(tmp_path, 0, 1))
    executor.submit(spec(tmp_path, 1, 2))
    with pytest.raises(RuntimeError, match="2 segments already in flight, capacity 2"):
        executor.submit(spec(tmp_path, 2, 3))
    results(executor, 2)
    executor.submit(spec(tmp_path, 2, 3))
    assert results(executor, 1)[0].worker == 2


def test_a_member_goes_back_to_its_process_and_continues_from_memory(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    executor.submit(spec(tmp_path, 0, 1, metric="pid"))
    executor.submit(spec(tmp_path, 1, 2, metric="pid"))
    first = {r.worker: r for r in results(executor, 2)}
    executor.submit(spec(tmp_path, 1, 3, start=4, metric="pid", load=(2, first[1])))
    executor.submit(spec(tmp_path, 0, 4, start=4, metric="pid", load=(1, first[0])))
    again = {r.worker: r for r in results(executor, 2)}
    assert value(again[0]) == value(first[0]) and value(again[1]) == value(first[1])
    executor.submit(spec(tmp_path, 0, 5, start=8, metric="loaded", load=(4, again[0])))
    assert value(results(executor, 1)[0]) == 0.0  # no checkpoint read


def test_cancel_makes_the_next_segment_restore_from_its_checkpoint(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    executor.submit(spec(tmp_path, 0, 1))
    first = results(executor, 1)[0]
    executor.cancel(0)
    executor.cancel(7)  # a member no worker holds: nothing to forget, no error
    executor.submit(spec(tmp_path, 0, 2, start=4, metric="loaded", load=(1, first)))
    assert value(results(executor, 1)[0]) == 1.0


def test_a_worker_killed_mid_segment_yields_a_failed_result_and_is_replaced(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    executor.submit(spec(tmp_path / "ckpt", 0, 1, gate=gate))
    pid = wait_for_start(gate)
    os.kill(pid, signal.SIGKILL)
    (failed,) = results(executor, 1)
    assert failed.error == f"worker process died (exit code {-signal.SIGKILL})"
    assert (failed.worker, failed.segment, failed.end_step) == (0, 1, 0)
    assert failed.points == () and failed.checkpoint_path is None
    assert executor.restarts == 1
    assert not CheckpointDir(tmp_path / "ckpt").exists(1)
    # The replacement process trains, in another process than the dead one.
    executor.submit(spec(tmp_path / "ckpt", 0, 2, metric="pid"))
    executor.submit(spec(tmp_path / "ckpt", 1, 3, metric="pid"))
    assert pid not in {value(r) for r in results(executor, 2)}


def test_a_segment_running_past_its_timeout_is_killed_and_reported(
    probe: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    with LocalExecutor(probe, workers=1, segment_timeout_s=0.5) as ex:
        assert isinstance(ex, LocalExecutor)
        ex.submit(spec(tmp_path / "ckpt", 0, 1, gate=gate))
        pid = wait_for_start(gate)
        (failed,) = results(ex, 1, within_s=30)
        assert failed.error == "segment timed out after 0.5 s"
        assert wait_gone(pid), "the hung worker is still alive"
        (gate / "go").touch()  # a live process would now finish and write checkpoint 1
        ex.submit(spec(tmp_path / "ckpt", 0, 2))
        assert value(results(ex, 1)[0]) == 4.0
        assert ex.restarts == 1 and not CheckpointDir(tmp_path / "ckpt").exists(1)


def test_close_is_idempotent_and_leaves_no_worker_process(probe: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    ex = LocalExecutor(probe, workers=2)
    ex.submit(spec(tmp_path / "ckpt", 0, 1, metric="pid"))
    idle_pid = int(value(results(ex, 1)[0]))
    ex.submit(spec(tmp_path / "ckpt", 1, 2, gate=gate))  # still running when closed
    busy_pid = wait_for_start(gate)
    workers = [slot.process for slot in ex._slots]
    ex.close()
    ex.close()
    assert wait_gone(idle_pid) and wait_gone(busy_pid)
    assert not any(p.is_alive() for p in workers)
    assert not set(workers) & set(multiprocessing.active_children())
    # The killed segment's checkpoint can never appear: its writer is dead.
    (gate / "go").touch()
    assert not CheckpointDir(tmp_path / "ckpt").exists(2)
    LocalExecutor(probe, workers=1).close()  # closing one that never started is fine too


def test_start_is_idempotent(executor: LocalExecutor) -> None:
    executor.start()
    pids = [slot.process.pid for slot in executor._slots]
    executor.start()
    assert [slot.process.pid for slot in executor._slots] == pids and len(pids) == 2


def write_task(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "broken_task.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_a_task_that_cannot_import_is_one_fatal_error_naming_the_cause(tmp_path: Path) -> None:
    path = write_task(tmp_path, """
        import no_such_module_for_firepbt_tests
        """)
    ref = f"{path}:Task"
    with LocalExecutor(ref, workers=1) as ex:
        ex.submit(spec(tmp_path / "ckpt", 0, 1))
        with pytest.raises(TaskLoadError) as err:
            results(ex, 1)
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"worker processes cannot load the task {ref!r}: ")
    assert "No module named 'no_such_module_for_firepbt_tests'" in first
    assert "Traceback (most recent call last)" in str(err.value)  # the worker's own traceback


def test_a_task_name_missing_from_its_module_is_a_fatal_error(tmp_path: Path) -> None:
    path = write_task(tmp_path, """
        class Other:
            pass
        """)
    with LocalExecutor(f"{path}:Task", workers=1) as ex:
        ex.submit(spec(tmp_path / "ckpt", 0, 1))
        with pytest.raises(TaskLoadError, match="has no attribute 'Task'"):
            results(ex, 1)


def test_a_worker_that_exits_while_importing_the_task_is_a_fatal_error(tmp_path: Path) -> None:
    path = write_task(tmp_path, """
        import os
        os._exit(3)
        """)
    with LocalExecutor(f"{path}:Task", workers=1) as ex:
        ex.submit(spec(tmp_path / "ckpt", 0, 1))
        with pytest.raises(TaskLoadError, match=r"exited while starting \(exit code 3\)"):
            results(ex, 1)


def test_wait_ready_returns_once_every_worker_loaded_the_task(probe: str, tmp_path: Path) -> None:
    with LocalExecutor(probe, workers=2) as ex:
        assert ex.wait_ready(timeout=60) == 2
        assert all(slot.ready for slot in ex._slots)
        # The ready messages it read do not confuse the results that follow.
        ex.submit(spec(tmp_path / "ckpt", 0, 1))
        assert value(results(ex, 1)[0]) == 4.0


def test_wait_ready_reports_a_task_that_cannot_load(tmp_path: Path) -> None:
    path = write_task(tmp_path, """
        import no_such_module_for_firepbt_tests
        """)
    with LocalExecutor(f"{path}:Task", workers=1) as ex, \
            pytest.raises(TaskLoadError, match="no_such_module_for_firepbt_tests"):
        ex.wait_ready(timeout=60)


def test_wait_ready_reports_a_worker_that_exits_while_starting(tmp_path: Path) -> None:
    path = write_task(tmp_path, """
        import os
        os._exit(3)
        """)
    with LocalExecutor(f"{path}:Task", workers=1) as ex, \
            pytest.raises(TaskLoadError, match=r"exited while starting \(exit code 3\)"):
        ex.wait_ready(timeout=60)
