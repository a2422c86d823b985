"""The benchmarks' process pool: ``pool_map`` over (method, seed) jobs, torn down with the bench.

A bench stopped with SIGTERM (or killed) used to leave its pool processes waiting for work
forever: the default SIGTERM action ends the main process at once, and nothing told the pool.
Now every pool process asks the kernel to SIGKILL it when the bench process exits
(``prctl(PR_SET_PDEATHSIG)`` on Linux, a watchdog thread elsewhere), and SIGTERM in the bench
becomes a ``KeyboardInterrupt`` that shuts the pool down before the bench exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_bench(bench_pid: int) -> None:
    """Pool initializer: this process dies when the bench process (its parent) does."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    else:  # pragma: no cover - macOS

        def watch() -> None:
            while os.getppid() == bench_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="firepbt-bench-watchdog", daemon=True).start()
    # The bench may have died before the death signal was armed: then nobody sends it.
    if os.getppid() != bench_pid:
        os._exit(1)


def _own_forkserver() -> None:
    """Pool initializer, after :func:`_die_with_bench`: forget the bench's forkserver.

    A forked pool process inherits the bench's record of its multiprocessing forkserver (a
    process that is the bench's child, not this one's); a run on process workers here then
    failed in ``forkserver.ensure_running()`` with "No child processes". Forgetting it makes
    the first run here start this process's own server.
    """
    from multiprocessing import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
    server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None


def _init_pool_process(bench_pid: int) -> None:
    _die_with_bench(bench_pid)
    _own_forkserver()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pool_map(fn: Callable[[Any], dict[str, Any]], jobs: Sequence[Any], processes: int,
             progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``fn`` over ``jobs`` in order, on a fork pool of ``processes`` (1: in this process).

    SIGTERM (in the main thread) and Ctrl-C stop the pool's processes before re-raising.
    """
    outs: list[dict[str, Any]] = []
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            outs.append(fn(job))
            if progress:
                progress(outs[-1])
        return outs
    # fork where there is one: spawn would re-run the caller's __main__ in every worker.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(processes, mp_context=get_context(method),
                               initializer=_init_pool_process, initargs=(os.getpid(),))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        for out in pool.map(fn, jobs):
            outs.append(out)
            if progress:
                progress(out)
    except BaseException:
        # Waiting for the running jobs could take hours: stop them. The pool's processes are
        # this process's multiprocessing children started since the pool was made.
        pool.shutdown(wait=False, cancel_futures=True)
        for child in set(multiprocessing.active_children()) - before:
            with contextlib.suppress(OSError):
                child.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    pool.shutdown(wait=True)
    return outs
