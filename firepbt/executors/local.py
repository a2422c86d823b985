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
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from firepbt.checkpoints import pid_alive
from firepbt.errors import CheckpointError, TaskLoadError
from firepbt.executors.base import Executor
from firepbt.storage import discard_unreported
from firepbt.trainable import SegmentResult, SegmentSpec

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Set in every worker process, so that a task file calling ``fp.run`` at import time (no
#: ``if __name__ == "__main__":`` guard) is refused with one clear error.
WORKER_ENV = "FIREPBT_WORKER_PROCESS"
MAIN_GUARD_HINT = (
    "worker processes import the script that calls fp.run(), so the call must go under "
    "'if __name__ == \"__main__\":'"
)

#: Prefix of the marker file (in the system temp dir) naming this process's multiprocessing
#: temp dir; the pid after it lets a later controller remove the dir of a killed one.
MP_TEMP_PREFIX = "firepbt-mp-"


def _die_with_controller(lifeline: Connection) -> None:
    """Make this worker exit as soon as its controller does, however the controller died.

    A worker orphaned by a killed controller would otherwise finish its segment and write the
    checkpoint a resumed controller is about to use, and print a BrokenPipeError traceback on
    the way out. ``lifeline`` is the read end of a pipe whose write end only the controller
    holds and never writes to: it reads as end-of-file exactly when the controller is gone.
    (``PR_SET_PDEATHSIG`` would not do: a worker's parent is the fork server, which lives as
    long as any worker holds its alive-pipe, and every worker does.)
    """

    def watch() -> None:
        with contextlib.suppress(OSError, EOFError):
            lifeline.poll(None)
        os._exit(1)  # no clean-up: the controller that wanted the result is gone

    threading.Thread(target=watch, name="firepbt-lifeline", daemon=True).start()


def _worker_main(
    conn: Connection, task_ref: str, threads: int, env: dict[str, str], lifeline: Connection
) -> None:
    _die_with_controller(lifeline)
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
        # A closed or reset pipe means the controller is gone: nobody wants a result any more,
        # and a traceback on the user's terminal would only alarm. Leave quietly.
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if kind == "stop":
            return
        if kind == "forget":
            state.forget(payload)
            continue
        try:
            # Tell the parent the segment starts now: its timeout must not count the time this
            # process spent starting up and importing the task.
            conn.send(("started", None))
            conn.send(("result", state.run(payload)))
        except OSError:  # BrokenPipeError, ConnectionResetError
            return


def own_mp_temp_dir() -> None:
    """Register this process's multiprocessing temp dir, and remove those of dead controllers.

    multiprocessing keeps the fork server's socket in a ``pymp-*`` temp dir that it removes at
    exit, so a controller killed with SIGKILL leaked one per kill. A marker file
    ``<tmp>/firepbt-mp-<pid>`` names that dir; every start removes the dirs named by the markers
    of dead pids, then the markers. (The dir itself stays where multiprocessing puts it: a
    deeper path could exceed the 107 bytes an AF_UNIX socket path may have.)
    """
    from multiprocessing import util

    base = Path(tempfile.gettempdir())
    for marker in base.glob(f"{MP_TEMP_PREFIX}*"):
        pid = marker.name[len(MP_TEMP_PREFIX):]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            leaked = Path(marker.read_text(encoding="utf-8").strip())
            # Only ever a pymp-* folder directly in the temp dir: a marker is no licence to
            # delete anything else.
            if leaked.parent == base and leaked.name.startswith("pymp-"):
                shutil.rmtree(leaked, ignore_errors=True)
        marker.unlink(missing_ok=True)
    mine = Path(util.get_temp_dir())
    marker = base / f"{MP_TEMP_PREFIX}{os.getpid()}"
    if mine.parent != base or marker.exists():
        return
    tmp = base / f".{marker.name}.tmp"
    tmp.write_text(str(mine), encoding="utf-8")
    os.replace(tmp, marker)
    # multiprocessing removes its dir at exit (priority -100); the marker goes after it.
    util.Finalize(None, marker.unlink, kwargs={"missing_ok": True}, exitpriority=-101)


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
        self._lifeline: tuple[Connection, Connection] | None = None

    @property
    def capacity(self) -> int:
        return self.workers

    def _spawn(self) -> _Slot:
        assert self._lifeline is not None, "start() makes the lifeline first"
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self.task_ref, self.threads, dict(os.environ), self._lifeline[0]),
            daemon=True,
        )
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def start(self) -> None:
        if self._slots:
            return
        own_mp_temp_dir()
        if self._lifeline is None:
            # Workers get the read end; only this process holds the write end (see
            # _die_with_controller). Never written to, closed in close().
            self._lifeline = self._ctx.Pipe(duplex=False)
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
            from firepbt.tasks import BUILTIN

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

    def wait_ready(self, timeout: float | None = None) -> int:
        """Start the workers and wait up to ``timeout`` seconds until each has loaded the task.

        Optional (a segment waits in its worker's pipe while the worker starts); benchmarks
        call it to time the work apart from the start-up. Returns how many workers are up.

        Raises:
            TaskLoadError: a worker could not load the task, or died while starting.
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while starting := [s for s in self._slots if not s.ready and s.spec is None]:
            wait_s = None if deadline is None else deadline - time.monotonic()
            if wait_s is not None and wait_s <= 0:
                break
            ready = set(wait([x for s in starting for x in (s.conn, s.process.sentinel)],
                             wait_s))
            for slot in starting:
                if slot.conn in ready:
                    with contextlib.suppress(EOFError, OSError):
                        kind, payload = slot.conn.recv()
                        if kind == "fatal":
                            raise TaskLoadError(
                                f"worker processes cannot load the task {self.task_ref!r}: "
                                f"{payload.strip().splitlines()[-1]}\n\n{payload}")
                        slot.ready = kind == "ready"
                        continue
                if slot.conn in ready or slot.process.sentinel in ready:
                    slot.process.join(timeout=5)
                    raise TaskLoadError(
                        f"a worker process exited while starting (exit code "
                        f"{slot.process.exitcode}) before it could load the task "
                        f"{self.task_ref!r}; its error is printed above"
                        + (f". {MAIN_GUARD_HINT}" if self._task_is_main_script() else ""))
        return sum(s.ready for s in self._slots)

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
        if not slot.process.is_alive():
            # It may have died after renaming its checkpoint into place but before reporting it
            # (nobody will ever record that checkpoint, and nobody can write it any more), or
            # half-way through writing one (a .tmp-* folder of a dead pid): remove both now,
            # not at the next start, so that a finished run leaves no leaked files.
            with contextlib.suppress(CheckpointError, OSError):
                discard_unreported(spec.checkpoint_root, spec.save_checkpoint)
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
        busy = [slot.spec for slot in self._slots if slot.spec is not None]
        for slot in self._slots:
            if slot.spec is not None:
                # A segment still running when the controller stops (Ctrl-C, SIGTERM, an
                # error) would finish and write a checkpoint nobody records: stop it now.
                slot.process.kill()
            else:
                with contextlib.suppress(OSError, BrokenPipeError):
                    slot.conn.send(("stop", None))
        for slot in self._slots:
            slot.process.join(timeout=2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=2)
            slot.conn.close()
        self._slots = []
        for spec in busy:  # their writers are dead: remove what they left
            with contextlib.suppress(CheckpointError, OSError):
                discard_unreported(spec.checkpoint_root, spec.save_checkpoint)
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
