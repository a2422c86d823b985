"""The controller: the event loop that asks the algorithm and carries out its decisions.

Every finished segment is handled in one store transaction: the new checkpoint record, its curve
points, the algorithm's decisions and state, the lineage events, the next segments and the
random generator's state commit together. A controller killed at any point therefore resumes
from the last commit: each decision is applied exactly once, and segments that were in flight
re-run from their recorded start checkpoint.

The parts live in ``firepbt.engine``: the population, the work queue, the effects, the lease
and retention (see docs/design.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.algorithms import Algorithm
from firepbt.algorithms.base import Snapshot
from firepbt.algorithms.effects import Continue, GiveUp
from firepbt.engine import experiment, failures, settings
from firepbt.engine.effects import Effects
from firepbt.engine.lease import Lease, sigterm_as_interrupt
from firepbt.engine.lease import holder_is_dead as _holder_is_dead  # noqa: F401 - for the CLI
from firepbt.engine.retention import Retention
from firepbt.engine.settings import RunConfig, differences, validate_run
from firepbt.errors import LockLost, RunFailed
from firepbt.executors.base import Executor
from firepbt.faults import crash_point
from firepbt.space import Space
from firepbt.states import ACTIVE, MEMBER
from firepbt.storage import open_storage
from firepbt.store.base import CheckpointRecord, MetricRow, SegmentRecord, Store
from firepbt.trainable import Metric, SegmentResult, SegmentSpec

__all__ = ["Controller", "RunConfig", "differences", "validate_run"]

log = logging.getLogger("firepbt")


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
        self.store, self.executor, self.clock, self.on_event = store, executor, clock, on_event
        self._started = False
        self._halted: str | None = None  # why the run must stop after this commit
        self.lease = Lease(store, self.LOCK_STALE_S, self.LOCK_REFRESH_S)
        self.lease.take()
        try:
            existing = store.experiment()
            info = dict(experiment_info or {}) if existing is None else existing
            self.space, self.algorithm, self.config = settings.resolve(
                store.url, existing, task_ref, space, algorithm, config, initial)
            self.metric = Metric.of(info.get("metric"))
            self.retention = Retention(store, open_storage(checkpoint_root),
                                       self.config.keep_checkpoints,
                                       executor.writes_checkpoints, self.lease.holder)
            if existing is not None:
                self._assemble(experiment.resume(store, self.lease.holder, self.algorithm,
                                                 self.config))
                return
            with store.transaction(fence=self.lease.holder):
                self._assemble(experiment.create(
                    store, clock, space=self.space, algorithm=self.algorithm,
                    config=self.config, task_ref=task_ref, init_space=init_space or self.space,
                    initial=initial, info=info))
                for wid, rec in self.population.workers.items():
                    if rec.status == ACTIVE:
                        self.effects.schedule(wid)
                self._persist()
        except BaseException:
            self.lease.release()
            raise

    def _assemble(self, opened: experiment.Opened) -> None:
        self.rng, self.tick, self.state = opened.rng, opened.tick, opened.state
        self._state_changed = not opened.state_saved  # committed with the next decision
        self.population, self.segments = opened.population, opened.segments
        self.effects = Effects(
            store=self.store, population=self.population, segments=self.segments,
            executor=self.executor, retention=self.retention, algorithm=self.algorithm,
            steps=self.config.steps, interval=self.config.interval, clock=self.clock,
        )

    # -- public loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare to run: clean orphaned checkpoint writes, start the executor."""
        self._started = True
        self.retention.sweep()
        self.executor.start()

    def finished(self) -> bool:
        return self.segments.finished()

    def step(self, timeout: float | None = None) -> bool:
        """Dispatch work, wait for one batch of results and handle them.

        Returns False once the run is finished.
        """
        if not self._started:
            self.start()
        self.lease.refresh()
        self._dispatch()
        if not self.finished():
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
        restore = sigterm_as_interrupt()
        try:
            while self.step(timeout=1.0):
                pass
        except KeyboardInterrupt:
            # Every commit is whole, so the store is resumable as it is; the status only tells
            # `firepbt status` that someone stopped the run on purpose.
            self.store.put_state("status", "stopped")
            raise
        except LockLost:
            raise  # the status is the new holder's to write now
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
        self.retention.close()
        self.lease.release()

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(member steps done, member steps in total)."""
        return self.population.progress(self.config.steps)

    def best_per_subpop(self) -> dict[int, float]:
        """The best latest fitness of each sub-population (for progress displays)."""
        return self.population.best_per_subpop()

    # -- internals ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while (seg := self.segments.next_to_dispatch(self.executor.capacity)) is not None:
            path = checksum = None
            if seg.from_checkpoint is not None:
                path, checksum = self.retention.source(seg.from_checkpoint)
            assert seg.to_checkpoint is not None
            self.executor.submit(SegmentSpec(
                worker=seg.worker, segment=seg.id, epoch=seg.epoch, hparams=dict(seg.hparams),
                seed=self.segments.seed(self.config.seed, seg.worker), start_step=seg.start_step,
                steps=seg.end_step - seg.start_step, eval_every=self.config.eval_every or 1,
                load_checkpoint=seg.from_checkpoint, load_path=path, load_checksum=checksum,
                save_checkpoint=seg.to_checkpoint,
                checkpoint_root=self.retention.files.url, metric=self.metric.name,
            ))

    def _handle(self, r: SegmentResult) -> None:
        seg = self.segments.returned(r.segment, r.worker, r.epoch)
        if seg is None:  # stale or void
            if r.checkpoint_path is not None:
                self.retention.drop_uncommitted(r.checkpoint_path)
            return
        crash_point("controller.before_commit")
        with self.store.transaction(fence=self.lease.holder):
            if r.error is not None:
                self._failed_segment(seg, r.error)
            else:
                self._completed_segment(seg, r)
            self._persist()
        crash_point("controller.after_commit")
        if self._halted is not None:
            raise OSError(errno.ENOSPC, f"{self._halted}; the run stopped with its state saved: "
                          "free some space, then resume it")
        if self.retention.due(len(self.population.workers)):
            # Never a current checkpoint, nor the source of pending or in-flight work.
            self.retention.collect(self.population.checkpoints() | self.segments.sources())

    def _completed_segment(self, seg: SegmentRecord, r: SegmentResult) -> None:
        assert r.checkpoint_path is not None and r.checksum is not None
        assert seg.to_checkpoint is not None
        now = self.clock()
        self.store.add_checkpoint(CheckpointRecord(
            seg.to_checkpoint, seg.worker, r.end_step, r.checkpoint_path, r.checksum,
            dict(seg.hparams), seg.from_checkpoint, now,
        ))
        self.retention.add(seg.to_checkpoint, seg.worker, r.end_step, r.checkpoint_path,
                           r.checksum)
        self.store.add_metrics([MetricRow(seg.worker, seg.id, s, v, now, x)
                               for s, v, x in r.named_points()])
        self.segments.complete(seg)
        # The store keeps the task's values; curves hold fitness (higher is better).
        # ``failures`` counts failed attempts since the worker last completed a segment.
        self.population.extend(seg.worker, (None if v is None else self.metric.sign * v
                                            for _, v in r.points),
                               step=r.end_step, checkpoint=seg.to_checkpoint, failures=0)
        self._ready(seg.worker)

    def _failed_segment(self, seg: SegmentRecord, error: str) -> None:
        attempts = seg.attempts + 1
        w = self.population.note(seg.worker,
                                 failures=self.population.workers[seg.worker].failures + 1)
        self.effects.event("failure", w.id, seg.start_step,
                           info={"segment": seg.id, "attempt": attempts, "error": error})
        log.warning("worker %d failed segment %d (attempt %d): %s", w.id, seg.id, attempts,
                    error.strip().splitlines()[-1] if error.strip() else error)
        action = failures.after_failure(w, attempts, error, self.config.max_failures)
        if action in (failures.HALT, failures.RETRY):
            # A halted run keeps the segment for the resume (under a new lease).
            self.segments.retry(seg, attempts, error, queue=action == failures.RETRY)
            if action == failures.HALT:
                self.store.put_state("status", "stopped")
                self._halted = f"worker {w.id} segment {seg.id}: disk full"
            return
        self.segments.fail(seg, attempts, error)
        if action == failures.RETIRE:
            self.effects.retire(w.id, "failed")
        elif action == failures.GIVE_UP:
            self.effects.apply(GiveUp(w.id, error))
        else:  # whom it restarts from is the algorithm's decision, committed with its state
            decisions, state = self.algorithm.replace(
                self._snapshot((w.id,)), self.state, w.id, error, self.rng)
            self._new_state(state)
            for d in decisions:
                self.effects.apply(d)
        # The failed segment may have been the last of a synchronous round: the workers that
        # wait for it must not wait forever (a dead member never pauses the population).
        self._end_round()

    def _ready(self, wid: int) -> None:
        w = self.population.workers[wid]
        finished = w.role == MEMBER and w.step >= self.config.steps
        if finished:
            # No exploit at the very end: the new hparams would never be trained with.
            self.effects.schedule(wid)  # marks it done
        if self.config.mode == "async":
            if not finished:
                self._decide([wid])
            elif self.population.members_done:
                self.effects.retire_evaluators()
            return
        if not finished:
            self.segments.waiting.add(wid)
        self._end_round()

    def _end_round(self) -> None:
        """Synchronous mode: once no work is left in the round, decide for everyone waiting."""
        if self.config.mode == "sync" and (ready := self.segments.round_over()):
            self._decide(ready)

    def _snapshot(self, ready: tuple[int, ...]) -> Snapshot:
        return self.population.snapshot(ready, self.tick, self.space, self.config.interval,
                                        self.config.steps, self.config.eval_every or 1)

    def _decide(self, ready: list[int]) -> None:
        pop = self.population
        idle = [] if pop.members_done else pop.idle_evaluators()
        snapshot = self._snapshot(tuple(ready) + tuple(i for i in idle if i not in ready))
        pop.warn_if_no_valid_fitness(snapshot)
        try:
            decisions, state = self.algorithm.decide(snapshot, self.state, self.rng)
            self._new_state(state)
        except Exception:  # noqa: BLE001 - user code (a custom explore) must not end the run
            error = traceback.format_exc()
            log.warning("the algorithm failed to decide for workers %s; they continue: %s",
                        ready, error.strip().splitlines()[-1])
            for wid in ready:
                self.effects.event("decision_failed", wid, pop.workers[wid].step,
                                   info={"error": error})
            decisions = []
        self.tick += 1
        for d in decisions:
            self.effects.apply(d)
        decided = {d.worker for d in decisions if d.settles}
        for wid in ready:
            if wid not in decided:
                self.effects.apply(Continue(wid))
        crash_point("controller.after_decision")
        if pop.members_done:
            self.effects.retire_evaluators()

    def _new_state(self, state: Any) -> None:
        # Saved only when new (Optax style): a stateless algorithm writes nothing per commit.
        self._state_changed |= state is not self.state
        self.state = state

    def _persist(self) -> None:
        self.population.persist(self.store)
        self.store.put_state("rng", self.rng.bit_generator.state)
        self.store.put_state("tick", self.tick)
        if self._state_changed:
            self.store.put_state("algorithm_state", self.algorithm.save_state(self.state))
            self._state_changed = False

    def _finish(self) -> None:
        # Nothing failed reports success: a run whose members all end without a valid
        # fitness in P1 has no answer, however cleanly its loop ended.
        status = "finished" if 1 in self.population.best_per_subpop() else "failed"
        if self.store.get_state("status") != status:
            with self.store.transaction():
                self.store.put_state("status", status)

