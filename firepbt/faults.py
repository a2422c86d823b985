"""Deterministic fault injection for tests that use real processes.

Code under test calls :func:`crash_point` at named places (see :data:`KNOWN_CRASH_POINTS`). A
test chooses what happens there through the environment, never through sleeps or timing:

* ``FIREPBT_CRASH_AT="name"`` or ``"name:N"`` - the process SIGKILLs itself at the N-th hit of
  ``name`` (default the first). Counted per process, so it suits a child started for one test.
* ``FIREPBT_FAULT_DIR=<dir>`` - one-shot marker files, shared by every process that sees the
  variable: ``<dir>/<name>.crash`` SIGKILLs the process that hits ``name`` first,
  ``<dir>/<name>.raise`` raises :class:`InjectedFault`, ``<dir>/<name>.enospc`` raises
  ``OSError(ENOSPC)``. The marker is removed *before* the fault fires, so exactly one hit
  fires it even when several processes race for it. Create markers with :func:`arm`.

With neither variable set a crash point costs two dictionary lookups.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from firepbt.errors import ConfigError

CRASH_AT_ENV = "FIREPBT_CRASH_AT"
FAULT_DIR_ENV = "FIREPBT_FAULT_DIR"

FAULT_KINDS: tuple[str, ...] = ("crash", "raise", "enospc")

KNOWN_CRASH_POINTS: tuple[str, ...] = (
    # storage write (local, fsspec): files and manifest written, nothing renamed/published yet
    "checkpoint.after_write",
    # storage write: everything fsynced (local) or uploaded (fsspec), the commit is next
    "checkpoint.before_rename",
    # storage delete (fsspec): manifest removed, data not yet
    "checkpoint.mid_delete",
    # controller: a decision is computed but not yet committed to the store
    "controller.before_commit",
    # controller: the decision is committed, its side effects are not yet carried out
    "controller.after_commit",
    # controller: the algorithm returned its decisions, none applied yet
    "controller.after_decision",
    # controller: retention marked checkpoint records deleted; their files are not removed yet
    "controller.after_gc_commit",
    # worker: between training steps of a segment
    "worker.mid_segment",
    # worker: training done, the checkpoint is about to be saved
    "worker.before_save",
    # an Overwrite effect of kind <kind> ("exploit", "transfer", "replace"): the donor
    # checkpoint is found, the worker is not yet pointed at it
    "exploit.copy",
    "transfer.copy",
    "replace.copy",
    # a Start effect of a worker with role <role> (FIRE's evaluators): it is starting
    "evaluator.start",
)


class InjectedFault(RuntimeError):
    """The exception a ``.raise`` marker injects; carries the crash point's name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"injected fault at crash point {name!r}")
        self.name = name


# Hits per crash point in this process; only counted while FIREPBT_CRASH_AT names the point.
# Process-wide on purpose: "crash at the N-th hit in this process" is a property of the process.
_hits: dict[str, int] = {}


def _parse_crash_at(value: str) -> tuple[str, int]:
    """Split ``"name"`` / ``"name:N"`` into (name, N); ConfigError on a malformed value."""
    name, sep, count = value.rpartition(":")
    if not sep:
        return value, 1
    if not count.isdigit() or int(count) < 1 or not name:
        raise ConfigError(
            f"{CRASH_AT_ENV}={value!r}: must be 'name' or 'name:N' with N a positive integer"
        )
    return name, int(count)


def _kill_self() -> None:
    # SIGKILL, not sys.exit: no finally blocks, atexit hooks or buffered writes may run, which
    # is exactly what a power cut or an OOM kill does to a real worker.
    os.kill(os.getpid(), signal.SIGKILL)


def _take_marker(marker: Path) -> bool:
    """Consume one hit of a marker; True when the fault must fire now.

    The marker's text is an optional count of hits still to let pass. Unlinking is the claim:
    of several racing processes exactly one unlink succeeds.
    """
    try:
        text = marker.read_text().strip()
    except FileNotFoundError:
        return False
    if text.isdigit() and int(text) > 0:
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
        tmp.write_text(str(int(text) - 1))
        os.replace(tmp, marker)
        return False
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


def crash_point(name: str) -> None:
    """Fire the fault armed for crash point ``name``, if any.

    Args:
        name: the crash point's name, one of :data:`KNOWN_CRASH_POINTS` in firepbt's own code.

    Raises:
        InjectedFault: a ``<name>.raise`` marker was armed.
        OSError: with ``errno.ENOSPC``, a ``<name>.enospc`` marker was armed.
        ConfigError: ``FIREPBT_CRASH_AT`` is malformed.
    """
    crash_at = os.environ.get(CRASH_AT_ENV)
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if crash_at is None and fault_dir is None:
        return
    if crash_at:
        target, nth = _parse_crash_at(crash_at)
        if target == name:
            _hits[name] = _hits.get(name, 0) + 1
            if _hits[name] == nth:
                _kill_self()
    if fault_dir:
        base = Path(fault_dir)
        if _take_marker(base / f"{name}.crash"):
            _kill_self()
        if _take_marker(base / f"{name}.raise"):
            raise InjectedFault(name)
        if _take_marker(base / f"{name}.enospc"):
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {name!r})")


def arm(fault_dir: Path, name: str, kind: str = "crash", *, after: int = 0) -> Path:
    """Create a one-shot marker so that a later hit of ``name`` injects ``kind``.

    Args:
        fault_dir: the directory named by ``FIREPBT_FAULT_DIR`` in the processes under test.
        name: the crash point's name.
        kind: ``"crash"`` (SIGKILL), ``"raise"`` (InjectedFault) or ``"enospc"`` (OSError).
        after: hits to let pass first, so the fault fires at hit ``after + 1`` (e.g. the disk
            fills up on the third write).

    Returns:
        The marker's path; it disappears when the fault fires.

    Raises:
        ConfigError: an unknown kind, an empty or path-like name, or a negative ``after``.
    """
    if kind not in FAULT_KINDS:
        raise ConfigError(f"kind={kind!r}: must be one of {', '.join(FAULT_KINDS)}")
    if not name or "/" in name or os.sep in name:
        raise ConfigError(f"name={name!r}: must be a non-empty crash point name without '/'")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ConfigError(f"after={after!r}: must be an integer >= 0")
    fault_dir = Path(fault_dir)
    fault_dir.mkdir(parents=True, exist_ok=True)
    marker = fault_dir / f"{name}.{kind}"
    marker.write_text(str(after) if after else "")
    return marker
