"""Cheap toy tasks: the PBT paper's quadratic, a moving optimum, FIRE's plain and deceptive toys.

Every task keeps its whole state in numpy arrays plus one seeded ``numpy.random.Generator``, and
checkpoints it as a single ``state.npz`` so that a save/load round trip continues bit for bit.
Each task class carries ``SPACE`` (its default search space) and ``DEFAULTS`` (the run settings
``steps``, ``interval`` and ``eval_every`` it was tuned for); its docstring says what the metric is.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from firepbt.errors import CheckpointError, ConfigError
from firepbt.space import LogUniform, Space, Uniform
from firepbt.trainable import Trainable

STATE_FILE = "state.npz"


def require_number(hparams: Mapping[str, Any], key: str) -> float:
    """Return ``hparams[key]`` as a finite float, or raise ConfigError naming the key.

    Args:
        hparams: The hyperparameters handed to a task.
        key: The hyperparameter the task needs.

    Returns:
        The value as a float.

    Raises:
        ConfigError: The key is missing or its value is not a finite real number.
    """
    if key not in hparams:
        raise ConfigError(f"hyperparameter {key!r} is missing (got keys {sorted(hparams)})")
    value = hparams[key]
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"hyperparameter {key!r}={value!r} must be a real number")
    number = float(value)
    if not np.isfinite(number):
        raise ConfigError(f"hyperparameter {key!r}={value!r} must be finite")
    return number


class NumpyTask(Trainable):
    """Base of the cheap tasks: state is numpy arrays, a step counter and a seeded Generator.

    Subclasses implement ``_init_state``, ``_state``, ``_set_state``, ``_apply_hparams``,
    ``train`` and ``evaluate``; this class owns setup, set_hparams, save and load.
    """

    SPACE: ClassVar[Space]
    DEFAULTS: ClassVar[dict[str, int]]

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.step = 0

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        """Start from the task's fixed initial point with a Generator seeded from ``seed``."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.set_hparams(hparams)
        self._init_state()

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Validate and apply new hyperparameters; the weights are untouched."""
        self._apply_hparams(hparams)
        self.hparams = dict(hparams)

    def save(self, path: Path) -> None:
        """Write ``state.npz`` (arrays, step counter, Generator state) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # The Generator state goes in as JSON text so the file loads without pickle.
        arrays: dict[str, Any] = {
            "task": np.array(type(self).__name__),
            "step": np.array(self.step, dtype=np.int64),
            "rng": np.array(json.dumps(self.rng.bit_generator.state)),
            **self._state(),
        }
        np.savez(path / STATE_FILE, **arrays)

    def load(self, path: Path) -> None:
        """Restore the state written by :meth:`save`; hyperparameters stay as they are.

        Raises:
            CheckpointError: The file is missing or was written by another task class.
        """
        file = Path(path) / STATE_FILE
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {str(file)!r} does not exist")
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        task = str(arrays.pop("task"))
        if task != type(self).__name__:
            raise CheckpointError(
                f"checkpoint {str(file)!r} holds a {task} state, not a {type(self).__name__} one"
            )
        self.step = int(arrays.pop("step"))
        state = json.loads(str(arrays.pop("rng")))
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
        self.rng = np.random.Generator(bit_generator)
        self._set_state(arrays)

    @abstractmethod
    def _init_state(self) -> None:
        """Set the weights to the task's starting point."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Return every piece of training state (besides step and rng) as named arrays."""

    @abstractmethod
    def _set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`_state`."""

    @abstractmethod
    def _apply_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Validate ``hparams`` and cache what ``train`` needs."""


