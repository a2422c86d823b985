"""The Ray executor on a real Ray instance (loopback only, shut down at the end of the module).

Each test that needs Ray shares one private instance (starting Ray costs seconds on two cores);
the executor then uses that connection and leaves it running. What a user relies on:

* segments run on actors that stay up, so a continuing member reloads nothing, and ``cancel``
  makes the next segment restore from its checkpoint;
* a SIGKILLed actor, or one that overruns its timeout, is a failed segment and a new actor, and
  a whole run survives it with a clean store;
* a task that cannot load stops the run with one clear error instead of retrying forever.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firepbt import PBT, run
from firepbt.checkpoints import CheckpointDir
from firepbt.controller import Controller
from firepbt.errors import TaskLoadError
from firepbt.invariants import check_store
from firepbt.trainable import SegmentResult, SegmentSpec

ray = pytest.importorskip("ray", reason="Ray is not installed (the ray extra)")

from firepbt.executors.ray import RayExecutor, init_private_ray  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

TASK = f"{Path(__file__).with_name('ray_tasks.py')}:Restores"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One private Ray instance (2 logical CPUs) for the module; always shut down."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        init_private_ray(num_cpus=2)
        try:
            yield
        finally:
            ray.shutdown()


def spec(root: Path, worker: int, save: int, load: tuple[int, SegmentResult] | None = None,
         step_s: float = 0.0, steps: int = 4) -> SegmentSpec:
    start = 0 if load is None else load[1].end_step
    return SegmentSpec(
        worker=worker, segment=save, epoch=0, hparams={"x": 0.5, "step_s": step_s},
        seed=worker, start_step=start, steps=steps, eval_every=steps,
        load_checkpoint=None if load is None else load[0],
        load_path=None if load is None else load[1].checkpoint_path,
        load_checksum=None if load is None else load[1].checksum,
        save_checkpoint=save, checkpoint_root=str(root),
    )


def wait_result(executor: RayExecutor, limit_s: float = 60.0) -> SegmentResult:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        results = executor.poll(1.0)
        if results:
            assert len(results) == 1
            return results[0]
    raise AssertionError(f"no result within {limit_s} s")


def restored(result: SegmentResult) -> float | None:
    assert result.error is None, result.error
    return result.points[-1][1]


def test_actors_keep_members_in_memory_and_cancel_forgets_them(
    ray_instance: None, tmp_path: Path
) -> None:
    with RayExecutor(TASK, workers=2, resources={"cpu": 0.5}) as ex:
        assert ex.poll(0.0) == []  # nothing in flight: no waiting
        ex.submit(spec(tmp_path, worker=0, save=1))
        a = wait_result(ex)
        assert restored(a) == 0.0 and a.checkpoint_path is not None
        CheckpointDir(tmp_path).verify(a.checkpoint_path, a.checksum or "")
        # Continuing from its own checkpoint: the actor still holds the member, no reload.
        ex.submit(spec(tmp_path, worker=0, save=2, load=(1, a)))
        b = wait_result(ex)
        assert restored(b) == 0.0 and b.end_step == 8
        # Its weights were replaced elsewhere: the cached copy must not be used again.
        ex.cancel(0)
        ex.submit(spec(tmp_path, worker=0, save=3, load=(2, b)))
        c = wait_result(ex)
        assert restored(c) == 1.0 and c.end_step == 12
        pids = [pid for pid, _, _ in ex.slot_actors() if pid is not None]
        assert pids and os.getpid() not in pids


def test_capacity_is_enforced(ray_instance: None, tmp_path: Path) -> None:
    with RayExecutor(TASK, workers=1, resources={"cpu": 0.5}) as ex:
        ex.submit(spec(tmp_path, worker=0, save=1, step_s=0.05))
        with pytest.raises(RuntimeError, match="beyond capacity: 1 segments already in flight"):
            ex.submit(spec(tmp_path, worker=1, save=2))
        assert wait_result(ex).error is None


def _busy_pid(ex: RayExecutor, limit_s: float = 60.0) -> int:
    """The pid of an actor that is running a segment, once its actor reported it is up."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert ex.poll(0.2) == []
        for pid, _, busy in ex.slot_actors():
            if busy and pid is not None:
                return pid
    raise AssertionError("no actor came up")


