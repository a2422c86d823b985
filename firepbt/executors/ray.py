"""Ray actors as workers: the same population on a Ray cluster, placed by per-member resources.

Each worker slot is one Ray actor holding a :class:`~firepbt.executors.worker.WorkerState`, so
a member that continues on the actor that trained it last reloads nothing, exactly as with
local processes. Actors live as long as the executor and are reused across segments; an actor
asks Ray for the resources of one member (``num_cpus``, ``num_gpus`` - fractions let several
members share one GPU - ``memory`` and custom resources), and Ray places it on any node that has
them and sets ``CUDA_VISIBLE_DEVICES`` for its GPU share.

Failures are results, never a stuck run: an actor that dies (SIGKILL, out of memory, its node
lost) fails its segment, which the controller retries and then replaces, and the slot gets a
new actor. An actor that Ray cannot place or start within ``start_timeout_s`` fails its segment
the same way.

Checkpoints stay where the controller says (``SegmentSpec.checkpoint_root``): every actor must
reach that folder, which on one machine it does, and on a cluster means shared storage.

Ray is an optional extra (``pip install 'firepbt[ray]'``): nothing here imports it until an
executor starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firepbt.errors import CheckpointError, ConfigError, TaskLoadError
from firepbt.executors.base import Executor
from firepbt.executors.local import STARTUP_GRACE_S, WORKER_ENV
from firepbt.storage import discard_unreported
from firepbt.trainable import SegmentResult, SegmentSpec

log = logging.getLogger("firepbt")

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: The object store of a Ray instance this executor starts itself. Segments move only small
#: results through it (weights go through the checkpoint folder), and Ray's default of 30 % of
#: the machine's memory would reserve gigabytes for nothing.
OBJECT_STORE_BYTES = 100 * 2**20

#: How long close() and a failure wait for a killed actor to be gone before removing the
#: checkpoint it may have been writing.
KILL_WAIT_S = 5.0

#: Actors that die before they load the task, in a row with none ever loading it: the task
#: cannot load on this cluster (every new actor would die alike), not bad luck with a node.
EARLY_DEATHS_LIMIT = 3

#: Ray's switch between a single-node instance on loopback (0) and one that other nodes may
#: join, listening on every interface (1, Linux's default).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: Keys of ``resources_per_member`` with a meaning of their own; any other key is a Ray custom
#: resource (a label such as ``"accelerator_a100": 1`` that nodes advertise).
BUILTIN_RESOURCES = ("cpu", "gpu", "memory")
_MEMORY_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
                 "g": 10**9, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
                 "t": 10**12, "tb": 10**12, "tib": 2**40}


def validate_resources(resources: Mapping[str, Any] | None) -> dict[str, float]:
    """Check ``resources_per_member`` and return it with every value a number.

    Keys: ``cpu`` and ``gpu`` (fractions allowed, so 4 members can share one GPU; a quantity
    above 1 must be whole, as Ray requires), ``memory`` in bytes (an int, or a string with a
    unit: ``"2GiB"``, ``"500MB"``), and any other name as a Ray custom resource (same rule as
    ``gpu``). ``cpu`` defaults to 1, as in Ray Tune.

    Raises:
        ConfigError: naming the key, the value and the rule it breaks.
    """
    if resources is None:
        resources = {}
    if not isinstance(resources, Mapping):
        raise ConfigError(
            f"resources_per_member={resources!r}: must be a dict such as "
            "{'cpu': 1, 'gpu': 0.25}"
        )
    out: dict[str, float] = {"cpu": 1.0}
    for key, value in resources.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"resources_per_member key {key!r}: must be a non-empty string")
        alias = {"num_cpus": "cpu", "num_gpus": "gpu", "CPU": "cpu", "GPU": "gpu"}.get(key)
        if alias is not None:
            raise ConfigError(f"resources_per_member[{key!r}]: write {alias!r} instead")
        if key == "memory":
            out[key] = float(_memory_bytes(value))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value
        ):
            raise ConfigError(f"resources_per_member[{key!r}]={value!r}: must be a number")
        if value < 0:
            raise ConfigError(f"resources_per_member[{key!r}]={value!r}: must be >= 0")
        if value > 1 and value != int(value):
            raise ConfigError(
                f"resources_per_member[{key!r}]={value!r}: a quantity above 1 must be a whole "
                "number (Ray shares a fraction of one device, never 1.5 devices)"
            )
        if value != round(value, 4):
            raise ConfigError(
                f"resources_per_member[{key!r}]={value!r}: at most 4 decimals (Ray's "
                "resolution is 0.0001)"
            )
        out[key] = float(value)
    return out


def _memory_bytes(value: Any) -> int:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _MEMORY_UNITS:
            raise ConfigError(
                f"resources_per_member['memory']={value!r}: must be bytes, or a number with a "
                "unit such as '512MiB', '2GiB' or '4GB'"
            )
        value = float(m.group(1)) * _MEMORY_UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"resources_per_member['memory']={value!r}: must be a number of bytes")
    if value < 0:
        raise ConfigError(f"resources_per_member['memory']={value!r}: must be >= 0")
    return int(value)


def parse_resources(text: str) -> dict[str, Any]:
    """``'cpu=1,gpu=0.25,memory=2GiB'`` (the CLI's ``--resources``) as a dict, unvalidated
    beyond its syntax (:func:`validate_resources` checks the values)."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(
                f"--resources {text!r}: {part.strip()!r} is not KEY=VALUE (e.g. "
                "'cpu=1,gpu=0.25,memory=2GiB')"
            )
        if key in out:
            raise ConfigError(f"--resources {text!r}: {key!r} is given twice")
        try:
            out[key] = float(value) if key != "memory" else value
        except ValueError:
            raise ConfigError(
                f"--resources {text!r}: {key}={value!r} must be a number"
            ) from None
    return out