class QuadraticToy(NumpyTask):
    """The PBT paper's toy: two members that each see only half of the objective.

    θ in R² starts at (0.9, 0.9); the true objective is Q(θ) = 1.2 - θ0² - θ1² (maximum 1.2 at
    the origin). A member only sees the surrogate Q̂(θ | h) = 1.2 - h0 θ0² - h1 θ1² and takes
    gradient-ascent steps on it with step size ``STEP_SIZE`` = 0.01, i.e.
    θk <- θk (1 - 0.02 hk). The metric (``evaluate``) is the true Q.

    With the grid ``grid_hparams()`` each member only shrinks one coordinate, so the best of
    the two stays at Q <= 1.2 - 0.81 = 0.39 forever; PBT (exploit copies θ, explore perturbs h)
    reaches Q >= 1.19 within the ``DEFAULTS`` budget of 200 steps with a ready point every 4.
    """

    SPACE: ClassVar[Space] = Space(h0=Uniform(0.0, 1.0), h1=Uniform(0.0, 1.0))
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 200, "interval": 4, "eval_every": 1}
    STEP_SIZE: ClassVar[float] = 0.01
    START: ClassVar[float] = 0.9

    theta: np.ndarray
    _h: np.ndarray

    @staticmethod
    def grid_hparams() -> list[dict[str, float]]:
        """The paper's two fixed settings, each seeing one coordinate of the objective."""
        return [{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}]

    def _apply_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._h = np.array([require_number(hparams, "h0"), require_number(hparams, "h1")])

    def _init_state(self) -> None:
        self.theta = np.full(2, self.START)

    def _state(self) -> dict[str, np.ndarray]:
        return {"theta": self.theta}

    def _set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.theta = np.array(arrays["theta"], dtype=float)

    def train(self, steps: int) -> None:
        """Take ``steps`` gradient-ascent steps on the surrogate Q̂(θ | h)."""
        for _ in range(steps):
            # d/dθ of the surrogate is -2 h θ; ascent adds it.
            self.theta = self.theta + self.STEP_SIZE * (-2.0 * self._h * self.theta)
        self.step += steps

    def evaluate(self) -> float:
        """Return the true objective Q(θ) = 1.2 - θ0² - θ1²."""
        return float(1.2 - np.sum(self.theta**2))


class MovingOptimumToy(NumpyTask):
    """A score whose best learning rate moves as the score grows.

    The state is a score s in [0, 1] (the metric, higher is better), starting at 0. The best
    learning rate at score s is 10 ** (-0.5 - 3 s): 0.32 at the start, 3.2e-4 at the end. Each
    step s grows by ``RATE`` (0.005) times a triangular kernel of the distance, in decades,
    between the learning rate and that optimum::

        s <- min(1, s + 0.005 * max(0, 1 - |log10(lr) - (-0.5 - 3 s)| / 0.75))

    A member at the optimum gains 0.005 a step (200 steps from 0 to 1); a learning rate more
    than ``WIDTH`` = 0.75 decades away gains nothing. So a fixed learning rate progresses only
    while the optimum is within 0.75 decades of it and stalls below s = 2 * 0.75 / 3 = 0.5
    (0.49 within the 400-step budget), while a schedule that lowers lr with the score reaches 1.
    """

    SPACE: ClassVar[Space] = Space(lr=LogUniform(1e-4, 1.0))
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 400, "interval": 5, "eval_every": 1}
    RATE: ClassVar[float] = 0.005
    WIDTH: ClassVar[float] = 0.75
    START_OPTIMUM: ClassVar[float] = -0.5  # log10 of the best lr at score 0
    SPAN: ClassVar[float] = 3.0  # decades the optimum falls between score 0 and 1

    score: float
    _log_lr: float

    @classmethod
    def optimum(cls, score: float) -> float:
        """Return the best learning rate at ``score``."""
        return float(10.0 ** (cls.START_OPTIMUM - cls.SPAN * score))

    def _apply_hparams(self, hparams: Mapping[str, Any]) -> None:
        lr = require_number(hparams, "lr")
        if lr <= 0:
            raise ConfigError(f"hyperparameter 'lr'={lr!r} must be > 0")
        self._log_lr = float(np.log10(lr))

    def _init_state(self) -> None:
        self.score = 0.0

    def _state(self) -> dict[str, np.ndarray]:
        return {"score": np.array(self.score)}

    def _set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.score = float(arrays["score"])

    def train(self, steps: int) -> None:
        """Advance the score ``steps`` times with the current learning rate."""
        for _ in range(steps):
            distance = abs(self._log_lr - (self.START_OPTIMUM - self.SPAN * self.score))
            gain = self.RATE * max(0.0, 1.0 - distance / self.WIDTH)
            self.score = min(1.0, self.score + gain)
        self.step += steps

    def evaluate(self) -> float:
        """Return the score in [0, 1]."""
        return self.score


