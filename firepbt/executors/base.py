"""Who trains: the executor interface.

An executor receives :class:`SegmentSpec` work items and hands back :class:`SegmentResult`s.
It owns worker processes (or threads, or Ray actors) and nothing else: no store, no decisions.
That is the seam a Ray executor plugs into later without changing algorithms or controller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from firepbt.trainable import SegmentResult, SegmentSpec


class Executor(ABC):
    """Runs segments; at most ``capacity`` at once."""

    #: False for executors whose checkpoints are not files (the simulated one): the controller
    #: then skips file checks and file deletion.
    writes_checkpoints: bool = True

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many segments may run at the same time."""

    @abstractmethod
    def start(self) -> None:
        """Start workers (may be lazy). Idempotent."""

    @abstractmethod
    def submit(self, spec: SegmentSpec) -> None:
        """Queue a segment; the caller never submits more than ``capacity`` in flight."""

    def _require_free_slot(self, in_flight: int) -> None:
        """Every executor enforces the capacity contract, so that a controller that breaks it
        fails in the fast deterministic tests too, not only on real worker processes."""
        if in_flight >= self.capacity:
            raise RuntimeError(
                f"submit() beyond capacity: {in_flight} segments already in flight, "
                f"capacity {self.capacity}"
            )

    @abstractmethod
    def poll(self, timeout: float | None) -> list[SegmentResult]:
        """Wait up to ``timeout`` seconds for finished segments and return them.

        A worker that died or hung yields a result with ``error`` set, never silence.
        """

    @abstractmethod
    def cancel(self, worker: int) -> None:
        """Forget cached state for ``worker`` (its weights were replaced elsewhere)."""

    @abstractmethod
    def close(self) -> None:
        """Stop all workers. Idempotent."""

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
