"""firepbt: Population Based Training and FIRE PBT for hyperparameter schedules.

The public API is the handful of names below; everything else is a private module.
"""

from __future__ import annotations

from typing import Any

from firepbt.algorithms.pbt import PBT
from firepbt.algorithms.random_search import RandomSearch
from firepbt.api import resume, run
from firepbt.errors import ConfigError, FirePBTError
from firepbt.result import Result
from firepbt.space import Choice, ExploreConfig, Int, LogUniform, Ordered, Space, Uniform
from firepbt.trainable import Trainable

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # FIRE PBT pulls in scikit-learn (GP smoothing); import it only when asked for.
    if name == "FirePBT":
        from firepbt.algorithms.fire import FirePBT

        return FirePBT
    raise AttributeError(f"module 'firepbt' has no attribute {name!r}")


__all__ = [
    "PBT",
    "Choice",
    "ConfigError",
    "ExploreConfig",
    "FirePBT",
    "FirePBTError",
    "Int",
    "LogUniform",
    "Ordered",
    "RandomSearch",
    "Result",
    "Space",
    "Trainable",
    "Uniform",
    "__version__",
    "resume",
    "run",
]