class PlainToy(NumpyTask):
    """FIRE's plain toy, where greed is right: lowering h at once is optimal.

    θ in R^``DIM`` (DIM = 10) starts at 0.9 in every coordinate; each step
    θ <- θ - 0.002 (2 - h) θ, so a lower h shrinks θ faster. The metric is
    Q = 1.2 - Σ θ² (starts at -6.9, maximum 1.2). ``SPACE`` is the hyperparameter's range
    h in [1e-4, 1.1]; initial values should be drawn from ``INIT_SPACE``, h ~ U(0.9, 1.1).
    DIM = 10 (not 2) makes the early gain from a lower h larger than the deceptive toy's
    penalty for it, so greedy selection is really tempted there.
    """

    SPACE: ClassVar[Space] = Space(h=Uniform(1e-4, 1.1))
    INIT_SPACE: ClassVar[Space] = Space(h=Uniform(0.9, 1.1))
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 1000, "interval": 20, "eval_every": 2}
    DIM: ClassVar[int] = 10
    RATE: ClassVar[float] = 0.002
    START: ClassVar[float] = 0.9

    theta: np.ndarray
    _h: float

    def _apply_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._h = require_number(hparams, "h")

    def _init_state(self) -> None:
        self.theta = np.full(self.DIM, self.START)

    def _state(self) -> dict[str, np.ndarray]:
        return {"theta": self.theta}

    def _set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.theta = np.array(arrays["theta"], dtype=float)

    def train(self, steps: int) -> None:
        """Shrink θ ``steps`` times by the factor 1 - 0.002 (2 - h)."""
        for _ in range(steps):
            self._before_step()
            self.theta = self.theta - self.RATE * (2.0 - self._h) * self.theta
            self.step += 1

    def _before_step(self) -> None:
        """Hook run before each step (the deceptive toy charges its penalty here)."""

    def objective(self) -> float:
        """Return Q = 1.2 - Σ θ², without any penalty."""
        return float(1.2 - np.sum(self.theta**2))

    def evaluate(self) -> float:
        """Return Q = 1.2 - Σ θ²."""
        return self.objective()


class DeceptiveToy(PlainToy):
    """FIRE's deceptive toy: the plain toy minus a penalty for leaving a linear h schedule.

    Ready interval i covers steps [i T_STEP, (i + 1) T_STEP) with T_STEP = 20, T_MAX = 1000
    (the research settings); its target is max(0, (T_MAX - i T_STEP) / T_MAX), falling
    linearly from 1 to 0. Every step charges (0.2 / T_STEP) |h - target| with the h *used* in
    that step, so a whole interval at a constant h costs 0.2 |h_i - target_i|, the spec's
    per-interval penalty. The charges accumulate over the whole history and live in the state,
    so an exploit copies them with θ. The metric is Q - accumulated penalty.

    Lowering h faster than the target pays at once (after one interval at h = 0.5 instead of 1,
    Q gains ~0.29 while the penalty is 0.1), but it keeps being charged every later interval:
    the linear schedule ends near 1.18 and the fastest decay far below 0.
    """

    T_STEP: ClassVar[int] = 20
    T_MAX: ClassVar[int] = 1000
    PENALTY_WEIGHT: ClassVar[float] = 0.2

    penalty: float

    @classmethod
    def target(cls, step: int) -> float:
        """Return the linear schedule's h for the ready interval holding ``step``."""
        interval_start = (step // cls.T_STEP) * cls.T_STEP
        # Past T_MAX the formula turns negative; the schedule simply stays at its end point 0.
        return max(0.0, (cls.T_MAX - interval_start) / cls.T_MAX)

    def _init_state(self) -> None:
        super()._init_state()
        self.penalty = 0.0

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), "penalty": np.array(self.penalty)}

    def _set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        super()._set_state(arrays)
        self.penalty = float(arrays["penalty"])

    def _before_step(self) -> None:
        charge = self.PENALTY_WEIGHT / self.T_STEP * abs(self._h - self.target(self.step))
        self.penalty += charge

    def evaluate(self) -> float:
        """Return Q - accumulated penalty."""
        return self.objective() - self.penalty