def ray_options(resources: Mapping[str, float]) -> dict[str, Any]:
    """Ray actor options for one member's (validated) resources."""
    opts: dict[str, Any] = {"num_cpus": resources.get("cpu", 1.0),
                            "num_gpus": resources.get("gpu", 0.0)}
    if resources.get("memory"):
        opts["memory"] = int(resources["memory"])
    custom = {k: v for k, v in resources.items() if k not in BUILTIN_RESOURCES}
    if custom:
        opts["resources"] = custom
    return opts


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"executor='ray' needs Ray, which is not installed ({exc}): pip install "
            "'firepbt[ray]'"
        ) from None
    return ray


class SegmentActor:
    """One worker slot in a Ray worker process (wrapped by ``ray.remote`` at start).

    The constructor never raises: a task that cannot load is reported by :meth:`ready`, once,
    instead of as an actor death that looks like a lost node.
    """

    def __init__(self, task: Any, threads: int, env: Mapping[str, str]) -> None:
        # The controller's FIREPBT_* settings (fault injection) travel here; a Ray worker
        # inherits the raylet's environment, not the controller's.
        os.environ.update(env)
        for var in _THREAD_ENV:
            os.environ[var] = str(threads)
        os.environ[WORKER_ENV] = "1"  # fp.run() refuses to start inside a worker
        from firepbt.executors.worker import WorkerState, resolve_task

        self.state: WorkerState | None = None
        self.fatal: str | None = None
        try:
            self.state = WorkerState(resolve_task(task))
        except BaseException:  # noqa: BLE001 - reported by ready(), once
            self.fatal = traceback.format_exc()
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)

    def ready(self) -> tuple[str | None, int, str]:
        """(the traceback of a task that failed to load, or None; pid; Ray node id)."""
        import ray

        return self.fatal, os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, spec: SegmentSpec) -> SegmentResult:
        assert self.state is not None, "the executor never submits to an actor that failed"
        return self.state.run(spec)

    def forget(self, worker: int) -> None:
        if self.state is not None:
            self.state.forget(worker)


@dataclass
class _Slot:
    actor: Any
    probe: Any  # the ObjectRef of actor.ready(), until it resolves
    created: float
    ready: bool = False
    pid: int | None = None
    node: str | None = None
    spec: SegmentSpec | None = None
    ref: Any = None  # the ObjectRef of actor.run(spec)
    started: float = 0.0

    def deadline(self, timeout_s: float | None, start_timeout_s: float) -> float | None:
        """When the slot's segment fails for taking too long (None: never)."""
        if not self.ready:
            # Ray may still be placing the actor or importing the task: that has its own
            # limit, and the segment's own clock starts when the actor is up.
            return self.created + start_timeout_s + (timeout_s or 0.0)
        return None if timeout_s is None else self.started + timeout_s


