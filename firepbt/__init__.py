"""firepbt: Population Based Training and FIRE PBT for hyperparameter schedules.

The public API is the handful of names below; everything else is a private module. Names are
imported on first use, so that worker processes (which import ``firepbt.executors.worker``)
do not pay for scipy, scikit-learn or matplotlib at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PBT": "firepbt.algorithms.pbt",
    "FirePBT": "firepbt.algorithms.fire",
    "RandomSearch": "firepbt.algorithms.random_search",
    "run": "firepbt.api",
    "compare": "firepbt.compare",
    "resume": "firepbt.api",
    "ConfigError": "firepbt.errors",
    "FirePBTError": "firepbt.errors",
    "Result": "firepbt.result",
    "Space": "firepbt.space",
    "Uniform": "firepbt.space",
    "LogUniform": "firepbt.space",
    "Int": "firepbt.space",
    "Ordered": "firepbt.space",
    "Choice": "firepbt.space",
    "ExploreConfig": "firepbt.space",
    "Trainable": "firepbt.trainable",
    "Metric": "firepbt.trainable",
}

if TYPE_CHECKING:
    from firepbt.algorithms.fire import FirePBT
    from firepbt.algorithms.pbt import PBT
    from firepbt.algorithms.random_search import RandomSearch
    from firepbt.api import resume, run
    from firepbt.compare import compare
    from firepbt.errors import ConfigError, FirePBTError
    from firepbt.result import Result
    from firepbt.space import Choice, ExploreConfig, Int, LogUniform, Ordered, Space, Uniform
    from firepbt.trainable import Metric, Trainable


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'firepbt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "PBT",
    "Choice",
    "ConfigError",
    "ExploreConfig",
    "FirePBT",
    "FirePBTError",
    "Int",
    "LogUniform",
    "Metric",
    "Ordered",
    "RandomSearch",
    "Result",
    "Space",
    "Trainable",
    "Uniform",
    "__version__",
    "compare",
    "resume",
    "run",
]
