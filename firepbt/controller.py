"""The controller: the event loop that asks the algorithm and carries out its decisions.

Every finished segment is handled in one store transaction: the new checkpoint record, its curve
points, the algorithm's decisions, the lineage events, the next segments and the random
generator's state commit together. A controller killed at any point therefore resumes from the
last commit: each decision is applied exactly once, and segments that were in flight re-run
from their recorded start checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from firepbt.algorithms import Algorithm, algorithm_from_config
from firepbt.algorithms.base import (
    Continue,
    Decision,
    Exploit,
    FitnessTable,
    SetFitness,
    Snapshot,
    StartEvaluator,
    StopEvaluator,
    Transfer,
    WorkerView,
    require,
)
from firepbt.checkpoints import CheckpointDir, collectable, store_identity
from firepbt.errors import ConfigError, ExperimentLocked, RunFailed
from firepbt.executors.base import Executor
from firepbt.faults import crash_point
from firepbt.space import Space, explore
from firepbt.store.base import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DONE,
    EVALUATOR,
    FAILED,
    IDLE,
    MEMBER,
    PENDING,
    SEG_FAILED,
    CheckpointRecord,
    EventRecord,
    LockHolder,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
)
from firepbt.trainable import Metric, SegmentResult, SegmentSpec

log = logging.getLogger("firepbt")

MODES = ("async", "sync")


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run, validated at construction (stored with the experiment)."""

    steps: int
    interval: int
    eval_every: int | None = None  # default: interval // 10 (at least 1)
    seed: int = 0
    mode: str = "async"
    max_failures: int = 3
    keep_checkpoints: int = 2
    segment_timeout_s: float | None = None

    def __post_init__(self) -> None:
        require(
            _is_int(self.steps) and self.steps >= 1, f"steps={self.steps!r}: must be an int >= 1"
        )
        require(
            _is_int(self.interval) and 1 <= self.interval <= self.steps,
            f"interval={self.interval!r}: must be an int in [1, steps={self.steps}]",
        )
        if self.eval_every is None:
            object.__setattr__(self, "eval_every", max(1, self.interval // 10))
        require(
            _is_int(self.eval_every) and 1 <= self.eval_every <= self.interval,  # type: ignore[operator]
            f"eval_every={self.eval_every!r}: must be an int in [1, interval={self.interval}]",
        )
        require(_is_int(self.seed), f"seed={self.seed!r}: must be an int")
        require(self.mode in MODES, f"mode={self.mode!r}: must be one of {', '.join(MODES)}")
        require(
            _is_int(self.max_failures) and self.max_failures >= 1,
            f"max_failures={self.max_failures!r}: must be an int >= 1",
        )
        require(
            _is_int(self.keep_checkpoints) and self.keep_checkpoints >= 0,
            f"keep_checkpoints={self.keep_checkpoints!r}: must be an int >= 0",
        )
        require(
            self.segment_timeout_s is None or self.segment_timeout_s > 0,
            f"segment_timeout_s={self.segment_timeout_s!r}: must be > 0 or None",
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def validate_run(
    space: Space,
    algorithm: Algorithm,
    config: RunConfig,
    initial: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Checks that need the space, the algorithm and the settings together (ConfigError)."""
    for i, hp in enumerate(initial or ()):
        try:
            space.validate(hp)
        except ConfigError as exc:
            raise ConfigError(f"initial[{i}]: {exc}") from None
    algorithm.validate(config.interval, config.eval_every or 1, config.steps)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _now_holder() -> LockHolder:
    return LockHolder(os.getpid(), socket.gethostname(), time.time(), uuid.uuid4().hex)


def _sigterm_as_interrupt() -> Callable[[], None]:
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


def _holder_is_dead(holder: LockHolder) -> bool:
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


class Controller:
    """Runs one experiment on a store; ``step()`` handles one event, ``run()`` loops.

    A store that already holds the experiment is resumed: the algorithm, space and settings come
    from the store (passing different ones raises ``ConfigError``, never a silent fallback).
    """

    LOCK_STALE_S = 60.0
    LOCK_REFRESH_S = 10.0

    def __init__(
        self,
        *,
        store: Store,
        executor: Executor,
        checkpoint_root: str | Path,
        task_ref: str | None = None,
        space: Space | None = None,
        algorithm: Algorithm | None = None,
        config: RunConfig | None = None,
        init_space: Space | None = None,
        initial: Sequence[Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Controller], None] | None = None,
        experiment_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.ckpt = CheckpointDir(checkpoint_root)
        self.clock = clock
        self.on_event = on_event
        self.holder = _now_holder()
        self._last_refresh = 0.0
        self._take_lock()
        try:
            existing = store.experiment()
            if existing is None:
                if space is None or algorithm is None or config is None:
                    raise ConfigError(
                        f"store {store.url!r} holds no experiment: space, algorithm and "
                        "config are needed to start one"
                    )
                self._create(task_ref, space, algorithm, config, init_space or space, initial,
                             experiment_info or {})
            else:
                self._load(existing, task_ref, space, algorithm, config)
        except BaseException:
            store.release_lock(self.holder)
            raise

    # -- set-up ------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        """Take the experiment lock; a lock left by a killed controller on this host is stale.

        Raises:
            ExperimentLocked: a live controller holds the lock (the message names its pid,
                host and since-time).
        """
        try:
            self.store.acquire_lock(self.holder, self.LOCK_STALE_S, time.time())
            return
        except ExperimentLocked:
            current = self.store.lock_holder()
            if current is None or not _holder_is_dead(current[0]):
                raise
        other, heartbeat = current
        # Waiting LOCK_STALE_S after a kill would stall every resume; a pid that no longer
        # exists on this host cannot come back. Count the lock stale at just under its age,
        # so that a lock a live controller took meanwhile (younger) still refuses us.
        age = max(time.time() - heartbeat, 0.0)
        stale = max(age / 2, 1e-3)
        log.warning("taking over the experiment lock of pid %d on %s: that process is gone",
                    other.pid, other.host)
        self.store.acquire_lock(self.holder, stale, max(time.time(), heartbeat + 2 * stale))

    def _create(
        self,
        task_ref: str | None,
        space: Space,
        algorithm: Algorithm,
        config: RunConfig,
        init_space: Space,
        initial: Sequence[Mapping[str, Any]] | None,
        experiment_info: Mapping[str, Any],
    ) -> None:
        validate_run(space, algorithm, config, initial)
        self.space, self.algorithm, self.config = space, algorithm, config
        self.metric = Metric.of(experiment_info.get("metric"))
        self.rng = np.random.default_rng(config.seed)
        self.tick = 0
        self.workers: dict[int, WorkerRecord] = {}
        self.curves: dict[int, list[float | None]] = {}
        self.segs: dict[int, SegmentRecord] = {}
        self._dirty: set[int] = set()
        with self.store.transaction(fence=self.holder):
            # Names the experiment in its checkpoint folder's owner marker (CheckpointDir.claim).
            self.store.put_state("experiment_id", uuid.uuid4().hex)
            self.store.create_experiment(
                {
                    "task": task_ref,
                    "space": space.to_json(),
                    "algorithm": algorithm.to_config(),
                    "config": config.to_json(),
                    "created": self.clock(),
                    **experiment_info,
                }
            )
            members = 0
            # The algorithm owns the initial draw (Latin hypercube or i.i.d., its ``init``).
            drawn = [] if initial else algorithm.initial_hparams(init_space, self.rng)
            for wid, role in enumerate(algorithm.topology()):
                if role.role == MEMBER:
                    # Given starting points (a grid, a warm start) cycle over the members.
                    hp = (dict(initial[members % len(initial)]) if initial
                          else drawn[members])
                    members += 1
                    rec = WorkerRecord(wid, MEMBER, role.subpop, hp, 0, None)
                    self._event("init", wid, 0, new_hparams=hp)
                else:
                    rec = WorkerRecord(wid, EVALUATOR, role.subpop, {}, 0, None, status=IDLE)
                self.workers[wid] = rec
                self.curves[wid] = []
                self._dirty.add(wid)
            for wid, rec in self.workers.items():
                if rec.status == ACTIVE:
                    self._schedule(wid)
            self.store.put_state("status", "running")
            self._persist()

    def _load(
        self,
        existing: Mapping[str, Any],
        task_ref: str | None,
        space: Space | None,
        algorithm: Algorithm | None,
        config: RunConfig | None,
    ) -> None:
        stored_alg = algorithm_from_config(existing["algorithm"])
        stored_cfg = RunConfig(**existing["config"])
        stored_space = Space.from_json(existing["space"])
        for given, stored, what in (
            (algorithm, stored_alg, "algorithm"),
            (config, stored_cfg, "run settings"),
        ):
            if given is not None and _as_json(given) != _as_json(stored):
                raise ConfigError(
                    f"store {self.store.url!r} holds an experiment with different {what}: "
                    f"{differences(_as_json(stored), _as_json(given))}; resume without "
                    "passing them, or use a new store"
                )
        if space is not None and space.to_json() != stored_space.to_json():
            raise ConfigError(
                f"store {self.store.url!r} holds an experiment with a different search space: "
                f"{differences(stored_space.to_json(), space.to_json())}; use a new store"
            )
        if task_ref is not None and existing.get("task") not in (None, task_ref):
            raise ConfigError(
                f"store {self.store.url!r} was created for task {existing.get('task')!r}, "
                f"not {task_ref!r}"
            )
        self.space, self.algorithm, self.config = stored_space, stored_alg, stored_cfg
        self.metric = Metric.of(existing.get("metric"))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = self.store.get_state("rng")
        self.tick = int(self.store.get_state("tick", 0))
        self.workers = {w.id: w for w in self.store.workers()}
        self.curves = {wid: list(self.store.get_state(f"curve/{wid}", [])) for wid in self.workers}
        self._dirty = set()
        # Segments that were pending or in flight when the last controller stopped re-run
        # from their recorded start checkpoint, under a new lease - and write a new checkpoint
        # id: a worker of the old lease may still write the old one (it must never collide).
        self.segs = {}
        with self.store.transaction(fence=self.holder):
            for seg in self.store.segments(status=PENDING):
                seg = replace(seg, epoch=seg.epoch + 1,
                              to_checkpoint=self.store.next_id("checkpoint"))
                self.store.put_segment(seg)
                self.segs[seg.id] = seg
            if self.store.get_state("experiment_id") is None:  # created by an older firepbt
                self.store.put_state("experiment_id", uuid.uuid4().hex)
            self.store.put_state("status", "running")

    # -- public loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare to run: clean orphaned checkpoint writes, start the executor."""
        live = self.store.checkpoints()
        # The sweep below deletes what this store does not know: the folder must be ours.
        self.ckpt.claim(store_identity(self.store.url), str(self.store.get_state("experiment_id")),
                        {c.id: c.checksum for c in live})
        known = {c.id for c in live}
        self.ckpt.clean_orphans()
        for cid in self.ckpt.ids():
            # Written by a segment whose result was never committed, or collected by a
            # controller killed between marking the record deleted and removing the files.
            if cid not in known:
                self.ckpt.delete(self.ckpt.path_for(cid))
        self.pending: deque[int] = deque(sorted(self.segs))
        self._seg_of: dict[int, int] = {seg.worker: sid for sid, seg in self.segs.items()}
        self._new_checkpoints = 0
        self._halted: str | None = None
        self._warned_invalid: set[int] = set()
        self._seeds: dict[int, int] = {}
        self.inflight: set[int] = set()  # submitted to the executor, result not yet handled
        self._cancelled: set[int] = set()  # in flight, but cancelled: their result is void
        self.waiting: set[int] = set()
        if self.config.mode == "sync":
            # Not stored: in a synchronous round the workers that finished their segment wait
            # for the rest. They are exactly the active ones without work (a round's decision
            # commits with its last result), so a resumed round is rebuilt from the store.
            self.waiting = {
                wid for wid, w in self.workers.items()
                if w.status == ACTIVE and wid not in self._seg_of
                and not (w.role == MEMBER and w.step >= self.config.steps)
            }
        self._views: dict[int, WorkerView] = {}
        self._tables: dict[int, tuple[dict[int, int], np.ndarray, np.ndarray]] = {}
        for wid in self.workers:
            self._refresh_view(wid)
        self._open_members = sum(
            1 for w in self.workers.values() if w.role == MEMBER and w.status not in (DONE, FAILED)
        )
        self._build_tables()
        self._evaluators = sorted(w.id for w in self.workers.values() if w.role == EVALUATOR)
        # Live (not yet collected) checkpoints: id -> (writer, step, path, checksum), so that
        # dispatching and collecting never read checkpoint records back from the store.
        self._live = {c.id: (c.worker, c.step, c.path, c.checksum) for c in live}
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firepbt-gc")
        self.executor.start()

    def finished(self) -> bool:
        return not self.pending and not self.inflight

    def step(self, timeout: float | None = None) -> bool:
        """Dispatch work, wait for one batch of results and handle them.

        Returns False once the run is finished.
        """
        if not hasattr(self, "pending"):
            self.start()
        self._refresh_lock()
        self._dispatch()
        if self.finished():
            self._finish()
            return False
        for result in self.executor.poll(timeout):
            self._handle(result)
            if self.on_event is not None:
                self.on_event(self)
        self._dispatch()
        if self.finished():
            self._finish()
            return False
        return True

    def run(self) -> None:
        """Loop over ``step()`` until done. Ctrl-C or SIGTERM leaves a resumable store."""
        restore = _sigterm_as_interrupt()
        try:
            while self.step(timeout=1.0):
                pass
        except KeyboardInterrupt:
            # Every commit is whole, so the store is resumable as it is; the status only tells
            # `firepbt status` that someone stopped the run on purpose.
            self.store.put_state("status", "stopped")
            raise
        except Exception as exc:
            # The store stays resumable, but must not keep saying "running" (a deliberate stop,
            # such as a full disk, has set its own status already).
            with contextlib.suppress(Exception):
                if self.store.get_state("status") == "running":
                    self.store.put_state("status", "failed" if isinstance(exc, RunFailed)
                                         else "crashed")
                    self.store.put_state("error", traceback.format_exc())
            raise
        finally:
            try:
                self.close()
            finally:
                restore()

    def close(self) -> None:
        self.executor.close()
        if hasattr(self, "_deleter"):
            self._deleter.shutdown(wait=True)
        self.store.release_lock(self.holder)

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(member steps done, member steps in total)."""
        members = [w for w in self.workers.values() if w.role == MEMBER]
        done = sum(min(w.step, self.config.steps) for w in members)
        return done, len(members) * self.config.steps

    def best_per_subpop(self) -> dict[int, float]:
        """The best latest fitness of each sub-population (for progress displays)."""
        best: dict[int, float] = {}
        for w in self.workers.values():
            if w.role == MEMBER and w.status != FAILED:
                f = self._views[w.id].last_metric()
                if f is not None and (w.subpop not in best or f > best[w.subpop]):
                    best[w.subpop] = f
        return best

    def best(self) -> tuple[int, float] | None:
        """The P1 member with the best latest metric, and its fitness (the metric, negated
        when lower is better)."""
        best: tuple[int, float] | None = None
        for w in self.workers.values():
            if w.role == MEMBER and w.subpop == 1 and w.status != FAILED:
                f = self._views[w.id].last_metric()
                if f is not None and (best is None or f > best[1]):
                    best = (w.id, f)
        return best

    # -- internals ---------------------------------------------------------------------------

    def _refresh_lock(self) -> None:
        now = time.time()
        if now - self._last_refresh >= self.LOCK_REFRESH_S:
            self.store.refresh_lock(self.holder, now)
            self._last_refresh = now

    def _seed(self, wid: int) -> int:
        """Each worker's seed: derived from the run's seed and its id, stable across resumes."""
        if wid not in self._seeds:
            ss = np.random.SeedSequence(self.config.seed, spawn_key=(wid,))
            self._seeds[wid] = int(ss.generate_state(1)[0])
        return self._seeds[wid]

    def _schedule(self, wid: int) -> None:
        """Create the next segment of ``wid`` (pending until dispatched)."""
        w = self.workers[wid]
        if w.step >= self.config.steps:
            if w.role == MEMBER:
                self.workers[wid] = replace(w, status=DONE)
                self._touch(wid)
            else:
                # An evaluator trains in its parent's steps and never past the run's end: a
                # transfer of its weights would give a member more steps than the budget.
                self._apply(StopEvaluator(wid, "end"))
            return
        end = min(w.step + self.config.interval, self.config.steps)
        seg = SegmentRecord(
            id=self.store.next_id("segment"),
            worker=wid,
            epoch=0,
            start_step=w.step,
            end_step=end,
            from_checkpoint=w.checkpoint,
            hparams=dict(w.hparams),
            to_checkpoint=self.store.next_id("checkpoint"),
        )
        self.store.put_segment(seg)
        self.segs[seg.id] = seg
        if hasattr(self, "pending"):
            self.pending.append(seg.id)
            self._seg_of[wid] = seg.id

    def _cancel_segments(self, wid: int) -> None:
        """Drop pending and in-flight work of ``wid`` (its weights were replaced)."""
        sid = self._seg_of.pop(wid, None)
        if sid is not None:
            self.store.put_segment(replace(self.segs.pop(sid), status=CANCELLED))
            if sid in self.pending:
                self.pending.remove(sid)
            elif sid in self.inflight:
                # The executor still runs it and holds its slot until the result comes back:
                # it stays in flight (so dispatch never submits beyond capacity), and its result,
                # finding no segment, is dropped quietly as expected.
                self._cancelled.add(sid)
        self.waiting.discard(wid)

    def _dispatch(self) -> None:
        while self.pending and len(self.inflight) < self.executor.capacity:
            sid = self.pending.popleft()
            seg = self.segs[sid]
            path = checksum = None
            if seg.from_checkpoint is not None:
                if seg.from_checkpoint in self._live:
                    _, _, path, checksum = self._live[seg.from_checkpoint]
                else:  # collected: the worker's verify will report it missing
                    rec = self.store.checkpoint(seg.from_checkpoint)
                    path, checksum = rec.path, rec.checksum
            assert seg.to_checkpoint is not None
            spec = SegmentSpec(
                worker=seg.worker,
                segment=seg.id,
                epoch=seg.epoch,
                hparams=dict(seg.hparams),
                seed=self._seed(seg.worker),
                start_step=seg.start_step,
                steps=seg.end_step - seg.start_step,
                eval_every=self.config.eval_every or 1,
                load_checkpoint=seg.from_checkpoint,
                load_path=path,
                load_checksum=checksum,
                save_checkpoint=seg.to_checkpoint,
                checkpoint_root=str(self.ckpt.root),
                metric=self.metric.name,
            )
            self.inflight.add(sid)
            self.executor.submit(spec)

    def _handle(self, r: SegmentResult) -> None:
        seg = self.segs.get(r.segment)
        self.inflight.discard(r.segment)
        if seg is None or seg.epoch != r.epoch:
            if r.segment in self._cancelled:
                self._cancelled.discard(r.segment)
                log.debug("dropped the result of cancelled segment %d (worker %d)",
                          r.segment, r.worker)
            else:
                log.warning(
                    "rejected a stale result for worker %d segment %d (epoch %d)",
                    r.worker, r.segment, r.epoch,
                )
            if r.checkpoint_path is not None and not self._recorded(r.checkpoint_path):
                # Written under the old lease and never committed: nobody can refer to it. A
                # duplicate delivery of a committed result must keep its checkpoint, though.
                self.ckpt.delete(r.checkpoint_path)
            return
        crash_point("controller.before_commit")
        with self.store.transaction(fence=self.holder):
            if r.error is not None:
                self._failed_segment(seg, r.error)
            else:
                self._completed_segment(seg, r)
            self._persist()
        crash_point("controller.after_commit")
        if self._halted is not None:
            raise OSError(errno.ENOSPC, f"{self._halted}; the run stopped with its state saved: "
                          "free some space, then resume it")
        # Amortised: collect once a quarter of the population has written new checkpoints.
        if self._new_checkpoints > len(self.workers) // 4:
            self._new_checkpoints = 0
            self._collect_garbage()

    def _recorded(self, path: str) -> bool:
        """Whether ``path`` is the directory of a checkpoint the store knows."""
        name = Path(path).name
        if not (name.startswith("c") and name[1:].isdigit()):
            return False
        try:
            self.store.checkpoint(int(name[1:]))
        except KeyError:
            return False
        return True

    def _completed_segment(self, seg: SegmentRecord, r: SegmentResult) -> None:
        assert r.checkpoint_path is not None and r.checksum is not None
        assert seg.to_checkpoint is not None
        now = self.clock()
        self.store.add_checkpoint(
            CheckpointRecord(
                seg.to_checkpoint, seg.worker, r.end_step, r.checkpoint_path, r.checksum,
                dict(seg.hparams), seg.from_checkpoint, now,
            )
        )
        self._live[seg.to_checkpoint] = (seg.worker, r.end_step, r.checkpoint_path, r.checksum)
        self.store.add_metrics(
            [MetricRow(seg.worker, seg.id, s, v, now, x) for s, v, x in r.named_points()]
        )
        self.store.put_segment(replace(seg, status=COMPLETED))
        del self.segs[seg.id]
        del self._seg_of[seg.worker]
        self._new_checkpoints += 1
        w = self.workers[seg.worker]
        # ``failures`` counts failed attempts since the worker last completed a segment.
        self.workers[w.id] = replace(w, step=r.end_step, checkpoint=seg.to_checkpoint,
                                     failures=0)
        # The store keeps the task's values; curves hold fitness (higher is better).
        sign = self.metric.sign
        self.curves[w.id].extend(None if v is None else sign * v for _, v in r.points)
        self._touch(w.id)
        self._ready(w.id)

    def _failed_segment(self, seg: SegmentRecord, error: str) -> None:
        w = self.workers[seg.worker]
        attempts = seg.attempts + 1
        self.workers[w.id] = w = replace(w, failures=w.failures + 1)
        self._dirty.add(w.id)
        self._event("failure", w.id, seg.start_step,
                    info={"segment": seg.id, "attempt": attempts, "error": error})
        log.warning("worker %d failed segment %d (attempt %d): %s", w.id, seg.id, attempts,
                    error.strip().splitlines()[-1] if error.strip() else error)
        if _disk_full(error):
            # Retrying cannot help while the disk is full, and replacing the member from a donor
            # would only spread the failure over the population: keep the segment for the
            # resume (under a new lease) and stop the run after this commit.
            self.store.put_segment(replace(
                seg, epoch=seg.epoch + 1, attempts=attempts, error=error,
                to_checkpoint=self.store.next_id("checkpoint"),
            ))
            self.store.put_state("status", "stopped")
            self._halted = f"worker {w.id} segment {seg.id}: disk full"
            return
        if attempts < self.config.max_failures:
            # Transient: re-run the same segment from its start checkpoint under a new lease.
            retry = replace(
                seg, epoch=seg.epoch + 1, attempts=attempts, error=error,
                to_checkpoint=self.store.next_id("checkpoint"),
            )
            self.store.put_segment(retry)
            self.segs[seg.id] = retry
            self.pending.append(seg.id)
            return
        self.store.put_segment(replace(seg, status=SEG_FAILED, attempts=attempts, error=error))
        del self.segs[seg.id]
        del self._seg_of[seg.worker]
        if w.role == EVALUATOR:
            self._apply(StopEvaluator(w.id, "failed"))
        elif w.failures >= 2 * self.config.max_failures:
            # It failed again after a replacement from a donor: replacing it once more would
            # loop for ever on a task that cannot train it. It stays failed.
            self._give_up(w, error)
        else:
            self._replace_failed(w, error)
        # The failed segment may have been the last of a synchronous round: the workers that
        # wait for it must not wait forever (a dead member never pauses the population).
        self._end_round()

    def _replace_failed(self, w: WorkerRecord, error: str) -> None:
        """Persistent failure: mark failed, then restart the member from the best peer."""
        peers = [
            p for p in self.workers.values()
            if p.role == MEMBER and p.subpop == w.subpop and p.id != w.id
            and p.checkpoint is not None and p.status in (ACTIVE, DONE)
            and self._views[p.id].last_metric() is not None
        ]
        if not peers:
            self._give_up(w, error)
            return
        donor = max(peers, key=lambda p: (self._views[p.id].last_metric(), -p.id))
        new_hp, ops = explore(self.space, donor.hparams, self.rng,
                              self.algorithm.explore_config())
        assert donor.checkpoint is not None
        self._overwrite(w.id, donor.checkpoint, new_hp, curve=[])
        self._event(
            "replace", w.id, donor.step, donor=donor.id, donor_checkpoint=donor.checkpoint,
            old_hparams=w.hparams, new_hparams=new_hp, info={"ops": ops, "error": error},
        )
        self._schedule(w.id)

    def _give_up(self, w: WorkerRecord, error: str) -> None:
        self.workers[w.id] = replace(w, status=FAILED)
        self._touch(w.id)
        self._event("failed", w.id, w.step, info={"error": error})

    def _ready(self, wid: int) -> None:
        w = self.workers[wid]
        finished = w.role == MEMBER and w.step >= self.config.steps
        if finished:
            # No exploit at the very end: the new hparams would never be trained with.
            self._schedule(wid)  # marks it done
        if self.config.mode == "async":
            if not finished:
                self._decide([wid])
            elif self._members_done():
                self._stop_all_evaluators()
            return
        if not finished:
            self.waiting.add(wid)
        self._end_round()

    def _end_round(self) -> None:
        """Synchronous mode: once no work is left in the round, decide for everyone waiting."""
        if self.config.mode == "sync" and not self.segs and self.waiting:
            ready = sorted(self.waiting)
            self.waiting.clear()
            self._decide(ready)

    def _decide(self, ready: list[int]) -> None:
        idle = [] if self._members_done() else [
            e for e in self._evaluators if self.workers[e].status == IDLE
        ]
        snapshot = Snapshot(
            workers=MappingProxyType(self._views),
            ready=tuple(ready) + tuple(i for i in idle if i not in ready),
            tick=self.tick,
            space=self.space,
            interval=self.config.interval,
            total_steps=self.config.steps,
            tables=self._snapshot_tables(),
        )
        for k, table in sorted((snapshot.tables or {}).items()):
            # NaN-like fitness never donates, so nobody can exploit: say why, once per run,
            # but only once every member has reported (not at a healthy run's start).
            if (k not in self._warned_invalid and len(table.values)
                    and np.isnan(table.values).all()
                    and all(self.workers[int(i)].step > 0 for i in table.ids)):
                self._warned_invalid.add(k)
                log.warning("sub-population %d: no member has a valid fitness (NaN, inf, "
                            "None or non-numeric); no exploit until one has", k)
        try:
            decisions = self.algorithm.decide(snapshot, self.rng)
        except Exception:  # noqa: BLE001 - user code (a custom explore) must not end the run
            error = traceback.format_exc()
            log.warning("the algorithm failed to decide for workers %s; they continue: %s",
                        ready, error.strip().splitlines()[-1])
            for wid in ready:
                self._event("decision_failed", wid, self.workers[wid].step,
                            info={"error": error})
            decisions = []
        self.tick += 1
        decided: set[int] = set()
        for d in decisions:
            self._apply(d)
            if not isinstance(d, SetFitness):
                decided.add(d.worker)
        for wid in ready:
            if wid not in decided:
                self._apply(Continue(wid))
        crash_point("controller.after_decision")
        if self._members_done():
            self._stop_all_evaluators()

    def _members_done(self) -> bool:
        return self._open_members == 0

    def _stop_all_evaluators(self) -> None:
        for e in self._evaluators:
            if self.workers[e].status == ACTIVE:
                self._apply(StopEvaluator(e, "end"))

    def _apply(self, d: Decision) -> None:
        w = self.workers[d.worker]
        if isinstance(d, Continue):
            if w.status == ACTIVE and w.id not in self._seg_of:
                self._schedule(w.id)
        elif isinstance(d, Exploit):
            donor_ckpt = self.store.checkpoint(d.donor_checkpoint)
            if donor_ckpt.deleted or (
                self.executor.writes_checkpoints and not Path(donor_ckpt.path).exists()
            ):
                # A pinned version should never be gone; if it is, skip rather than load garbage.
                log.warning("worker %d: exploit of worker %d's checkpoint %d skipped: it is gone",
                            w.id, d.donor, d.donor_checkpoint)
                self._event("exploit_skipped", w.id, w.step, donor=d.donor,
                            donor_checkpoint=d.donor_checkpoint,
                            info={"why": "donor checkpoint missing"})
                self._apply(Continue(w.id))
                return
            crash_point("exploit.copy")
            self._overwrite(w.id, d.donor_checkpoint, d.new_hparams, curve=[])
            self._event(
                "exploit", w.id, donor_ckpt.step, donor=d.donor,
                donor_checkpoint=d.donor_checkpoint, old_hparams=w.hparams,
                new_hparams=d.new_hparams,
                info={"ops": dict(d.ops), "fitness": _num(d.fitness),
                      "donor_fitness": _num(d.donor_fitness)},
            )
            self._schedule(w.id)
        elif isinstance(d, StartEvaluator):
            parent_ckpt = self.store.checkpoint(d.parent_checkpoint)
            crash_point("evaluator.start")
            info = {
                **dict(d.info),
                "parent": d.parent,
                "child": d.child,
                "parent_overwrites": self.workers[d.parent].overwrites,
                "child_overwrites": self.workers[d.child].overwrites,
                "start_step": parent_ckpt.step,
                "started_tick": self.tick,
            }
            self.workers[w.id] = replace(
                w, status=ACTIVE, hparams=dict(d.hparams), subpop=self.workers[d.parent].subpop,
                info=info,
            )
            self._overwrite(w.id, d.parent_checkpoint, d.hparams, curve=[])
            parent = self.workers[d.parent]
            self.workers[d.parent] = replace(
                parent, info={**parent.info, "last_evaluated": self.tick}
            )
            self._touch(d.parent)
            self._event("start_evaluator", w.id, parent_ckpt.step, donor=d.parent,
                        donor_checkpoint=d.parent_checkpoint, new_hparams=d.hparams,
                        info={"child": d.child})
            self._schedule(w.id)
        elif isinstance(d, StopEvaluator):
            self._cancel_segments(w.id)
            self.workers[w.id] = replace(w, status=IDLE)
            self._touch(w.id)
            self._event("stop_evaluator", w.id, w.step,
                        info={"reason": d.reason, "p_value": _num(d.p_value),
                              "delta": _num(d.delta), **dict(w.info)})
        elif isinstance(d, Transfer):
            child = self.workers[d.child]
            self._cancel_segments(child.id)
            self.executor.cancel(child.id)
            self._overwrite(child.id, d.checkpoint, child.hparams, curve=list(self.curves[w.id]))
            self._event(
                "transfer", child.id, self.store.checkpoint(d.checkpoint).step, donor=d.parent,
                donor_checkpoint=d.checkpoint, old_hparams=child.hparams,
                new_hparams=child.hparams,
                info={"evaluator": w.id, "p_value": d.p_value, "delta": d.delta},
            )
            if child.status in (ACTIVE, DONE):
                self.workers[child.id] = replace(self.workers[child.id], status=ACTIVE)
                self._schedule(child.id)
            self._apply(StopEvaluator(w.id, "success", d.p_value, d.delta))
        elif isinstance(d, SetFitness):
            self.workers[w.id] = replace(w, info={**w.info, "fire_fitness": _num(d.value)})
            self._touch(w.id)
        else:  # pragma: no cover - a new decision type without a handler is a bug
            raise TypeError(f"unknown decision {d!r}")

    def _overwrite(
        self, wid: int, checkpoint: int, hparams: Mapping[str, Any], curve: list[float | None]
    ) -> None:
        """Point ``wid`` at an immutable checkpoint (by reference: no bytes copied)."""
        rec = self.store.checkpoint(checkpoint)
        w = self.workers[wid]
        self.workers[wid] = replace(
            w, checkpoint=checkpoint, step=rec.step, hparams=dict(hparams),
            overwrites=w.overwrites + 1,
        )
        self.curves[wid] = curve
        self._touch(wid)

    def _event(self, kind: str, worker: int, step: int, **kw: Any) -> None:
        self.store.add_event(EventRecord(0, kind, worker, step, self.clock(), **kw))

    def _touch(self, wid: int) -> None:
        self._dirty.add(wid)
        if hasattr(self, "_views"):
            self._count_open(wid)
            self._refresh_view(wid)
            self._update_table(wid)

    def _count_open(self, wid: int) -> None:
        """Keep the number of members still training without a pass over the population."""
        w = self.workers[wid]
        was_open = self._views[wid].status not in (DONE, FAILED)
        is_open = w.status not in (DONE, FAILED)
        if w.role == MEMBER and was_open != is_open:
            self._open_members += 1 if is_open else -1

    def _refresh_view(self, wid: int) -> None:
        w = self.workers[wid]
        self._views[wid] = WorkerView(
            w.id, w.role, w.subpop, MappingProxyType(dict(w.hparams)), w.step, w.checkpoint,
            tuple(self.curves[wid]), w.overwrites, w.status, MappingProxyType(dict(w.info)),
        )

    def _build_tables(self) -> None:
        by_k: dict[int, list[int]] = {}
        for w in self.workers.values():
            if w.role == MEMBER:
                by_k.setdefault(w.subpop, []).append(w.id)
        for k, ids in by_k.items():
            ids.sort()
            index = {wid: i for i, wid in enumerate(ids)}
            vals = np.full(len(ids), np.nan)
            self._tables[k] = (index, np.asarray(ids, dtype=np.int64), vals)
            for wid in ids:
                self._update_table(wid)

    def _update_table(self, wid: int) -> None:
        w = self.workers[wid]
        if w.role != MEMBER or w.subpop not in self._tables:
            return
        index, _, vals = self._tables[w.subpop]
        f = self._views[wid].last_metric() if w.status in (ACTIVE, DONE) else None
        vals[index[wid]] = np.nan if f is None else f

    def _snapshot_tables(self) -> dict[int, FitnessTable]:
        # A failed member keeps its slot with NaN fitness: it ranks last and is never a donor.
        # Read-only views, not copies: the algorithm sees them only during decide().
        out = {}
        for k, (_, ids, vals) in self._tables.items():
            view = vals.view()
            view.flags.writeable = False
            out[k] = FitnessTable(ids, view)
        return out

    def _persist(self) -> None:
        for wid in sorted(self._dirty):
            self.store.put_worker(self.workers[wid])
            self.store.put_state(f"curve/{wid}", self.curves[wid])
        self._dirty.clear()
        self.store.put_state("rng", self.rng.bit_generator.state)
        self.store.put_state("tick", self.tick)

    def _collect_garbage(self) -> None:
        """Delete checkpoints nobody can need: never a current or pending-source one."""
        pinned = {w.checkpoint for w in self.workers.values() if w.checkpoint is not None}
        pinned |= {s.from_checkpoint for s in self.segs.values() if s.from_checkpoint is not None}
        live = [(cid, writer, step) for cid, (writer, step, _, _) in self._live.items()]
        doomed = collectable(live, pinned, self.config.keep_checkpoints)
        if not doomed:
            return
        with self.store.transaction(fence=self.holder):
            for cid in doomed:
                self.store.mark_checkpoint_deleted(cid)
        crash_point("controller.after_gc_commit")
        # Files go after the records: a crash in between leaves orphan files that the next
        # start removes, never a record pointing at missing files. Deleting is slow on some
        # file systems, so a background thread does it off the controller's critical path.
        for cid in doomed:
            del self._live[cid]
        if self.executor.writes_checkpoints:
            self._deleter.submit(self._delete_files, [self.ckpt.path_for(c) for c in doomed])

    def _delete_files(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                self.ckpt.delete(path)
            except OSError as exc:  # left for the orphan sweep at the next start
                log.warning("could not delete checkpoint %s: %s", path, exc)

    def _finish(self) -> None:
        # Nothing failed reports success: a run whose members all end without a valid
        # fitness has no answer, however cleanly its loop ended.
        status = "finished" if self.best() is not None else "failed"
        if self.store.get_state("status") != status:
            with self.store.transaction():
                self.store.put_state("status", status)


def differences(stored: Any, given: Any, prefix: str = "") -> str:
    """The keys whose values differ, as 'key: stored X, given Y' (nested keys dotted)."""
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        parts = [
            differences(stored.get(k), given.get(k), f"{prefix}{k}.")
            for k in sorted(set(stored) | set(given), key=str)
            if stored.get(k) != given.get(k)
        ]
        return "; ".join(p for p in parts if p)
    return f"{prefix.rstrip('.')}: stored {stored!r}, given {given!r}"


def _disk_full(error: str) -> bool:
    """Whether a worker's traceback ends in ENOSPC (no space left on the device)."""
    lines = error.strip().splitlines()
    return bool(lines) and (f"[Errno {errno.ENOSPC}]" in lines[-1]
                            or "No space left on device" in lines[-1])


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _as_json(obj: Any) -> Any:
    if hasattr(obj, "to_config"):
        return obj.to_config()
    return obj.to_json()

