"""Local worker processes, one torch thread each.

Each process keeps its recent trainables in memory, and a member goes back to the process that
trained it last when that process is free, so continuing costs no checkpoint reload.

Workers are started with the ``forkserver`` method where the platform has it: a clean server
process (started like a spawned one, not a fork of the controller) imports the worker code and
the task's module once, and every worker - including replacements for crashed ones - is forked
from it, already warm. With 4 workers importing torch on 2 cores that saves seconds per start.
Elsewhere ``spawn`` is used.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from firepbt.errors import TaskLoadError
from firepbt.executors.base import Executor
from firepbt.trainable import SegmentResult, SegmentSpec

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Set in every worker process, so that a task file calling ``fp.run`` at import time (no
#: ``if __name__ == "__main__":`` guard) is refused with one clear error.
WORKER_ENV = "FIREPBT_WORKER_PROCESS"
MAIN_GUARD_HINT = (
    "worker processes import the script that calls fp.run(), so the call must go under "
    "'if __name__ == \"__main__\":'"
)


def _worker_main(conn: Connection, task_ref: str, threads: int, env: dict[str, str]) -> None:
    # A fork-server child inherits the server's environment, not the controller's current one:
    # take the controller's, as a spawned process would (fault injection and user settings
    # travel this way). Thread counts are set before any numerical library is imported.
    os.environ.clear()
    os.environ.update(env)
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)
    os.environ[WORKER_ENV] = "1"  # fp.run() refuses to start inside a worker (no main guard)
    # Ctrl-C in the terminal reaches the whole process group: the controller stops the
    # workers itself, so a worker must not die printing its own KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import traceback

    from firepbt.executors.worker import WorkerState, resolve_task

    try:
        state = WorkerState(resolve_task(task_ref))
    except BaseException:  # noqa: BLE001 - every segment would fail alike: tell the parent once
        conn.send(("fatal", traceback.format_exc()))
        return
    conn.send(("ready", None))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if kind == "stop":
            return
        if kind == "forget":
            state.forget(payload)
            continue
        # Tell the parent the segment starts now: its timeout must not count the time this
        # process spent starting up and importing the task.
        conn.send(("started", None))
        conn.send(("result", state.run(payload)))


#: Extra seconds a segment's timeout allows before its worker reports that it started (a fresh
#: process imports the task first, which can take long on a busy machine).
STARTUP_GRACE_S = 120.0


@dataclass
class _Slot:
    process: Any
    conn: Connection
    spec: SegmentSpec | None = None
    started: float = 0.0
    running: bool = False  # the worker reported that it started the segment
    ready: bool = False  # the worker loaded the task

    def deadline(self, timeout_s: float) -> float:
        return self.started + timeout_s + (0.0 if self.running else STARTUP_GRACE_S)


class LocalExecutor(Executor):
    """``workers`` spawned processes running segments of the task ``task_ref``.

    Args:
        task_ref: ``module:Name`` or ``file.py:Name`` importable in a fresh process.
        workers: number of processes (at most this many segments at once).
        threads: torch/BLAS threads per process.
        segment_timeout_s: a segment running longer is killed and reported as failed.
    """

    def __init__(
        self,
        task_ref: str,
        workers: int = 2,
        threads: int = 1,
        segment_timeout_s: float | None = None,
    ) -> None:
        self.task_ref = task_ref
        self.workers = workers
        self.threads = threads
        self.segment_timeout_s = segment_timeout_s
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx: Any = mp.get_context(method)
        self._slots: list[_Slot] = []
        self._last_slot: dict[int, int] = {}
        self.restarts = 0

    @property
    def capacity(self) -> int:
        return self.workers

    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self.task_ref, self.threads, dict(os.environ)),
            daemon=True,
        )
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def start(self) -> None:
        if self._slots:
            return
        if self._ctx.get_start_method() == "forkserver":
            self._warm_forkserver()
        self._slots = [self._spawn() for _ in range(self.workers)]

    def _warm_forkserver(self) -> None:
        """Preload the worker code and the task's module into the fork server.

        The server inherits this process's environment when it starts, so the thread limits
        are put in place around its start (numerical libraries read them at import).
        """
        preload = ["firepbt.executors.worker"]
        module = self.task_ref.rsplit(":", 1)[0]
        if not module.endswith(".py"):
            from firepbt.tasks.loader import BUILTIN

            module = BUILTIN.get(self.task_ref, self.task_ref).rsplit(":", 1)[0]
            preload.append(module)
        self._ctx.set_forkserver_preload(preload)
        saved = {var: os.environ.get(var) for var in _THREAD_ENV}
        os.environ.update({var: str(self.threads) for var in _THREAD_ENV})
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots]

    def submit(self, spec: SegmentSpec) -> None:
        self.start()
        free = [i for i, s in enumerate(self._slots) if s.spec is None]
        self._require_free_slot(len(self._slots) - len(free))
        last = self._last_slot.get(spec.worker)
        i = last if last in free else free[0]
        slot = self._slots[i]
        slot.conn.send(("run", spec))
        slot.spec, slot.started, slot.running = spec, time.monotonic(), False
        self._last_slot[spec.worker] = i

    def _fail(self, i: int, why: str) -> SegmentResult:
        slot = self._slots[i]
        spec = slot.spec
        assert spec is not None
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=5)
        slot.conn.close()
        self._slots[i] = self._spawn()
        self.restarts += 1
        for w, s in list(self._last_slot.items()):
            if s == i:
                del self._last_slot[w]
        return SegmentResult(
            spec.worker, spec.segment, spec.epoch, (), spec.start_step, None, None, error=why
        )

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        results: list[SegmentResult] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        # Loop until a result, a failure or the caller's timeout: a "started" message alone
        # only restarts a segment's clock.
        while True:
            busy = [i for i, s in enumerate(self._slots) if s.spec is not None]
            if not busy:
                return results
            now = time.monotonic()
            wait_s = None if deadline is None else max(0.0, deadline - now)
            if self.segment_timeout_s is not None:
                left = min(self._slots[i].deadline(self.segment_timeout_s) - now for i in busy)
                wait_s = max(0.0, left) if wait_s is None else max(0.0, min(wait_s, left))
            waitables: list[Any] = []
            for i in busy:
                waitables += [self._slots[i].conn, self._slots[i].process.sentinel]
            ready = set(wait(waitables, wait_s))
            for i in busy:
                result = self._check(i, ready)
                if result is not None:
                    results.append(result)
            if results or (deadline is not None and time.monotonic() >= deadline):
                return results

    def _check(self, i: int, ready: set[Any]) -> SegmentResult | None:
        """The result or failure of slot ``i``'s segment, if there is one now."""
        slot = self._slots[i]
        assert slot.spec is not None
        if slot.conn in ready:
            try:
                while slot.conn.poll():
                    kind, payload = slot.conn.recv()
                    if kind == "ready":
                        slot.ready = True
                    elif kind == "started":
                        slot.started, slot.running = time.monotonic(), True
                    elif kind == "fatal":
                        cause = payload.strip().splitlines()[-1]
                        raise TaskLoadError(
                            f"worker processes cannot load the task {self.task_ref!r}: "
                            f"{cause}\n\n{payload}"
                        )
                    else:
                        slot.spec = None
                        return payload
            except (EOFError, OSError):
                pass
            else:
                if slot.process.sentinel not in ready:
                    return None
        if slot.conn in ready or slot.process.sentinel in ready:
            code = slot.process.exitcode
            if code is None:
                slot.process.join(timeout=5)
                code = slot.process.exitcode
            if not slot.ready:
                # It died before loading the task: every new worker would die the same way.
                raise TaskLoadError(
                    f"a worker process exited while starting (exit code {code}) before it "
                    f"could load the task {self.task_ref!r}; its error is printed above"
                    + (f". {MAIN_GUARD_HINT}" if self._task_is_main_script() else "")
                )
            return self._fail(i, f"worker process died (exit code {code})")
        if (
            self.segment_timeout_s is not None
            and time.monotonic() > slot.deadline(self.segment_timeout_s)
        ):
            return self._fail(i, f"segment timed out after {self.segment_timeout_s:g} s")
        return None

    def _task_is_main_script(self) -> bool:
        """Whether the task lives in the script being run (which workers import again)."""
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        where = self.task_ref.rsplit(":", 1)[0]
        return main is not None and where.endswith(".py") and (
            os.path.realpath(main) == os.path.realpath(where))

    def cancel(self, worker: int) -> None:
        i = self._last_slot.pop(worker, None)
        if i is not None and self._slots[i].spec is None:
            self._slots[i].conn.send(("forget", worker))

    def peak_rss_bytes(self) -> int:
        """Sum of peak resident memory (VmHWM) of this process and all its live descendants
        (workers, the fork server, the resource tracker), read from /proc (Linux)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry}/stat") as f:
                        # The fields after the parenthesised command name: state, ppid, ...
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        return total

    def close(self) -> None:
        for slot in self._slots:
            with contextlib.suppress(OSError, BrokenPipeError):
                slot.conn.send(("stop", None))
        for slot in self._slots:
            slot.process.join(timeout=2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=2)
            slot.conn.close()
        self._slots = []
