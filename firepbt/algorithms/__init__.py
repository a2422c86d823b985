"""Pure decision logic: PBT, PB2, FIRE PBT, random search."""

from __future__ import annotations

from typing import Any

from firepbt.algorithms.base import Algorithm
from firepbt.algorithms.pbt import PBT
from firepbt.algorithms.random_search import RandomSearch
from firepbt.errors import ConfigError
from firepbt.space import ExploreConfig


def algorithm_from_config(cfg: dict[str, Any]) -> Algorithm:
    """Rebuild an algorithm from ``Algorithm.to_config()`` (used on resume)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if "explore" in cfg:
        ex = dict(cfg["explore"])
        ex["ray_factors"] = tuple(ex.get("ray_factors", (1.2, 0.8)))
        if isinstance(ex.get("custom"), str):
            from firepbt.importing import load_object

            ex["custom"] = load_object(ex["custom"])
        cfg["explore"] = ExploreConfig(**ex)
    if name == "pbt":
        return PBT(**cfg)
    if name == "random":
        return RandomSearch(**cfg)
    if name == "pb2":
        from firepbt.algorithms.pb2 import PB2

        return PB2(**cfg)
    if name == "fire":
        from firepbt.algorithms.fire import FirePBT

        return FirePBT(**cfg)
    raise ConfigError(f"algorithm {name!r}: unknown; expected one of pbt, pb2, fire, random")


__all__ = ["PBT", "Algorithm", "RandomSearch", "algorithm_from_config"]
