"""Replay a learned schedule: train one fresh model with the best lineage's hyperparameters.

PBT's answer is a *schedule* (hyperparameters over steps), found by a population. Replaying it
on one model from scratch tells whether the schedule alone carries the result, or whether the
population's selection (and its luck) did. :func:`replay` does that with the task recorded in
the store; ``from_ancestors=True`` instead re-runs the exact lineage (the root ancestor's seed,
the same segment boundaries, a checkpoint round trip wherever weights were copied), which on a
deterministic task reproduces the recorded curve - a check of the store and of the task.

:class:`ScheduleLambda` exports the learning-rate part as a ``LambdaLR`` multiplier, so the
schedule can train a model without firepbt.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firepbt.errors import ConfigError
from firepbt.result import Result, SchedulePiece
from firepbt.store import Store, open_store
from firepbt.trainable import Trainable, as_metric, make_trainable_class


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay measured.

    Attributes:
        member: The member whose schedule was replayed.
        seed: The seed of the replayed model.
        metric: Its final metric (higher is better, the task's ``evaluate()``).
        population_metric: The member's recorded final metric (the population's best when
            ``member`` is the best).
        curve: ``(step, metric)`` of the replay, at the run's ``eval_every`` points.
        recorded: ``(step, metric)`` recorded along the member's lineage.
        schedule: The replayed schedule.
        task: The task reference from the store; ``task_file`` the file it was imported from.
    """

    member: int
    seed: int
    from_ancestors: bool
    metric: float | None
    population_metric: float | None
    curve: list[tuple[int, float | None]]
    recorded: list[tuple[int, float | None]]
    schedule: list[SchedulePiece]
    task: str
    task_file: str | None
    applied: list[dict[str, Any]] = field(default_factory=list)
    inspected: Any = None

    def max_curve_difference(self) -> float | None:
        """Largest |replayed - recorded| at steps both have (None when none are comparable)."""
        rec = {s: v for s, v in self.recorded if v is not None}
        diffs = [abs(v - rec[s]) for s, v in self.curve if v is not None and s in rec]
        return max(diffs) if diffs else None


def task_file(ref: str) -> str | None:
    """The file a task reference imports (``file.py:Name``, ``module:Name`` or a builtin)."""
    from firepbt.tasks import BUILTIN

    ref = BUILTIN.get(ref, ref)
    where = ref.rsplit(":", 1)[0]
    if where.endswith(".py"):
        return str(Path(where).resolve())
    spec = importlib.util.find_spec(where)
    return None if spec is None else spec.origin


def worker_seed(run_seed: int, worker: int) -> int:
    """A worker's training seed, derived exactly as the controller derives it."""
    ss = np.random.SeedSequence(run_seed, spawn_key=(worker,))
    return int(ss.generate_state(1)[0])


def _fitness(value: Any, metric_name: str) -> float | None:
    # A task may return a dict of named metrics; the run's metric is the one that counts.
    if isinstance(value, dict):
        value = value.get(metric_name)
    return as_metric(value)


