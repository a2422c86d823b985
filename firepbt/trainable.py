"""The user-facing training API: a class form and a Ray-Tune-like function form.

A *segment* of work is: build or restore a trainable, train it for ``interval`` steps while
recording the metric every ``eval_every`` steps, save a checkpoint. Executors drive trainables
only through :func:`run_segment`, so the class and function forms behave identically.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firepbt.errors import ConfigError


class Trainable(ABC):
    """Subclass this to plug a training loop into firepbt.

    The library owns the population; a Trainable owns one network. ``self.hparams`` is the
    current hyperparameter dict and ``self.seed`` an integer seed for this member.
    """

    hparams: dict[str, Any]
    seed: int

    def __init__(self) -> None:
        self.hparams = {}
        self.seed = 0

    @abstractmethod
    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        """Build the model and optimiser for ``hparams``."""

    @abstractmethod
    def train(self, steps: int) -> None:
        """Train ``steps`` steps with ``self.hparams``."""

    @abstractmethod
    def evaluate(self) -> float:
        """Return the fitness (higher is better), e.g. validation accuracy."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write weights and optimiser state into the directory ``path``."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Restore weights and optimiser state from the directory ``path``."""

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Apply new hyperparameters in place (e.g. the optimiser's lr).

        The default only stores them; override when the optimiser must be told.
        """
        self.hparams = dict(hparams)


@dataclass(frozen=True)
class SegmentSpec:
    """What a worker must do for one segment of one member or evaluator."""

    worker: int
    segment: int
    epoch: int
    hparams: Mapping[str, Any]
    seed: int
    start_step: int
    steps: int
    eval_every: int
    load_checkpoint: int | None  # checkpoint to restore; None = fresh setup
    load_path: str | None
    load_checksum: str | None
    save_checkpoint: int  # id of the checkpoint to write at the end
    checkpoint_root: str
    metric: str | None = None  # the key of the fitness when evaluate() returns a dict

@dataclass(frozen=True)
class SegmentResult:
    """What a worker sends back: the curve points and the new checkpoint."""

    worker: int
    segment: int
    epoch: int
    points: tuple[tuple[int, float | None], ...]  # (step, metric) inside the segment
    end_step: int
    checkpoint_path: str | None
    checksum: str | None
    error: str | None = None  # traceback text when user code raised
    wall_s: float = 0.0
    # The other named metrics evaluate() returned, one mapping per point of ``points`` (see
    # other_metrics); empty when the task reports one number (and for batched tasks).
    extra: tuple[Mapping[str, float | None], ...] = ()

    def __post_init__(self) -> None:
        if self.extra and len(self.extra) != len(self.points):
            raise ValueError(f"SegmentResult of worker {self.worker}: {len(self.extra)} extra "
                             f"metric mappings for {len(self.points)} points; give one per "
                             "point, or none")

    def named_points(self) -> list[tuple[int, float | None, Mapping[str, float | None]]]:
        """(step, metric, other named metrics) of each point."""
        if not self.extra:
            return [(step, value, _NO_METRICS) for step, value in self.points]
        return [(step, value, extra)
                for (step, value), extra in zip(self.points, self.extra, strict=True)]


_NO_METRICS: Mapping[str, float | None] = {}


METRIC_MODES = ("max", "min")


@dataclass(frozen=True)
class Metric:
    """What the task's ``evaluate()`` measures: a name, and whether higher or lower is better.

    ``evaluate()`` may return one number, or a dict of named numbers of which ``name`` is the
    fitness. Stores and reports keep the values as the task reported them; ranking inside the
    engine turns a "min" metric around, so a loss needs no negating.
    """

    name: str = "fitness"
    mode: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"metric name={self.name!r}: must be a non-empty string")
        if self.mode not in METRIC_MODES:
            raise ConfigError(f"metric mode={self.mode!r}: must be one of "
                              f"{', '.join(METRIC_MODES)} (is higher or lower better?)")

    @property
    def sign(self) -> float:
        """+1 where higher is better, -1 where lower is: fitness = sign x value."""
        return 1.0 if self.mode == "max" else -1.0

    def describe(self) -> str:
        return f"{self.name} ({'higher' if self.mode == 'max' else 'lower'} is better)"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "mode": self.mode}

    @staticmethod
    def of(value: Any) -> Metric:
        """A Metric from a Metric, a name, a ``to_json()`` dict or None (the default)."""
        if value is None:
            return Metric()
        if isinstance(value, Metric):
            return value
        if isinstance(value, str):
            return Metric(value)
        if isinstance(value, dict):
            return Metric(**value)
        raise ConfigError(f"metric={value!r}: must be a name or fp.Metric(name, mode)")


def pick_metric(value: Any, key: str | None) -> Any:
    """The fitness out of what ``evaluate()`` returned: the number, or ``value[key]``.

    Raises:
        KeyError: a dict without ``key`` (the message names it and the keys it has).
    """
    if not isinstance(value, dict):
        return value
    name = key or "fitness"
    if name not in value:
        raise KeyError(f"evaluate() returned the metrics {sorted(value)} but not {name!r}, the "
                       "run's metric: return it, or set the metric name (metric= / --metric)")
    return value[name]


