"""A simulated executor: no training, no files; results computed from a pure model.

It lets the controller and whole algorithm runs (FIRE evaluators included) be exercised in
milliseconds and measures the controller's own cost (``firepbt bench controller``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from firepbt.executors.base import Executor
from firepbt.trainable import SegmentResult, SegmentSpec

# metric(hparams, state, step) -> (new state, metric); ``state`` is a float carried by checkpoint.
Model = Callable[[Mapping[str, Any], float, int], tuple[float, float]]


def lr_model(hparams: Mapping[str, Any], state: float, step: int) -> tuple[float, float]:
    """A cheap deterministic learning curve: progress grows with lr, saturating near 1."""
    lr = float(hparams.get("lr", 0.1))
    state = state + lr * (1.0 - state) * 0.01
    return state, state


class SimulatedExecutor(Executor):
    """Runs segments of a pure ``model`` in-process, FIFO; checkpoints live in memory."""

    writes_checkpoints = False

    def __init__(self, model: Model = lr_model, capacity: int = 1) -> None:
        self.model = model
        self._capacity = capacity
        self._queue: deque[SegmentSpec] = deque()
        self._states: dict[int, float] = {}  # checkpoint id -> model state

    @property
    def capacity(self) -> int:
        return self._capacity

    def start(self) -> None:
        pass

    def submit(self, spec: SegmentSpec) -> None:
        self._require_free_slot(len(self._queue))
        self._queue.append(spec)

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        if not self._queue:
            return []
        spec = self._queue.popleft()
        state = self._states.get(spec.load_checkpoint, 0.0) if spec.load_checkpoint else 0.0
        points = []
        for step in range(spec.start_step + 1, spec.start_step + spec.steps + 1):
            state, metric = self.model(spec.hparams, state, step)
            if step % spec.eval_every == 0 or step == spec.start_step + spec.steps:
                points.append((step, metric))
        self._states[spec.save_checkpoint] = state
        # Only a name (no files): a URL root must not be mangled by Path.
        path = f"{spec.checkpoint_root}/c{spec.save_checkpoint:09d}"
        return [SegmentResult(spec.worker, spec.segment, spec.epoch, tuple(points),
                              spec.start_step + spec.steps, str(path), "simulated")]

    def cancel(self, worker: int) -> None:
        pass

    def close(self) -> None:
        self._queue.clear()