def _train_like_worker(
    t: Trainable, start: int, end: int, eval_every: int, metric_name: str = "fitness"
) -> list[tuple[int, float | None]]:
    """Train ``start..end`` with evaluations where a worker makes them (same RNG use)."""
    points: list[tuple[int, float | None]] = []
    step = start
    while step < end:
        nxt = min(end, (step // eval_every + 1) * eval_every)
        t.train(nxt - step)
        step = nxt
        points.append((step, _fitness(t.evaluate(), metric_name)))
    return points


def replay(
    store: str | Store,
    member: int | None = None,
    seed: int = 0,
    from_ancestors: bool = False,
    log: Callable[[str], None] | None = None,
    inspect: Callable[[Trainable], Any] | None = None,
) -> ReplayOutcome:
    """Train one model with ``member``'s learned schedule and return what it reached.

    Args:
        store: The experiment's store (URL/path or Store).
        member: Whose schedule; default the best member.
        seed: The replayed model's seed (ignored with ``from_ancestors``: the root's is used).
        from_ancestors: Replay the exact lineage instead of a fresh model.
        log: Called with progress lines (e.g. ``print``); it is told which file is imported.
        inspect: Called with the trained model at the end (e.g. to score a test set); its
            answer is ``ReplayOutcome.inspected``.

    Raises:
        ConfigError: The store has no importable task, or no member with a metric.
    """
    st = open_store(store) if isinstance(store, str) else store
    res = Result(st)
    exp = res.experiment
    ref = exp.get("task")
    if not ref:
        raise ConfigError(f"store {st.url!r} recorded no importable task; replay needs one")
    say = log or (lambda _line: None)
    file = task_file(ref)
    say(f"task {ref}: importing {file}")
    from firepbt.importing import load_object

    cls = make_trainable_class(load_object(ref))
    member = res.best if member is None else member
    if member is None:
        raise ConfigError(f"store {st.url!r} has no member with a valid metric to replay")
    cfg = exp["config"]
    eval_every = int(cfg.get("eval_every") or max(1, int(cfg["interval"]) // 10))
    metric = exp.get("metric")
    metric_name = str(metric.get("name", "fitness") if isinstance(metric, dict)
                      else metric or "fitness")
    schedule = res.schedule(member)
    if not schedule:
        raise ConfigError(f"member {member} has no checkpoints yet: nothing to replay")
    chain = _chain(st, member)
    recorded = res.current_curve(member)
    recorded_final = next((v for _, v in reversed(recorded) if v is not None), None)

    t = cls()
    curve: list[tuple[int, float | None]] = []
    if from_ancestors:
        seed = worker_seed(int(cfg["seed"]), chain[0].worker)
        t.setup(dict(chain[0].hparams), seed)
        with tempfile.TemporaryDirectory(prefix="firepbt-replay-") as tmp:
            prev_step, prev_worker = 0, chain[0].worker
            for i, rec in enumerate(chain):
                if rec.worker != prev_worker:
                    # Weights were copied here (exploit/transfer): the worker restored them from
                    # a checkpoint, so the replay goes through one too.
                    path = Path(tmp) / str(i)
                    t.save(path)
                    t = _reloaded(cls, t, path, seed)
                if dict(t.hparams) != dict(rec.hparams):
                    t.set_hparams(dict(rec.hparams))
                curve += _train_like_worker(t, prev_step, rec.step, eval_every, metric_name)
                prev_step, prev_worker = rec.step, rec.worker
    else:
        t.setup(dict(schedule[0].hparams), seed)
        for piece in schedule:
            if dict(t.hparams) != dict(piece.hparams):
                t.set_hparams(dict(piece.hparams))
            curve += _train_like_worker(t, piece.start_step, piece.end_step, eval_every,
                                        metric_name)
    final = next((v for _, v in reversed(curve) if v is not None), None)
    applied = applied_history(st, member)
    inspected = inspect(t) if inspect is not None else None
    _stop(t)
    return ReplayOutcome(member, seed, from_ancestors, final, recorded_final, curve, recorded,
                         schedule, ref, file, applied, inspected)


def _chain(st: Store, member: int) -> list[Any]:
    w = st.worker(member)
    chain = []
    cid = w.checkpoint
    while cid is not None:
        rec = st.checkpoint(cid)
        chain.append(rec)
        cid = rec.parent
    chain.reverse()
    return chain


def _reloaded(cls: type[Trainable], t: Trainable, path: Path, seed: int) -> Trainable:
    fresh = cls()
    fresh.setup(dict(t.hparams), seed)
    fresh.load(path)
    fresh.set_hparams(dict(t.hparams))
    _stop(t)
    return fresh


def _stop(t: Trainable) -> None:
    # A function-form member keeps its training thread paused; end it.
    stop = getattr(t, "_stop_thread", None)
    if callable(stop):
        stop()


def applied_history(st: Store, member: int) -> list[dict[str, Any]]:
    """The applied values an integration recorded in the member's newest checkpoint."""
    from firepbt.integrations.effect import read_applied_file

    cid = st.worker(member).checkpoint
    if cid is None:
        return []
    rec = st.checkpoint(cid)
    try:
        return read_applied_file(rec.path)
    except (OSError, ValueError):
        return []


class ScheduleLambda:
    """A learned lr schedule as a ``LambdaLR`` multiplier (picklable, JSON-able).

    ``ScheduleLambda(...)(i)`` is the lr of training step ``i`` (0-based) divided by
    :attr:`base_lr`, the schedule's first lr. Use :meth:`lr_scheduler` to build the
    ``LambdaLR``, or ``LambdaLR(opt, fn)`` with ``opt``'s lr set to ``fn.base_lr``.

    Args:
        boundaries: Step indices where a new lr starts (after the first), increasing.
        lrs: The lrs, one more than ``boundaries``; ``lrs[k]`` holds from ``boundaries[k-1]``.
    """

    def __init__(self, boundaries: Sequence[int], lrs: Sequence[float]) -> None:
        if len(lrs) != len(boundaries) + 1 or not lrs:
            raise ConfigError(f"lrs={list(lrs)!r}: need exactly len(boundaries) + 1 = "
                              f"{len(boundaries) + 1} values")
        if list(boundaries) != sorted(boundaries):
            raise ConfigError(f"boundaries={list(boundaries)!r}: must be increasing")
        if any(not (math.isfinite(v) and v > 0) for v in lrs):
            raise ConfigError(f"lrs={list(lrs)!r}: every lr must be finite and > 0")
        self.boundaries = [int(b) for b in boundaries]
        self.lrs = [float(v) for v in lrs]
        self.base_lr = self.lrs[0]

    @classmethod
    def from_schedule(cls, schedule: Sequence[SchedulePiece], key: str = "lr") -> ScheduleLambda:
        """From :meth:`firepbt.Result.schedule` pieces; ``key`` names the lr hyperparameter."""
        if not schedule:
            raise ConfigError("schedule is empty: nothing to export")
        missing = [p.start_step for p in schedule if key not in p.hparams]
        if missing:
            raise ConfigError(f"key={key!r}: not a hyperparameter of the pieces starting at "
                              f"steps {missing}")
        boundaries: list[int] = []
        lrs = [float(schedule[0].hparams[key])]
        for p in schedule[1:]:
            lr = float(p.hparams[key])
            if lr != lrs[-1]:
                boundaries.append(p.start_step)
                lrs.append(lr)
        return cls(boundaries, lrs)

    def lr_at(self, step: int) -> float:
        return self.lrs[bisect.bisect_right(self.boundaries, step)]

    def __call__(self, step: int) -> float:
        return self.lr_at(step) / self.base_lr

    def to_json(self) -> str:
        return json.dumps({"boundaries": self.boundaries, "lrs": self.lrs})

    @classmethod
    def from_json(cls, text: str) -> ScheduleLambda:
        data = json.loads(text)
        return cls(data["boundaries"], data["lrs"])

    def lr_scheduler(self, optimizer: Any) -> Any:
        """A ``torch.optim.lr_scheduler.LambdaLR`` following this schedule; step it once per
        training step. Sets every param group's lr to :attr:`base_lr` first."""
        import torch

        for group in optimizer.param_groups:
            group["lr"] = self.base_lr
            group["initial_lr"] = self.base_lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self)


def schedule_rows(schedule: Sequence[SchedulePiece]) -> list[Mapping[str, Any]]:
    """The schedule as plain rows (for printing and JSON)."""
    return [{"start_step": p.start_step, "end_step": p.end_step, "worker": p.worker,
             "hparams": dict(p.hparams)} for p in schedule]
