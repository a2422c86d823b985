"""Tasks for the Ray executor's tests, imported by file path inside the actors."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firepbt.space import Space, Uniform
from firepbt.trainable import Trainable


class Restores(Trainable):
    """Sleeps ``step_s`` per step; the fitness says whether this object was restored from a
    checkpoint (1.0) or is still the one set up fresh in this process (0.0), so a test sees
    the actor's cache at work."""

    SPACE = Space(x=Uniform(0.0, 1.0), step_s=0.0)

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.hparams = dict(hparams)
        self.steps = 0
        self.restored = 0.0

    def train(self, steps: int) -> None:
        time.sleep(steps * float(self.hparams.get("step_s", 0.0)))
        self.steps += steps

    def evaluate(self) -> float:
        return self.restored

    def save(self, path: Path) -> None:
        (path / "state.json").write_text(json.dumps({"steps": self.steps}))

    def load(self, path: Path) -> None:
        self.steps = json.loads((path / "state.json").read_text())["steps"]
        self.restored = 1.0