class RayExecutor(Executor):
    """``workers`` Ray actors running segments of ``task``, each with one member's resources.

    Args:
        task: ``module:Name`` or ``file.py:Name`` importable on every node, or a Trainable
            class or function (Ray pickles it to the actors).
        workers: actors, i.e. segments at once.
        resources: one member's resources, see :func:`validate_resources` (default 1 CPU).
        address: ``None`` or ``"local"`` starts a private Ray instance on this machine
            (stopped by :meth:`close`); ``"auto"`` joins the cluster this machine belongs to;
            ``"ray://host:10001"`` connects through Ray Client. When this process is already
            connected to Ray (``ray.init`` was called), that connection is used as it is.
        segment_timeout_s: a segment running longer fails and its actor is replaced.
        start_timeout_s: an actor that is not placed and started within this many seconds
            fails its segment (a cluster without the resources, a node that never came).
    """

    def __init__(
        self,
        task: Any,
        workers: int = 2,
        resources: Mapping[str, Any] | None = None,
        address: str | None = None,
        segment_timeout_s: float | None = None,
        start_timeout_s: float = STARTUP_GRACE_S,
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers={workers!r}: must be an int >= 1")
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(
                f"address={address!r}: must be 'local', 'auto', 'ray://HOST:PORT' or "
                "'HOST:PORT'"
            )
        self.task = task
        self.workers = workers
        self.resources = validate_resources(resources)
        self.address = address
        self.segment_timeout_s = segment_timeout_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._slots: list[_Slot] = []
        self._last_slot: dict[int, int] = {}
        self._owns_ray = False
        self._remote: Any = None
        self._early_deaths = 0
        self._ever_ready = False

    @property
    def capacity(self) -> int:
        return self.workers

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._slots:
            return
        ray = _ray()
        if not ray.is_initialized():
            self._init(ray)
        self._check_fits(ray)
        cpu = self.resources.get("cpu", 1.0)
        self._threads = max(1, int(cpu))
        self._remote = ray.remote(SegmentActor).options(
            max_restarts=0, max_task_retries=0, **ray_options(self.resources)
        )
        self._slots = [self._spawn() for _ in range(self.workers)]

    def _init(self, ray: Any) -> None:
        local = self.address in (None, "local")
        try:
            if local:
                init_private_ray()
            else:
                ray.init(address=self.address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"address={self.address!r}: cannot connect to Ray ({exc}); use 'auto' on a "
                "node of a running cluster, 'ray://HOST:10001' from outside it, or 'local'"
            ) from None
        self._owns_ray = True

    def _check_fits(self, ray: Any) -> None:
        """Refuse (on a private instance) or warn (on a cluster, which may grow) when the
        cluster cannot hold ``workers`` members' resources at once."""
        total = {k.lower() if k in ("CPU", "GPU") else k: v
                 for k, v in ray.cluster_resources().items()}
        short = []
        for key, need in ray_options_totals(self.resources, self.workers).items():
            have = float(total.get(key, 0.0))
            if need > have + 1e-9:
                short.append(f"{key}: {self.workers} workers x "
                             f"{self.resources.get(key, 0):g} = {need:g}, the cluster has "
                             f"{have:g}")
        if not short:
            return
        why = "; ".join(short)
        if self._owns_ray and self.address in (None, "local"):
            raise ConfigError(
                f"resources_per_member={self.resources}: the local Ray instance cannot hold "
                f"{self.workers} workers at once ({why}); use fewer workers, or a fraction "
                f"(e.g. cpu={_fraction(total.get('cpu', 1.0), self.workers)})"
            )
        log.warning("the Ray cluster cannot hold %d workers at once yet (%s); actors wait for "
                    "resources and fail their segment after %g s", self.workers, why,
                    self.start_timeout_s)

    def wait_ready(self, timeout: float | None = None) -> int:
        """Start the actors and wait up to ``timeout`` seconds until each has loaded the task.

        Optional (segments queue on an actor that is still starting); benchmarks call it to
        time the work apart from the start-up. Returns how many actors are up.

        Raises:
            TaskLoadError: an actor could not load the task.
        """
        self.start()
        ray = _ray()
        probes = [s.probe for s in self._slots if s.probe is not None]
        if probes:
            ray.wait(probes, num_returns=len(probes), timeout=timeout)
        for slot in self._slots:
            if slot.probe is not None and not ray.wait([slot.probe], timeout=0)[1]:
                self._probed(slot)
        return sum(s.ready for s in self._slots)

    def _spawn(self) -> _Slot:
        env = {k: v for k, v in os.environ.items() if k.startswith("FIREPBT_")}
        actor = self._remote.remote(self.task, self._threads, env)
        return _Slot(actor, actor.ready.remote(), time.monotonic())

    # -- work --------------------------------------------------------------------------------

    def submit(self, spec: SegmentSpec) -> None:
        self.start()
        free = [i for i, s in enumerate(self._slots) if s.spec is None]
        self._require_free_slot(len(self._slots) - len(free))
        last = self._last_slot.get(spec.worker)
        i = last if last in free else free[0]
        slot = self._slots[i]
        slot.ref = slot.actor.run.remote(spec)
        slot.spec, slot.started = spec, time.monotonic()
        self._last_slot[spec.worker] = i

    def poll(self, timeout: float | None) -> list[SegmentResult]:
        ray = _ray()
        results: list[SegmentResult] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            busy = [i for i, s in enumerate(self._slots) if s.spec is not None]
            if not busy:
                return results
            now = time.monotonic()
            wait_s = None if deadline is None else max(0.0, deadline - now)
            limits = [d for i in busy if (d := self._slots[i].deadline(
                self.segment_timeout_s, self.start_timeout_s)) is not None]
            if limits:
                left = max(0.0, min(limits) - now)
                wait_s = left if wait_s is None else min(wait_s, left)
            owner: dict[Any, int] = {}
            for i in busy:
                slot = self._slots[i]
                owner[slot.ref] = i
                if slot.probe is not None:
                    owner[slot.probe] = i
            done, _ = ray.wait(list(owner), num_returns=1, timeout=wait_s)
            if done:  # everything finished by now, not only the first
                done, _ = ray.wait(list(owner), num_returns=len(owner), timeout=0)
            # Probes first: a segment's clock starts when its actor is up.
            done.sort(key=lambda ref: ref != self._slots[owner[ref]].probe)
            for ref in done:
                i = owner[ref]
                slot = self._slots[i]
                if ref == slot.probe:
                    self._probed(slot)
                elif slot.spec is not None and ref == slot.ref:
                    results.append(self._collect(i))
            now = time.monotonic()
            for i in busy:
                slot = self._slots[i]
                limit = slot.deadline(self.segment_timeout_s, self.start_timeout_s)
                if slot.spec is not None and limit is not None and now > limit:
                    results.append(self._fail(i, self._late(slot)))
            if results or (deadline is not None and time.monotonic() >= deadline):
                return results

    def _late(self, slot: _Slot) -> str:
        if slot.ready:
            return f"segment timed out after {self.segment_timeout_s:g} s"
        return (f"the Ray actor did not start within {self.start_timeout_s:g} s (resources "
                f"{ray_options(self.resources)}: does the cluster have them free?)")

    def _probed(self, slot: _Slot) -> None:
        ray = _ray()
        probe, slot.probe = slot.probe, None
        try:
            fatal, slot.pid, slot.node = ray.get(probe)
        except ray.exceptions.RayError:
            return  # the actor died before it was up: its segment's ref reports that
        if fatal is not None:
            cause = fatal.strip().splitlines()[-1]
            raise TaskLoadError(
                f"Ray actors cannot load the task {self._task_name()}: {cause}\n\n{fatal}"
            )
        slot.ready = True
        self._ever_ready = True
        self._early_deaths = 0
        slot.started = time.monotonic()

    def _collect(self, i: int) -> SegmentResult:
        ray = _ray()
        slot = self._slots[i]
        try:
            result: SegmentResult = ray.get(slot.ref)
        except ray.exceptions.RayError as exc:
            node = (slot.node or "?")[:12]
            where = f" (pid {slot.pid} on node {node})" if slot.pid is not None else ""
            if not slot.ready:
                self._early_deaths += 1
                if not self._ever_ready and self._early_deaths >= EARLY_DEATHS_LIMIT:
                    raise TaskLoadError(
                        f"{self._early_deaths} Ray actors died before they could load the task "
                        f"{self._task_name()}; the last error: {_first_line(exc)}"
                    ) from None
            return self._fail(i, f"Ray actor died{where}: {type(exc).__name__}: "
                              f"{_first_line(exc)}")
        slot.spec = slot.ref = None
        return result

    def _fail(self, i: int, why: str) -> SegmentResult:
        """Replace slot ``i``'s actor; its segment is a failure the controller retries."""
        ray = _ray()
        slot = self._slots[i]
        spec = slot.spec
        assert spec is not None
        self._kill([slot])
        self._slots[i] = self._spawn()
        self.restarts += 1
        for w, s in list(self._last_slot.items()):
            if s == i:
                del self._last_slot[w]
        log.debug("worker slot %d: %s (ray %s)", i, why, ray.__version__)
        return SegmentResult(
            spec.worker, spec.segment, spec.epoch, (), spec.start_step, None, None, error=why
        )

    def _kill(self, slots: list[_Slot]) -> None:
        """Kill the actors of ``slots``, wait until those that were running a segment are
        gone, and remove the checkpoints those segments may have renamed into place (nobody
        will record them, and nobody can write them any more)."""
        ray = _ray()
        for slot in slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        busy = [s for s in slots if s.spec is not None]
        refs = [s.ref for s in busy if s.ref is not None]
        if refs:
            # A killed actor's pending call resolves (with an error) once the process is gone.
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=KILL_WAIT_S)
        for slot in busy:
            assert slot.spec is not None
            # Best effort: the next controller start sweeps whatever this leaves.
            with contextlib.suppress(CheckpointError, OSError, ValueError):
                discard_unreported(slot.spec.checkpoint_root, slot.spec.save_checkpoint)

    def cancel(self, worker: int) -> None:
        i = self._last_slot.pop(worker, None)
        if i is not None:
            # An actor runs its calls in order: after a segment still in flight, if any.
            with contextlib.suppress(Exception):
                self._slots[i].actor.forget.remote(worker)

    def slot_actors(self) -> list[tuple[int | None, str | None, bool]]:
        """(pid, Ray node id, busy) of each slot's actor (None until it started); for fault
        tests and progress displays."""
        return [(s.pid, s.node, s.spec is not None) for s in self._slots]

    def close(self) -> None:
        if self._slots:
            self._kill(self._slots)
            self._slots = []
        self._last_slot.clear()
        if self._owns_ray:
            ray = _ray()
            ray.shutdown()
            self._owns_ray = False

    def _task_name(self) -> str:
        return repr(self.task) if isinstance(self.task, str) else getattr(
            self.task, "__qualname__", repr(self.task))


