"""A task that only sleeps: measures the system's own overhead (``firepbt bench overhead``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firepbt.trainable import Trainable

if TYPE_CHECKING:
    from firepbt.space import Space


class _SpaceOnAccess:
    """``SleepTask.SPACE``, built when read. The task measures the system's own overhead, so
    its module imports nothing heavy: a worker process (and the fork server that preloads the
    task) then starts without numpy, which ``firepbt.space`` needs and the workers do not."""

    def __get__(self, obj: object, owner: type | None = None) -> Space:
        from firepbt.space import LogUniform, Space

        return Space(lr=LogUniform(1e-3, 1.0), step_s=0.02)


class SleepTask(Trainable):
    """Each step sleeps ``step_s`` seconds; the metric is a deterministic function of lr."""

    SPACE = _SpaceOnAccess()
    DEFAULTS = {"steps": 200, "interval": 10, "eval_every": 10}

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.hparams = dict(hparams)
        self.score = 0.0

    def train(self, steps: int) -> None:
        time.sleep(steps * float(self.hparams.get("step_s", 0.02)))
        self.score += steps * float(self.hparams["lr"])

    def evaluate(self) -> float:
        return self.score

    def save(self, path: Path) -> None:
        (path / "state.json").write_text(json.dumps({"score": self.score}))

    def load(self, path: Path) -> None:
        self.score = json.loads((path / "state.json").read_text())["score"]
