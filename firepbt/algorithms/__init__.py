"""Pure decision logic: PBT, PB2, FIRE PBT, random search.

Algorithms are found by name in a small registry, so that adding one is one file (its class
decorated with :func:`register`) plus its tests; ``algorithm_from_config`` rebuilds a stored
algorithm through it.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from firepbt.algorithms.base import Algorithm
from firepbt.errors import ConfigError
from firepbt.space import ExploreConfig

A = TypeVar("A", bound=type[Algorithm])

REGISTRY: dict[str, type[Algorithm]] = {}
# Built-ins whose modules are heavy to import (scikit-learn) register on first use.
_LAZY = {"pb2": "firepbt.algorithms.pb2", "fire": "firepbt.algorithms.fire"}


def register(cls: A) -> A:
    """Class decorator: make ``cls`` findable by its ``name`` (a stored config names it)."""
    name = cls.name
    known = REGISTRY.get(name)
    if known is not None and known is not cls:
        raise ConfigError(
            f"algorithm name {name!r}: already registered by {known.__module__}."
            f"{known.__qualname__}; names must be unique"
        )
    REGISTRY[name] = cls
    return cls


def algorithm_from_config(cfg: dict[str, Any]) -> Algorithm:
    """Rebuild an algorithm from ``Algorithm.to_config()`` (used on resume)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if isinstance(name, str) and name not in REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    cls = REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(set(REGISTRY) | set(_LAZY)))
        raise ConfigError(f"algorithm {name!r}: unknown; expected one of {known}")
    if "explore" in cfg:
        ex = dict(cfg["explore"])
        ex["ray_factors"] = tuple(ex.get("ray_factors", (1.2, 0.8)))
        if isinstance(ex.get("custom"), str):
            from firepbt.importing import load_object

            ex["custom"] = load_object(ex["custom"])
        cfg["explore"] = ExploreConfig(**ex)
    return cls.from_config(cfg)


# The light built-ins register themselves on import (after the registry exists).
from firepbt.algorithms.pbt import PBT  # noqa: E402
from firepbt.algorithms.random_search import RandomSearch  # noqa: E402

__all__ = ["PBT", "REGISTRY", "Algorithm", "RandomSearch", "algorithm_from_config", "register"]
