"""Worker-side code shared by every executor: run one segment of a trainable.

A worker keeps the trainables it trained last in memory (keyed by member/evaluator id and the
checkpoint their in-memory state equals), so a member that just continues does not reload its
checkpoint; anything else restores from the verified checkpoint files.
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from firepbt.faults import crash_point
from firepbt.storage import CheckpointStorage, open_storage, root_of
from firepbt.trainable import (
    SegmentResult,
    SegmentSpec,
    Trainable,
    as_metric,
    other_metrics,
    pick_metric,
)


@dataclass
class _Cached:
    trainable: Trainable
    checkpoint: int  # the checkpoint its in-memory state equals


class WorkerState:
    """Trainables cached by one worker (LRU, bounded so memory stays flat)."""

    def __init__(self, trainable_cls: type[Trainable], max_cached: int = 64) -> None:
        self.trainable_cls = trainable_cls
        self.max_cached = max_cached
        self.cache: OrderedDict[int, _Cached] = OrderedDict()
        # One storage per checkpoint root (a directory or an fsspec URL), opened once.
        self._dirs: dict[str, CheckpointStorage] = {}

    def forget(self, worker: int) -> None:
        self.cache.pop(worker, None)

    def _dir(self, root: str, create: bool = True) -> CheckpointStorage:
        if root not in self._dirs:
            # Reading never creates a folder: a missing one is an error naming it.
            self._dirs[root] = open_storage(root, create=create)
        return self._dirs[root]

    def _trainable_for(self, spec: SegmentSpec) -> Trainable:
        cached = self.cache.pop(spec.worker, None)
        if cached is not None and cached.checkpoint == spec.load_checkpoint:
            t = cached.trainable
            if dict(t.hparams) != dict(spec.hparams):
                t.set_hparams(dict(spec.hparams))
            return t
        t = self.trainable_cls()
        t.setup(dict(spec.hparams), spec.seed)
        t.hparams = dict(spec.hparams) if not t.hparams else t.hparams
        t.seed = spec.seed
        if spec.load_path is not None:
            assert spec.load_checksum is not None
            # A verified local copy (the checkpoint itself where the root is a local folder):
            # never load a truncated or corrupted checkpoint. The load path's own root, not
            # this segment's: a store may point at checkpoints an older layout put elsewhere.
            source = self._dir(root_of(spec.load_path), create=False)
            t.load(source.fetch(spec.load_path, spec.load_checksum))
            t.set_hparams(dict(spec.hparams))
        return t

    def run(self, spec: SegmentSpec) -> SegmentResult:
        """Train one segment; user exceptions come back as ``error`` with the traceback."""
        t0 = time.perf_counter()
        try:
            t = self._trainable_for(spec)
            points: list[tuple[int, float | None]] = []
            extra: list[dict[str, float | None]] = []  # the other named metrics, per point
            step, end = spec.start_step, spec.start_step + spec.steps
            while step < end:
                # Curve points fall on multiples of eval_every and at the segment's end.
                nxt = min(end, (step // spec.eval_every + 1) * spec.eval_every)
                t.train(nxt - step)
                step = nxt
                crash_point("worker.mid_segment")
                measured = t.evaluate()
                points.append((step, as_metric(pick_metric(measured, spec.metric))))
                extra.append(other_metrics(measured, spec.metric))
            crash_point("worker.before_save")
            path, checksum = self._dir(spec.checkpoint_root).write(
                spec.save_checkpoint, t.save, checkpoint_tags(spec)
            )
        except Exception:  # noqa: BLE001 - user code failures are results, not crashes
            self.forget(spec.worker)
            return SegmentResult(
                spec.worker, spec.segment, spec.epoch, (), spec.start_step, None, None,
                error=traceback.format_exc(), wall_s=time.perf_counter() - t0,
            )
        self.cache[spec.worker] = _Cached(t, spec.save_checkpoint)
        while len(self.cache) > self.max_cached:
            self.cache.popitem(last=False)
        return SegmentResult(
            spec.worker, spec.segment, spec.epoch, tuple(points), end, path, checksum,
            wall_s=time.perf_counter() - t0, extra=tuple(extra) if any(extra) else (),
        )


def checkpoint_tags(spec: SegmentSpec) -> dict[str, Any]:
    """Tags a segment's checkpoint carries in its manifest (invariant 4 reads them back)."""
    return {
        "worker": spec.worker,
        "segment": spec.segment,
        "step": spec.start_step + spec.steps,
        "hparams": dict(spec.hparams),
        "parent": spec.load_checkpoint,
    }


def resolve_task(task: Any) -> type[Trainable]:
    """A Trainable class from a class, a function or a ``file.py:Name`` reference."""
    from firepbt.importing import load_object
    from firepbt.trainable import make_trainable_class

    if isinstance(task, str):
        task = load_object(task)
    return make_trainable_class(task)
