"""``run()`` and ``resume()``: the library's entry points."""

from __future__ import annotations

import atexit
import hashlib
import inspect
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.algorithms import Algorithm
from firepbt.checkpoints import default_root
from firepbt.controller import Controller, RunConfig, validate_run
from firepbt.errors import ConfigError, RunFailed
from firepbt.executors.base import Executor
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.executors.local import MAIN_GUARD_HINT, WORKER_ENV, LocalExecutor
from firepbt.importing import absolute_ref, source_file
from firepbt.result import Result
from firepbt.space import Space
from firepbt.storage import is_url
from firepbt.store import Store, open_store
from firepbt.trainable import Metric, make_trainable_class

log = logging.getLogger("firepbt")

EXECUTORS = ("process", "inprocess", "ray")


def task_attribute(obj: Any, name: str) -> Any:
    """``obj.NAME``, else the module-level ``NAME`` of the module that defines ``obj``."""
    value = getattr(obj, name, None)
    if value is None:
        value = getattr(sys.modules.get(getattr(obj, "__module__", "") or ""), name, None)
    return value


def task_digest(ref: str | None) -> str | None:
    """sha256 of the file holding the task's code (None for objects without a file)."""
    if ref is None:
        return None
    try:
        path = source_file(ref)
    except (ImportError, ValueError):
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None


def task_ref_of(task: Any) -> str | None:
    """An importable reference for a task object, or the string itself (``file.py`` paths
    made absolute, so that the store resumes from any folder)."""
    if isinstance(task, str):
        return absolute_ref(task)
    module = getattr(task, "__module__", None)
    name = getattr(task, "__qualname__", None)
    if module is None or name is None or "<" in name:
        return None
    if module == "__main__":
        path = inspect.getsourcefile(task)
        return f"{Path(path).resolve()}:{name}" if path else None
    return f"{module}:{name}"


def checkpoint_root_for(store: Store, requested: str | Path | None = None) -> str | Path:
    """Where the experiment's checkpoints live: a folder, or an fsspec URL (``file://``,
    ``s3://``...: a root every worker can reach, see docs/checkpoints.md).

    ``requested`` (``run(checkpoints=...)``) is kept in the store, so every resume finds it.
    By default ``runs/x.db`` keeps its checkpoints in ``runs/x.db.ckpt/``; in-memory stores
    in a temp dir. The folder is named from the store's full file name, so ``sweep.1`` and
    ``sweep.2`` never share one (the controller also refuses a folder another store owns). A
    store whose checkpoints an older firepbt kept in ``runs/x.ckpt/`` (the name without the
    suffix) goes on using that folder as long as its records point there.

    Raises:
        ConfigError: ``requested`` differs from where the store's experiment keeps them.
    """
    kept = store.get_state("checkpoint_root")
    if requested is not None:
        want = str(requested) if is_url(requested) else str(Path(requested).absolute())
        have = kept if kept is not None else (
            None if store.experiment() is None else str(_default_root(store)))
        if have is not None and have != want:
            raise ConfigError(f"checkpoints={want!r}: store {store.url!r} keeps its "
                              f"checkpoints in {have!r}; leave checkpoints= out, or use a "
                              "new store")
        if kept is None:
            store.put_state("checkpoint_root", want)
        return want if is_url(want) else Path(want)
    if kept is not None:
        return kept if is_url(kept) else Path(kept)
    return _default_root(store)


def _default_root(store: Store) -> Path:
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
    folder = tempfile.mkdtemp(prefix="firepbt-ckpt-")
    if url.startswith("memory://"):
        # The store dies with this process; so do its checkpoints (after the caller's last
        # best_checkpoint()), instead of piling up in the temp folder.
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    else:
        # A server store (PostgreSQL) has no file to sit beside: its folder is chosen once
        # and kept in the store, so a resumed controller finds (and collects) what the first
        # wrote.
        store.put_state("checkpoint_root", folder)
    return Path(folder)


