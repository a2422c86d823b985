"""Opening an experiment: creating it in an empty store, or picking it up where it stopped."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from firepbt.algorithms.base import Algorithm
from firepbt.engine.population import Population
from firepbt.engine.segments import Segments
from firepbt.engine.settings import RunConfig
from firepbt.space import Space
from firepbt.states import ACTIVE, EVALUATOR, IDLE, MEMBER, PENDING
from firepbt.store.base import EventRecord, LockHolder, SegmentRecord, Store, WorkerRecord


@dataclass
class Opened:
    """What a controller starts from: the generator, the decision round, the algorithm's
    state (``state_saved``: whether the store holds it), the population and the work."""

    rng: np.random.Generator
    tick: int
    state: Any
    state_saved: bool
    population: Population
    segments: Segments


def create(store: Store, clock: Callable[[], float], *, space: Space,
           algorithm: Algorithm, config: RunConfig, task_ref: str | None, init_space: Space,
           initial: Sequence[Mapping[str, Any]] | None, info: Mapping[str, Any]) -> Opened:
    """Record a new experiment and its workers (inside the caller's transaction).

    The members' first segments are the caller's to schedule.
    """
    rng = np.random.default_rng(config.seed)
    # Names the experiment in its checkpoint folder's owner marker (CheckpointDir.claim).
    store.put_state("experiment_id", uuid.uuid4().hex)
    store.create_experiment({
        "task": task_ref, "space": space.to_json(), "algorithm": algorithm.to_config(),
        "config": config.to_json(), "created": clock(), **info,
    })
    # The algorithm owns the initial draw (Latin hypercube or i.i.d., its ``init``).
    drawn = [] if initial else algorithm.initial_hparams(init_space, rng)
    state = algorithm.init_state(algorithm.topology(), rng)
    workers: dict[int, WorkerRecord] = {}
    members = 0
    for wid, role in enumerate(algorithm.topology()):
        if role.role == MEMBER:
            # Given starting points (a grid, a warm start) cycle over the members.
            hp = dict(initial[members % len(initial)]) if initial else drawn[members]
            members += 1
            workers[wid] = WorkerRecord(wid, MEMBER, role.subpop, hp, 0, None)
            store.add_event(EventRecord(0, "init", wid, 0, clock(), new_hparams=hp))
        else:
            workers[wid] = WorkerRecord(wid, EVALUATOR, role.subpop, {}, 0, None, status=IDLE)
    store.put_state("status", "running")
    return Opened(rng, 0, state, False, Population(workers, {}, dirty=workers),
                  Segments(store, {}))


def resume(store: Store, fence: LockHolder, algorithm: Algorithm, config: RunConfig) -> Opened:
    """Pick the stored experiment up where the last controller stopped."""
    rng = np.random.default_rng()
    rng.bit_generator.state = store.get_state("rng")
    saved = store.get_state("algorithm_state")
    # A store from before explicit algorithm state has none: start from ``init_state``.
    state = (algorithm.init_state(algorithm.topology(), rng) if saved is None
             else algorithm.load_state(saved))
    workers = {w.id: w for w in store.workers()}
    curves = {wid: list(store.get_state(f"curve/{wid}", [])) for wid in workers}
    # Segments that were pending or in flight when the last controller stopped re-run from
    # their recorded start checkpoint, under a new lease - and write a new checkpoint id: a
    # worker of the old lease may still write the old one (it must never collide).
    open_: dict[int, SegmentRecord] = {}
    with store.transaction(fence=fence):
        for seg in store.segments(status=PENDING):
            seg = replace(seg, epoch=seg.epoch + 1, to_checkpoint=store.next_id("checkpoint"))
            store.put_segment(seg)
            open_[seg.id] = seg
        if store.get_state("experiment_id") is None:  # created by an older firepbt
            store.put_state("experiment_id", uuid.uuid4().hex)
        store.put_state("status", "running")
    # Not stored: in a synchronous round the workers that finished their segment wait for the
    # rest. They are exactly the active ones without work (a round's decision commits with its
    # last result), so a resumed round is rebuilt from the store.
    busy = {seg.worker for seg in open_.values()}
    waiting = [] if config.mode != "sync" else [
        wid for wid, w in workers.items()
        if w.status == ACTIVE and wid not in busy
        and not (w.role == MEMBER and w.step >= config.steps)
    ]
    return Opened(rng, int(store.get_state("tick", 0)), state, saved is not None,
                  Population(workers, curves), Segments(store, open_, waiting))
