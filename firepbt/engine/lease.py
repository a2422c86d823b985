"""The experiment lease: the store's lock, its heartbeat and the fence on every commit."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

from firepbt.errors import ExperimentLocked
from firepbt.store.base import LockHolder, Store

log = logging.getLogger("firepbt")


class Lease:
    """One controller's hold on an experiment.

    ``holder`` fences every commit (``store.transaction(fence=lease.holder)``): once another
    controller took the lock over, a commit of this one is refused.

    Args:
        store: the experiment's store.
        stale_s: a lock whose heartbeat is older than this may be taken over.
        refresh_s: seconds between heartbeats.
    """

    def __init__(self, store: Store, stale_s: float = 60.0, refresh_s: float = 10.0) -> None:
        self.store = store
        self.stale_s = stale_s
        self.refresh_s = refresh_s
        self.holder = LockHolder(os.getpid(), socket.gethostname(), time.time(), uuid.uuid4().hex)
        self._last_refresh = 0.0

    def take(self) -> None:
        """Take the experiment lock; a lock left by a killed controller on this host is stale.

        Raises:
            ExperimentLocked: a live controller holds the lock (the message names its pid,
                host and since-time).
        """
        try:
            self.store.acquire_lock(self.holder, self.stale_s, time.time())
            return
        except ExperimentLocked:
            current = self.store.lock_holder()
            if current is None or not holder_is_dead(current[0]):
                raise
        other, heartbeat = current
        # Waiting stale_s after a kill would stall every resume; a pid that no longer exists
        # on this host cannot come back. Count the lock stale at just under its age, so that a
        # lock a live controller took meanwhile (younger) still refuses us.
        age = max(time.time() - heartbeat, 0.0)
        stale = max(age / 2, 1e-3)
        log.warning("taking over the experiment lock of pid %d on %s: that process is gone",
                    other.pid, other.host)
        self.store.acquire_lock(self.holder, stale, max(time.time(), heartbeat + 2 * stale))

    def refresh(self) -> None:
        """Beat the heart, at most once per ``refresh_s``."""
        now = time.time()
        if now - self._last_refresh >= self.refresh_s:
            self.store.refresh_lock(self.holder, now)
            self._last_refresh = now

    def release(self) -> None:
        self.store.release_lock(self.holder)


def holder_is_dead(holder: LockHolder) -> bool:
    """Whether the lock holder was a process on this host that no longer exists."""
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by another user
    return False


def sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM stop the run like Ctrl-C (a clean, resumable exit); returns the undo.

    Only the main thread may set signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
