"""Lease: the experiment lock on a real SQLite store, its take-over, heartbeat and fence."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firepbt.engine.lease import Lease, holder_is_dead
from firepbt.errors import ExperimentLocked, LockLost
from firepbt.store import SQLiteStore


def test_a_second_controller_is_refused_while_the_first_holds_the_lease(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    first = Lease(store)
    first.take()
    with pytest.raises(ExperimentLocked, match=str(os.getpid())):
        Lease(store).take()
    first.release()
    Lease(store).take()  # free again


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over_at_once(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    dead = Lease(store)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead.holder = dead.holder.__class__(int(child.stdout), dead.holder.host, dead.holder.since,
                                        dead.holder.token)
    dead.take()
    assert holder_is_dead(dead.holder)
    mine = Lease(store, stale_s=3600.0)
    mine.take()  # no wait of stale_s: that pid cannot come back
    assert store.lock_holder()[0] == mine.holder  # type: ignore[index]


def test_the_heartbeat_is_paced_and_a_lost_lease_fences_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    lease = Lease(store, stale_s=1e-3, refresh_s=3600.0)
    lease.take()
    lease.refresh()
    beat = store.lock_holder()[1]  # type: ignore[index]
    lease.refresh()  # within refresh_s: no write
    assert store.lock_holder()[1] == beat  # type: ignore[index]
    other = Lease(store)
    # An hour later, without a heartbeat, ours is stale: the other controller takes over.
    store.acquire_lock(other.holder, 60.0, time.time() + 3600.0)
    with pytest.raises(LockLost), store.transaction(fence=lease.holder):
        store.put_state("x", 1)
    assert store.get_state("x") is None
