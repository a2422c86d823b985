"""In-process executor: segments run one at a time, in submission order (deterministic)."""

from __future__ import annotations

from collections import deque
from typing import Any

from firepbt.executors.base import Executor
from firepbt.executors.worker import WorkerState, resolve_task
from firepbt.trainable import SegmentResult, SegmentSpec


class InProcessExecutor(Executor):
    """Runs each submitted segment inside ``poll`` in FIFO order.

    ``capacity`` only shapes how many segments the controller keeps in flight, so that an
    asynchronous run can be replayed exactly.
    """

    def __init__(self, task: Any, capacity: int = 1) -> None:
        self._task = task
        self._capacity = capacity
        self._queue: deque[SegmentSpec] = deque()
        self._state: WorkerState | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    def start(self) -> None:
        if self._state is None:
            self._state = WorkerState(resolve_task(self._task))

    def submit(self, spec: SegmentSpec) -> None:
        self._require_free_slot(len(self._queue))
        self._queue.append(spec)

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        self.start()
        assert self._state is not None
        if not self._queue:
            return []
        return [self._state.run(self._queue.popleft())]

    def cancel(self, worker: int) -> None:
        if self._state is not None:
            self._state.forget(worker)

    def close(self) -> None:
        self._queue.clear()
        self._state = None