def init_private_ray(num_cpus: float | None = None, log_to_driver: bool = True) -> None:
    """Start a private Ray instance on this machine and connect this process to it.

    Loopback only, no dashboard, a small object store, and no usage report sent from a
    library the user did not ask to phone home. Stop it with ``ray.shutdown()``.
    ``log_to_driver=False`` keeps the workers' output out of this process's (benchmarks).
    """
    # Ray reads these when it is imported and every process it starts reads them again, so
    # they are set around the start and restored after. LOOPBACK_ENV=0 keeps a single-node
    # instance on 127.0.0.1: Linux's default (1) binds every interface, even with
    # _node_ip_address="127.0.0.1".
    settings = {LOOPBACK_ENV: "0", "RAY_USAGE_STATS_ENABLED": os.environ.get(
        "RAY_USAGE_STATS_ENABLED", "0")}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        ray = _ray()
        # Ray imported earlier in this process read the setting then; its address lookup
        # reads the module attribute at call time.
        constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
        if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
            constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=log_to_driver)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ray_options_totals(resources: Mapping[str, float], workers: int) -> dict[str, float]:
    """What ``workers`` members need in all, by resource (zero quantities left out)."""
    return {k: v * workers for k, v in resources.items() if v > 0}


def _fraction(cpus: float, workers: int) -> str:
    return f"{math.floor(cpus / workers * 10_000) / 10_000:g}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
