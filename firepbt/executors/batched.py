"""Batched training: many members of one small model trained together in one process.

A small network leaves a CPU core mostly idle on per-call overhead: one member's step is a few
tiny matrix products. Stacking the weights of K members and multiplying them with one batched
product (``torch.bmm``) does K members' work for little more than the cost of one. This module
holds the executor; the task protocol lives in :mod:`firepbt.batched_trainable`:

* :class:`~firepbt.batched_trainable.BatchedTrainable` - the task protocol: K *slots*, each
  one member with its own weights, optimiser state, data stream and hyperparameters, trained
  in lockstep.
* :class:`BatchedExecutor` - an :class:`~firepbt.executors.base.Executor` that collects the
  submitted segments and runs those with the same step pattern as one batch, restoring each
  member into a slot (from the slot itself when it already holds that checkpoint, else from
  the verified checkpoint), recording curve points and writing one checkpoint per member
  exactly as :mod:`firepbt.executors.worker` does.

Members never interact inside a batch (the batched task must make each slot's arithmetic
depend on that slot alone), so a member's curve and checkpoint do not depend on which other
members shared its batch, up to float rounding.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from firepbt.batched_trainable import BatchedTrainable
from firepbt.errors import ConfigError
from firepbt.executors.base import Executor
from firepbt.executors.worker import checkpoint_tags
from firepbt.faults import crash_point
from firepbt.storage import CheckpointStorage, open_storage, root_of
from firepbt.trainable import SegmentResult, SegmentSpec, as_metric


@dataclass
class _Cached:
    slot: int
    checkpoint: int  # the checkpoint this slot's in-memory state equals


def _pattern(spec: SegmentSpec) -> tuple[int, int, int]:
    """Segments with the same pattern train and evaluate at the same offsets, so they batch.

    Curve points fall on multiples of ``eval_every`` (worker.py), so the phase of the start
    step matters as well as the length.
    """
    return spec.steps, spec.eval_every, spec.start_step % spec.eval_every


def _chunks(start: int, steps: int, eval_every: int) -> list[int]:
    """Absolute steps of the curve points of a segment (as in worker.py)."""
    points, step, end = [], start, start + steps
    while step < end:
        step = min(end, (step // eval_every + 1) * eval_every)
        points.append(step)
    return points


class BatchedExecutor(Executor):
    """Runs queued segments of a :class:`BatchedTrainable` task in batches, inside ``poll``.

    Each ``poll`` runs one batch: the oldest queued segment and every other queued segment
    with the same length and curve-point phase. With ``mode="sync"`` and ``capacity`` at least
    the population, every round is one batch of the whole population.

    The in-memory slots of the last batch are the cache: a member whose next segment starts
    from the checkpoint its slot holds continues without reloading; any other restores from
    its verified checkpoint. ``timeout_s`` of a segment is not enforced (as in-process).

    Args:
        task_cls: a BatchedTrainable subclass, or a ``module:Name`` / ``file.py:Name`` reference.
        capacity: how many segments the controller may keep in flight (the largest batch).
    """

    def __init__(self, task_cls: type[BatchedTrainable] | str, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity={capacity!r}: must be an int >= 1")
        if isinstance(task_cls, str):
            from firepbt.importing import load_object

            task_cls = load_object(task_cls)
        if not (isinstance(task_cls, type) and issubclass(task_cls, BatchedTrainable)):
            raise ConfigError(f"task_cls={task_cls!r}: must be a BatchedTrainable subclass")
        self.task_cls = task_cls
        self._capacity = capacity
        self._queue: list[SegmentSpec] = []
        self._task: BatchedTrainable | None = None
        self._cache: dict[int, _Cached] = {}
        self._dirs: dict[str, CheckpointStorage] = {}
        self.batch_sizes: list[int] = []  # one entry per batch run, for tests and benchmarks

    @property
    def capacity(self) -> int:
        return self._capacity

    def start(self) -> None:
        if self._task is None:
            self._task = self.task_cls()

    def submit(self, spec: SegmentSpec) -> None:
        self._require_free_slot(len(self._queue))
        self._queue.append(spec)

    def cancel(self, worker: int) -> None:
        self._cache.pop(worker, None)

    def close(self) -> None:
        self._queue.clear()
        self._cache.clear()
        self._task = None

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        self.start()
        if not self._queue:
            return []
        key = _pattern(self._queue[0])
        batch = [s for s in self._queue if _pattern(s) == key]
        self._queue = [s for s in self._queue if _pattern(s) != key]
        self.batch_sizes.append(len(batch))
        return self._run(batch)

    # -- one batch -------------------------------------------------------------------------------

    def _dir(self, root: str, create: bool = True) -> CheckpointStorage:
        if root not in self._dirs:
            # Reading never creates a folder: a missing one is an error naming it.
            self._dirs[root] = open_storage(root, create=create)
        return self._dirs[root]

    def _keep(self, batch: Sequence[SegmentSpec]) -> list[int | None]:
        """Which old slot each segment continues from, or None where it must restore."""
        keep: list[int | None] = []
        claimed: set[int] = set()
        for spec in batch:
            cached = self._cache.get(spec.worker)
            # A stale duplicate of a worker's segment must not share its slot: claim it once.
            if (cached is not None and cached.checkpoint == spec.load_checkpoint
                    and cached.slot not in claimed):
                claimed.add(cached.slot)
                keep.append(cached.slot)
            else:
                keep.append(None)
        return keep

    def _run(self, batch: list[SegmentSpec]) -> list[SegmentResult]:
        t0 = time.perf_counter()
        task = self._task
        assert task is not None
        errors: dict[int, str] = {}
        hparams = [dict(s.hparams) for s in batch]
        seeds = [s.seed for s in batch]
        keep = self._keep(batch)
        # Every slot is about to change, so the old slot numbers mean nothing any more.
        self._cache.clear()
        try:
            if task.size == 0:
                task.setup(hparams, seeds)
            elif keep != list(range(task.size)):
                task.reslot(hparams, seeds, keep)
            for j, spec in enumerate(batch):
                if keep[j] is not None:
                    if task.hparams[j] != hparams[j]:
                        task.set_hparams(j, hparams[j])
                    continue
                if spec.load_path is None:
                    continue
                try:
                    assert spec.load_checksum is not None
                    # A verified local copy: never load a truncated or corrupted checkpoint.
                    local = self._dir(root_of(spec.load_path), create=False).fetch(
                        spec.load_path, spec.load_checksum
                    )
                    task.load(j, local)
                    task.set_hparams(j, hparams[j])
                except Exception:  # noqa: BLE001 - one bad checkpoint fails one member only
                    errors[j] = traceback.format_exc()
            # Slots that failed to restore still train (dropping them would cost a reslot);
            # their results are discarded.
            points: list[list[tuple[int, float | None]]] = [[] for _ in batch]
            step = batch[0].start_step
            for at in _chunks(batch[0].start_step, batch[0].steps, batch[0].eval_every):
                task.train(at - step)
                offset, step = at - batch[0].start_step, at
                crash_point("worker.mid_segment")
                metrics = np.asarray(task.evaluate(), dtype=float)
                if metrics.shape != (len(batch),):
                    raise RuntimeError(
                        f"{type(task).__name__}.evaluate() returned shape {metrics.shape}, "
                        f"expected ({len(batch)},)"
                    )
                for j, spec in enumerate(batch):
                    points[j].append((spec.start_step + offset, as_metric(metrics[j])))
        except Exception:  # noqa: BLE001 - user code failures are results, not crashes
            text = traceback.format_exc()
            # The batch's state is unknown now: rebuild from checkpoints next time.
            task.hparams, task.seeds = [], []
            return [self._failed(s, errors.get(j, text), t0) for j, s in enumerate(batch)]
        results = []
        for j, spec in enumerate(batch):
            if j in errors:
                results.append(self._failed(spec, errors[j], t0))
                continue
            try:
                results.append(self._save(task, j, spec, points[j], t0))
            except Exception:  # noqa: BLE001 - a failed write fails that member only
                results.append(self._failed(spec, traceback.format_exc(), t0))
                continue
            self._cache[spec.worker] = _Cached(j, spec.save_checkpoint)
        return results

    def _save(
        self,
        task: BatchedTrainable,
        j: int,
        spec: SegmentSpec,
        points: list[tuple[int, float | None]],
        t0: float,
    ) -> SegmentResult:
        crash_point("worker.before_save")
        end = spec.start_step + spec.steps
        path, checksum = self._dir(spec.checkpoint_root).write(
            spec.save_checkpoint, lambda p: task.save(j, p), checkpoint_tags(spec)
        )
        return SegmentResult(
            spec.worker, spec.segment, spec.epoch, tuple(points), end, path, checksum,
            wall_s=time.perf_counter() - t0,
        )

    @staticmethod
    def _failed(spec: SegmentSpec, error: str, t0: float) -> SegmentResult:
        return SegmentResult(
            spec.worker, spec.segment, spec.epoch, (), spec.start_step, None, None,
            error=error, wall_s=time.perf_counter() - t0,
        )
