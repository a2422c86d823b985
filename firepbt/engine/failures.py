"""What happens after a worker fails a segment: retry, stop the run, or let the worker go."""

from __future__ import annotations

import errno

from firepbt.states import MEMBER
from firepbt.store.base import WorkerRecord

HALT = "halt"  # the disk is full: stop the run after this commit, resumable
RETRY = "retry"  # re-run the same segment from its start checkpoint under a new lease
RETIRE = "retire"  # an evaluator (not a member): the algorithm stops it
GIVE_UP = "give_up"  # the member stays failed
REPLACE = "replace"  # the algorithm decides whom the member restarts from


def after_failure(w: WorkerRecord, attempts: int, error: str, max_failures: int) -> str:
    """The policy for worker ``w`` (its ``failures`` already counted) after attempt
    ``attempts`` of a segment failed with traceback ``error``."""
    if disk_full(error):
        # Retrying cannot help while the disk is full, and replacing the member from a donor
        # would only spread the failure over the population.
        return HALT
    if attempts < max_failures:
        return RETRY  # transient
    if w.role != MEMBER:
        return RETIRE
    if w.failures >= 2 * max_failures:
        # It failed again after a replacement from a donor: replacing it once more would loop
        # for ever on a task that cannot train it.
        return GIVE_UP
    return REPLACE


def disk_full(error: str) -> bool:
    """Whether a worker's traceback ends in ENOSPC (no space left on the device)."""
    lines = error.strip().splitlines()
    return bool(lines) and (f"[Errno {errno.ENOSPC}]" in lines[-1]
                            or "No space left on device" in lines[-1])
