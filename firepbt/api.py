"""``run()`` and ``resume()``: the library's entry points."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.algorithms import Algorithm
from firepbt.checkpoints import default_root
from firepbt.controller import Controller, RunConfig, validate_run
from firepbt.errors import ConfigError
from firepbt.executors.base import Executor
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.executors.local import LocalExecutor
from firepbt.result import Result
from firepbt.space import Space
from firepbt.store import Store, open_store

EXECUTORS = ("process", "inprocess")


def task_ref_of(task: Any) -> str | None:
    """An importable reference for a task object, or the string itself."""
    if isinstance(task, str):
        return task
    module = getattr(task, "__module__", None)
    name = getattr(task, "__qualname__", None)
    if module is None or name is None or "<" in name:
        return None
    if module == "__main__":
        path = inspect.getsourcefile(task)
        return f"{path}:{name}" if path else None
    return f"{module}:{name}"


def checkpoint_root_for(store: Store) -> Path:
    """``runs/x.db`` keeps its checkpoints in ``runs/x.db.ckpt/``; in-memory stores in a temp dir.

    The folder is named from the store's full file name, so ``sweep.1`` and ``sweep.2`` never
    share one (the controller also refuses a folder another store owns). A store whose
    checkpoints an older firepbt kept in ``runs/x.ckpt/`` (the name without the suffix) goes on
    using that folder as long as its records point there.
    """
    url = store.url
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        root = default_root(db)
        legacy = db.with_suffix(".ckpt")
        if legacy != root and legacy.is_dir() and not root.exists():
            parents = {Path(c.path).parent for c in store.checkpoints(include_deleted=True)}
            if parents and all(p.resolve() == legacy.resolve() for p in parents):
                return legacy
        return root
    return Path(tempfile.mkdtemp(prefix="firepbt-ckpt-"))


def _executor(kind: str | Executor, task: Any, ref: str | None, workers: int,
              timeout: float | None) -> Executor:
    if isinstance(kind, Executor):
        return kind
    if kind not in EXECUTORS:
        raise ConfigError(f"executor={kind!r}: must be one of {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: must be an int >= 1")
    if kind == "inprocess":
        return InProcessExecutor(task, capacity=workers)
    if ref is None:
        raise ConfigError(
            f"task {task!r}: the process executor needs an importable task (a module-level "
            "class or function, or 'file.py:Name'); use executor='inprocess' otherwise"
        )
    return LocalExecutor(ref, workers=workers, segment_timeout_s=timeout)


def _resolve(task: Any) -> Any:
    if isinstance(task, str):
        from firepbt.tasks.loader import load_object

        return load_object(task)
    return task


def run(
    task: Any,
    space: Space | None = None,
    algorithm: Algorithm | None = None,
    *,
    steps: int | None = None,
    interval: int | None = None,
    eval_every: int | None = None,
    store: str | Store = "runs/firepbt.db",
    workers: int = 1,
    executor: str | Executor = "process",
    seed: int = 0,
    mode: str = "async",
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    segment_timeout_s: float | None = None,
    initial: Sequence[Mapping[str, Any]] | None = None,
    on_event: Callable[[Controller], None] | None = None,
) -> Result:
    """Train a population of ``task`` and return a :class:`Result`.

    Args:
        task: a :class:`Trainable` subclass, a training function ``fn(hparams, checkpoint,
            report)``, or a reference ``"file.py:Name"`` / ``"module:Name"``.
        space: the search space; defaults to ``task.SPACE``.
        algorithm: ``PBT(...)``, ``FirePBT(...)`` or ``RandomSearch(...)``; default ``PBT()``.
        steps, interval, eval_every: training steps per member, steps between ready points,
            steps between curve points (defaults from ``task.DEFAULTS``; eval_every defaults
            to interval // 10).
        store: a store URL/path (``runs/x.db``, ``sqlite:///x.db``, ``memory://``) or a Store.
            A store that already holds this experiment is resumed.
        workers: concurrent segments (worker processes for the process executor).
        executor: "process" (spawned workers, one torch thread each), "inprocess"
            (deterministic, sequential) or an Executor instance.
        seed: seeds sampling, exploit/explore and every member.
        mode: "async" (decide at each worker's ready point) or "sync" (rounds).
        max_failures: attempts of a segment before its member is replaced from a donor.
        keep_checkpoints: newest checkpoints kept per worker beyond the pinned ones.
        segment_timeout_s: a segment running longer is killed and counts as a failure.
        initial: starting hyperparameters for the members (cycled), instead of sampling.
        on_event: called with the controller after every handled result (progress).
    """
    from firepbt.algorithms.pbt import PBT

    obj = _resolve(task)
    defaults = dict(getattr(obj, "DEFAULTS", {}))
    space = space if space is not None else getattr(obj, "SPACE", None)
    if space is None:
        raise ConfigError(f"task {task!r} has no SPACE attribute: pass space=")
    steps = steps if steps is not None else defaults.get("steps")
    interval = interval if interval is not None else defaults.get("interval")
    if eval_every is None:
        eval_every = defaults.get("eval_every")
    if steps is None or interval is None:
        raise ConfigError(f"task {task!r} has no DEFAULTS for steps/interval: pass them")
    config = RunConfig(
        steps=steps, interval=interval, eval_every=eval_every, seed=seed, mode=mode,
        max_failures=max_failures, keep_checkpoints=keep_checkpoints,
        segment_timeout_s=segment_timeout_s,
    )
    algorithm = algorithm if algorithm is not None else PBT()
    ref = task_ref_of(task)
    # Everything is validated before the store file is created or a worker starts.
    ex = _executor(executor, obj, ref, workers, segment_timeout_s)
    validate_run(space, algorithm, config, initial)
    st = open_store(store) if isinstance(store, str) else store
    ctl = Controller(
        store=st, executor=ex, checkpoint_root=checkpoint_root_for(st), task_ref=ref,
        space=space, algorithm=algorithm, config=config,
        init_space=getattr(obj, "INIT_SPACE", None), initial=initial, on_event=on_event,
    )
    ctl.run()
    return Result(st)


def resume(
    store: str | Store,
    *,
    workers: int = 1,
    executor: str | Executor = "process",
    on_event: Callable[[Controller], None] | None = None,
) -> Result:
    """Continue the experiment held by ``store`` with its stored task, algorithm and settings."""
    st = open_store(store) if isinstance(store, str) else store
    exp = st.experiment()
    if exp is None:
        raise ConfigError(f"store {st.url!r} holds no experiment to resume")
    ref = exp.get("task")
    if ref is None and not isinstance(executor, Executor):
        raise ConfigError(f"store {st.url!r} did not record an importable task; pass executor=")
    obj = _resolve(ref) if ref is not None else None
    timeout = exp["config"].get("segment_timeout_s")
    ex = _executor(executor, obj, ref, workers, timeout)
    ctl = Controller(store=st, executor=ex, checkpoint_root=checkpoint_root_for(st),
                     on_event=on_event)
    ctl.run()
    return Result(st)