def test_sigkilled_actor_is_a_failed_segment_and_a_new_actor(
    ray_instance: None, tmp_path: Path
) -> None:
    with RayExecutor(TASK, workers=1, resources={"cpu": 0.5}) as ex:
        ex.submit(spec(tmp_path, worker=3, save=1, step_s=0.5, steps=40))  # 20 s
        pid = _busy_pid(ex)
        os.kill(pid, signal.SIGKILL)
        failed = wait_result(ex)
        assert failed.error is not None and "Ray actor died" in failed.error
        assert failed.worker == 3 and failed.checkpoint_path is None
        assert not CheckpointDir(tmp_path).path_for(1).exists()
        assert ex.restarts == 1
        ex.submit(spec(tmp_path, worker=3, save=2))
        again = wait_result(ex)
        assert restored(again) == 0.0
        assert ex.slot_actors()[0][0] not in (None, pid)


def test_segment_timeout_replaces_the_actor(ray_instance: None, tmp_path: Path) -> None:
    with RayExecutor(TASK, workers=1, resources={"cpu": 0.5}, segment_timeout_s=1.0) as ex:
        ex.submit(spec(tmp_path, worker=0, save=1, step_s=0.5, steps=40))
        pid = _busy_pid(ex)
        failed = wait_result(ex)
        assert failed.error == "segment timed out after 1 s"
        ex.submit(spec(tmp_path, worker=0, save=2))
        assert restored(wait_result(ex)) == 0.0
        assert ex.slot_actors()[0][0] != pid


def test_task_that_cannot_load_stops_with_one_error(ray_instance: None, tmp_path: Path) -> None:
    with RayExecutor("no_such_module_anywhere:Task", workers=1,
                     resources={"cpu": 0.5}) as ex:
        ex.submit(spec(tmp_path, worker=0, save=1))
        with pytest.raises(TaskLoadError, match="no_such_module_anywhere"):
            wait_result(ex)


def test_cluster_too_small_is_a_warning_on_a_shared_instance(
    ray_instance: None, caplog: pytest.LogCaptureFixture
) -> None:
    # This process joined an instance it did not start (as on a cluster that may grow):
    # a warning, and actors wait for resources.
    with caplog.at_level(logging.WARNING, logger="firepbt"), \
            RayExecutor(TASK, workers=3, resources={"cpu": 1}):
        pass
    assert "cannot hold 3 workers at once yet (cpu: 3 workers x 1 = 3, the cluster has 2)" \
        in caplog.text


def test_a_run_survives_sigkill_of_an_actor_mid_segment(
    ray_instance: None, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_one(ctl: Controller) -> None:
        # After the first result, SIGKILL an actor that is running a segment.
        ex = ctl.executor
        assert isinstance(ex, RayExecutor)
        if not killed:
            busy = [pid for pid, _, b in ex.slot_actors() if b and pid is not None]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])

    result = run(
        "firepbt.tasks.sleep:SleepTask", algorithm=PBT(population=4), steps=60, interval=10,
        store=str(tmp_path / "run.db"), executor="ray", workers=2,
        resources_per_member={"cpu": 0.5}, on_event=kill_one,
    )
    assert killed, "no actor was busy after a result"
    assert result.status() == "finished"
    assert check_store(result.store) == []
    failures = result.failures()
    assert len(failures) == 1 and "Ray actor died" in (failures[0].error or "")


def test_an_unimportable_task_class_travels_by_value(ray_instance: None, tmp_path: Path) -> None:
    # A class defined inside a function has no importable name: Ray pickles it to the actors.
    from firepbt.tasks.toys import QuadraticToy

    class Local(QuadraticToy):
        pass

    result = run(Local, steps=40, interval=10, store=str(tmp_path / "run.db"),
                 algorithm=PBT(population=2), executor="ray", workers=2,
                 resources_per_member={"cpu": 0.5})
    assert result.status() == "finished" and check_store(result.store) == []


def test_overhead_bench_runs_on_ray(ray_instance: None) -> None:
    from firepbt.bench.overhead import measure

    r = measure(workers=2, population=2, steps=20, executor="ray", warm=True)
    assert r["segments"] == 4 and r["ideal_s"] == 0.4
    assert 0.0 < r["efficiency"] <= 1.0 and r["wall_s"] >= r["ideal_s"]


def test_the_private_instance_listens_on_loopback_only(ray_instance: None) -> None:
    psutil = pytest.importorskip("psutil")  # Ray depends on it
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "found none of Ray's listening sockets"
    addresses = {c.laddr.ip for c in listening}
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