def other_metrics(value: Any, key: str | None) -> dict[str, float | None]:
    """The named metrics ``evaluate()`` returned besides the fitness ``value[key]``.

    Recorded and plotted next to the fitness (``Result.metric_curves``, the dashboard), each
    normalised like it (:func:`as_metric`: NaN, +-inf and non-numbers become None). Empty when
    ``evaluate()`` returned one number.
    """
    if not isinstance(value, dict):
        return {}
    name = key or "fitness"
    return {str(k): as_metric(v) for k, v in value.items() if k != name}


def as_metric(value: Any) -> float | None:
    """Normalise a reported fitness: NaN, +-inf, None or a non-number becomes ``None``.

    An infinite fitness is as meaningless as NaN (a diverged run), and +inf would otherwise
    rank first and make a diverged member everyone's donor.
    """
    if value is None or isinstance(value, bool | str | bytes | bytearray):
        return None  # a bool is a mistake (True would rank as 1.0); text is no number
    if getattr(getattr(value, "dtype", None), "kind", None) == "b":  # a numpy bool
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond a float
        return None
    return f if math.isfinite(f) else None


# --- function form -------------------------------------------------------------------------


class _StopTraining(BaseException):
    """Raised inside a user function's report() to pause it (not an error)."""


class FunctionTrainable(Trainable):
    """Adapts a Ray-Tune-style function ``fn(hparams, checkpoint, report)``.

    ``checkpoint`` is a directory to resume from (or ``None``); ``report(metric, save)`` is called
    by the function once per training step with the step's metric (or ``None`` when it was not
    measured) and a callable ``save(path)`` writing its state. The function runs in a thread
    that is paused inside ``report`` between segments, so its loop is never restarted unless
    its weights change (exploit) - then it is restarted from the donor's checkpoint.
    ``hparams`` is a live dict: new values from explore appear in it in place.
    """

    fn: Callable[..., Any]

    def __init__(self) -> None:
        super().__init__()
        self._thread: threading.Thread | None = None
        self._to_fn: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._from_fn: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._restore: Path | None = None
        self._last_metric: float | None = None
        self._saver: Callable[[Path], None] | None = None
        self._live: dict[str, Any] = {}

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self._live = dict(hparams)
        self.hparams = self._live
        self.seed = seed

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._live.clear()
        self._live.update(hparams)

    def _start(self) -> None:
        def report(metric: Any = None, save: Callable[[Path], None] | None = None) -> None:
            self._from_fn.put(("step", (metric, save)))
            cmd, _ = self._to_fn.get()
            if cmd == "stop":
                raise _StopTraining

        def body() -> None:
            try:
                params = inspect.signature(self.fn).parameters
                kwargs = {"seed": self.seed} if "seed" in params else {}
                self.fn(self._live, self._restore, report, **kwargs)
                self._from_fn.put(("done", None))
            except _StopTraining:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the worker as the error
                self._from_fn.put(("error", exc))

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    def train(self, steps: int) -> None:
        for _ in range(steps):
            if self._thread is None:
                self._start()
            else:
                self._to_fn.put(("go", None))
            kind, payload = self._from_fn.get()
            if kind == "error":
                raise payload
            if kind == "done":
                raise RuntimeError("training function returned before the run's last step")
            metric, save = payload
            self._last_metric = as_metric(metric) if metric is not None else self._last_metric
            self._saver = save if save is not None else self._saver

    def evaluate(self) -> float:
        return float("nan") if self._last_metric is None else self._last_metric

    def save(self, path: Path) -> None:
        if self._saver is None:
            raise RuntimeError("the training function never passed save= to report()")
        self._saver(path)

    def load(self, path: Path) -> None:
        self._stop_thread()
        self._restore = path

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._to_fn.put(("stop", None))
            self._thread.join(timeout=10)
        self._thread = None
        self._to_fn = queue.Queue()
        self._from_fn = queue.Queue()


#: The methods a task class must define (``set_hparams`` has a default).
TRAINING_METHODS = ("setup", "train", "evaluate", "save", "load")


def make_trainable_class(obj: Any) -> type[Trainable]:
    """Return a Trainable subclass for a Trainable subclass or a training function.

    A class that defines the training methods without subclassing :class:`Trainable` is
    accepted as a class trainable; any other class is refused (a class is callable, and
    taking it for a training function made every segment fail with "takes no arguments").

    Raises:
        ConfigError: ``obj`` is a class without the training methods, or not callable.
    """
    if inspect.isclass(obj):
        if issubclass(obj, Trainable):
            return obj
        missing = [m for m in TRAINING_METHODS if not callable(getattr(obj, m, None))]
        if missing:
            raise ConfigError(
                f"task class {obj.__qualname__!r} lacks {', '.join(missing)}: a task class "
                "must subclass firepbt.Trainable (or define setup, train, evaluate, save and "
                "load); a training function must be a function fn(hparams, checkpoint, report)"
            )
        return _as_trainable(obj)
    if callable(obj):
        fn = obj
        return type(f"Function[{getattr(fn, '__name__', 'fn')}]", (FunctionTrainable,),
                    {"fn": staticmethod(fn)})
    raise ConfigError(f"task {obj!r} is neither a Trainable subclass nor a function")


def _as_trainable(cls: type) -> type[Trainable]:
    """A Trainable subclass of a class that has the training methods but not the base."""

    def __init__(self: Trainable) -> None:
        Trainable.__init__(self)
        cls.__init__(self)  # type: ignore[misc]

    return type(cls.__name__, (cls, Trainable),
                {"__init__": __init__, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__})