def _executor(kind: str | Executor, task: Any, ref: str | None, workers: int,
              timeout: float | None, resources: Mapping[str, Any] | None = None,
              ray_address: str | None = None) -> Executor:
    if isinstance(kind, Executor):
        if resources is not None or ray_address is not None:
            raise ConfigError(
                "resources_per_member and ray_address configure executor='ray'; an Executor "
                "instance takes its own settings"
            )
        return kind
    if kind not in EXECUTORS:
        raise ConfigError(f"executor={kind!r}: must be one of {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: must be an int >= 1")
    if kind == "ray":
        from firepbt.executors.ray import RayExecutor

        # Ray pickles a class or function that cannot be imported by name to the actors.
        return RayExecutor(ref if ref is not None else task, workers=workers,
                           resources=resources, address=ray_address, segment_timeout_s=timeout)
    for name, value in (("resources_per_member", resources), ("ray_address", ray_address)):
        if value is not None:
            raise ConfigError(
                f"{name}={value!r}: only executor='ray' places members by resources; "
                f"executor={kind!r} runs {workers} worker(s) on this machine"
            )
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
        from firepbt.importing import load_object

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
    checkpoints: str | Path | None = None,
    workers: int = 2,
    executor: str | Executor = "process",
    resources_per_member: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    seed: int = 0,
    mode: str = "async",
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    segment_timeout_s: float | None = None,
    initial: Sequence[Mapping[str, Any]] | None = None,
    metric: str | Metric | None = None,
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
        checkpoints: where the checkpoints go: a folder, or an fsspec URL every worker can
            reach (``file:///shared/x``, ``s3://bucket/x`` with s3fs installed; see
            docs/checkpoints.md). Kept in the store for every resume. Default: beside a store
            file (``runs/x.db.ckpt/``), else a temp folder.
        workers: concurrent segments (worker processes for the process executor, actors
            for the Ray executor).
        executor: "process" (spawned workers, one torch thread each), "inprocess"
            (deterministic, sequential), "ray" (Ray actors, see docs/ray.md) or an Executor
            instance.
        resources_per_member: executor="ray" only: what one member's actor asks Ray for,
            e.g. ``{"cpu": 1, "gpu": 0.25}`` (4 members share a GPU), ``"memory"`` in bytes
            or ``"2GiB"``, other keys are Ray custom resources. Default ``{"cpu": 1}``.
        ray_address: executor="ray" only: ``"local"`` (default: a private Ray instance on
            this machine), ``"auto"`` (the cluster this machine belongs to) or
            ``"ray://HOST:10001"``.
        seed: seeds sampling, exploit/explore and every member.
        mode: "async" (decide at each worker's ready point) or "sync" (rounds).
        max_failures: attempts of a segment before its member is replaced from a donor.
        keep_checkpoints: newest checkpoints kept per worker beyond the pinned ones.
        segment_timeout_s: a segment running longer is killed and counts as a failure.
        initial: starting hyperparameters for the members (cycled), instead of sampling.
        metric: what evaluate() measures: a name, or ``Metric(name, mode="min")`` when lower
            is better (default ``task.METRIC``, else "fitness", higher is better). When
            evaluate() returns a dict, this names the fitness among its keys.
        on_event: called with the controller after every handled result (progress).
    """
    from firepbt.algorithms.pbt import PBT

    _refuse_inside_a_worker(task)
    obj = _resolve(task)
    make_trainable_class(obj)  # a class that is no trainable is refused before anything starts
    name = task if isinstance(task, str) else getattr(task, "__qualname__", repr(task))
    defaults = dict(task_attribute(obj, "DEFAULTS") or {})
    space = space if space is not None else task_attribute(obj, "SPACE")
    if space is None:
        raise ConfigError(
            f"task {name!r} has no search space: define SPACE = fp.Space(...) on the task class "
            "or in its module, or pass space= (CLI: --space 'lr=loguniform(1e-4,1e-1)')"
        )
    steps = steps if steps is not None else defaults.get("steps")
    interval = interval if interval is not None else defaults.get("interval")
    if eval_every is None:
        eval_every = defaults.get("eval_every")
    for key, value in (("steps", steps), ("interval", interval)):
        if value is None:
            raise ConfigError(
                f"{key} is not set and task {name!r} has no DEFAULTS[{key!r}]: pass {key}= "
                f"(CLI: --{key}), or define DEFAULTS = {{'steps': ..., 'interval': ...}} on "
                "the task"
            )
    assert steps is not None and interval is not None
    config = RunConfig(
        steps=steps, interval=interval, eval_every=eval_every, seed=seed, mode=mode,
        max_failures=max_failures, keep_checkpoints=keep_checkpoints,
        segment_timeout_s=segment_timeout_s,
    )
    algorithm = algorithm if algorithm is not None else PBT()
    ref = task_ref_of(task)
    # Everything is validated before the store file is created or a worker starts.
    ex = _executor(executor, obj, ref, workers, segment_timeout_s, resources_per_member,
                   ray_address)
    validate_run(space, algorithm, config, initial)
    spec = Metric.of(metric if metric is not None else task_attribute(obj, "METRIC"))
    st = open_store(store) if isinstance(store, str) else store
    if st.experiment() is not None and st.get_state("status") == "finished":
        log.warning("store %s already holds a finished run of this experiment: returning its "
                    "result (use another store to run again)", st.url)
    ctl = Controller(
        store=st, executor=ex, checkpoint_root=checkpoint_root_for(st, checkpoints),
        task_ref=ref,
        space=space, algorithm=algorithm, config=config,
        init_space=getattr(obj, "INIT_SPACE", None), initial=initial, on_event=on_event,
        experiment_info={"task_sha256": task_digest(ref), "task_space": _task_space(obj),
                         "metric": spec.to_json()},
    )
    ctl.run()
    return _outcome(st)


def _refuse_inside_a_worker(task: Any) -> None:
    """A script without the main guard runs fp.run() again in every worker that imports it."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A starting worker re-runs the parent's main script (multiprocessing sets this flag
        # meanwhile): one line, then a quiet exit that the parent turns into one clear error,
        # instead of a traceback from every worker.
        print(f"firepbt: error: {MAIN_GUARD_HINT}", file=sys.stderr)
        raise SystemExit(1)
    if os.environ.get(WORKER_ENV):
        raise ConfigError(f"fp.run() was called while a worker imported the task's file "
                          f"({task_ref_of(task) or task!r}): {MAIN_GUARD_HINT}")


def _outcome(store: Store) -> Result:
    """The run's result; raises RunFailed when no member ended with a valid fitness."""
    result = Result(store)
    failure = result.failure()
    if failure is not None:
        raise RunFailed(failure)
    failures = result.failures()
    if failures:
        members = {f.worker for f in failures}
        log.warning(
            "%d segment(s) of %d worker(s) failed; see the tracebacks with: firepbt status %s "
            "--failures", len(failures), len(members), store.url.removeprefix("sqlite:///"),
        )
    return result


def resume(
    store: str | Store,
    *,
    task: Any = None,
    workers: int = 2,
    executor: str | Executor = "process",
    resources_per_member: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    allow_changed_task: bool = False,
    on_event: Callable[[Controller], None] | None = None,
) -> Result:
    """Continue the experiment held by ``store`` with its stored task, algorithm and settings.

    Resuming imports the task the store names (or ``task``, which then replaces it for this
    and later resumes): only resume stores you trust. The task must have the stored search
    space, and its file must be unchanged since the run started, unless
    ``allow_changed_task``.

    Raises:
        ConfigError: no experiment, no importable task, another space, or an edited task file.
    """
    st = open_store(store) if isinstance(store, str) else store
    exp = st.experiment()
    if exp is None:
        raise ConfigError(f"store {st.url!r} holds no experiment to resume")
    ref = task_ref_of(task) if task is not None else st.get_state("task", exp.get("task"))
    if ref is None and not isinstance(executor, Executor):
        raise ConfigError(f"store {st.url!r} did not record an importable task; pass executor=")
    obj = _resolve(ref) if ref is not None else None
    _check_same_task(st, exp, ref, obj, allow_changed_task)
    if task is not None:
        st.put_state("task", ref)
        st.put_state("task_sha256", task_digest(ref))
        st.put_state("task_space", _task_space(obj))
    timeout = exp["config"].get("segment_timeout_s")
    ex = _executor(executor, obj, ref, workers, timeout, resources_per_member, ray_address)
    ctl = Controller(store=st, executor=ex, checkpoint_root=checkpoint_root_for(st),
                     on_event=on_event)
    ctl.run()
    return _outcome(st)


def _task_space(obj: Any) -> dict[str, Any] | None:
    space = task_attribute(obj, "SPACE") if obj is not None else None
    return space.to_json() if isinstance(space, Space) else None


def _check_same_task(st: Store, exp: Mapping[str, Any], ref: str | None, obj: Any,
                     allow_changed: bool) -> None:
    """Refuse to resume with a task whose space differs, or whose file was edited."""
    from firepbt.controller import differences

    space, was = _task_space(obj), st.get_state("task_space", exp.get("task_space"))
    if space is not None and was is not None and space != was and not allow_changed:
        raise ConfigError(
            f"task {ref!r} has another SPACE than when the run in {st.url!r} started: "
            f"{differences(was, space)}; restore it, or resume with --allow-changed-task "
            "(allow_changed_task=True) to continue with the stored search space"
        )
    stored = st.get_state("task_sha256", exp.get("task_sha256"))
    now = task_digest(ref)
    if stored is not None and now is not None and stored != now and not allow_changed:
        raise ConfigError(
            f"the task's file {source_file(ref) if ref else None} changed since the run "
            f"started (sha256 {stored[:12]}... now {now[:12]}...): the members would resume "
            "with other code; restore the file, or resume with --allow-changed-task "
            "(allow_changed_task=True) to continue anyway"
        )
