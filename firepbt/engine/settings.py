"""The run's settings (stored with the experiment) and the checks a resume makes against them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firepbt.algorithms.base import Algorithm, require
from firepbt.errors import ConfigError
from firepbt.space import Space

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


def _as_json(obj: Any) -> Any:
    if hasattr(obj, "to_config"):
        return obj.to_config()
    return obj.to_json()



def stored_run(
    url: str,
    existing: Mapping[str, Any],
    task_ref: str | None,
    space: Space | None,
    algorithm: Algorithm | None,
    config: RunConfig | None,
) -> tuple[Space, Algorithm, RunConfig]:
    """The stored experiment's space, algorithm and settings, checked against those given.

    Raises:
        ConfigError: something given differs from the stored experiment (never a silent
            fallback); the message names the differing keys.
    """
    from firepbt.algorithms import algorithm_from_config

    stored_alg = algorithm_from_config(existing["algorithm"])
    stored_cfg = RunConfig(**existing["config"])
    stored_space = Space.from_json(existing["space"])
    for given, stored, what in (
        (algorithm, stored_alg, "algorithm"),
        (config, stored_cfg, "run settings"),
    ):
        if given is not None and _as_json(given) != _as_json(stored):
            raise ConfigError(
                f"store {url!r} holds an experiment with different {what}: "
                f"{differences(_as_json(stored), _as_json(given))}; resume without "
                "passing them, or use a new store"
            )
    if space is not None and space.to_json() != stored_space.to_json():
        raise ConfigError(
            f"store {url!r} holds an experiment with a different search space: "
            f"{differences(stored_space.to_json(), space.to_json())}; use a new store"
        )
    if task_ref is not None and existing.get("task") not in (None, task_ref):
        raise ConfigError(
            f"store {url!r} was created for task {existing.get('task')!r}, not {task_ref!r}"
        )
    return stored_space, stored_alg, stored_cfg


def resolve(
    url: str,
    existing: Mapping[str, Any] | None,
    task_ref: str | None,
    space: Space | None,
    algorithm: Algorithm | None,
    config: RunConfig | None,
    initial: Sequence[Mapping[str, Any]] | None,
) -> tuple[Space, Algorithm, RunConfig]:
    """The run's space, algorithm and settings: those given for a new experiment (validated
    together), the stored ones (checked against those given) for an ``existing`` one."""
    if existing is not None:
        return stored_run(url, existing, task_ref, space, algorithm, config)
    if space is None or algorithm is None or config is None:
        raise ConfigError(f"store {url!r} holds no experiment: space, algorithm and config "
                          "are needed to start one")
    validate_run(space, algorithm, config, initial)
    return space, algorithm, config
