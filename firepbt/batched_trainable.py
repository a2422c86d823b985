"""The batched task protocol: K members of one small model trained together in one process.

:class:`~firepbt.executors.batched.BatchedExecutor` runs tasks of this kind; tasks implement it
without importing the executor.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firepbt.errors import ConfigError


class BatchedTrainable(ABC):
    """K members of one model, trained together; slot ``i`` is one member.

    ``self.hparams[i]`` and ``self.seeds[i]`` are slot ``i``'s hyperparameters and seed. A slot
    set up with ``(hparams, seed)`` must start exactly as the single-member task would with the
    same arguments, and must train on its own data stream, so batched and one-by-one training
    agree up to float rounding.
    """

    hparams: list[dict[str, Any]]
    seeds: list[int]

    def __init__(self) -> None:
        self.hparams = []
        self.seeds = []

    @property
    def size(self) -> int:
        """The number of slots (members) in the batch."""
        return len(self.hparams)

    @abstractmethod
    def setup(self, hparams_list: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> None:
        """Build ``len(hparams_list)`` fresh members; slot ``i`` gets ``hparams_list[i]``."""

    @abstractmethod
    def train(self, steps: int) -> None:
        """Train every slot ``steps`` steps, each with its own hyperparameters."""

    @abstractmethod
    def evaluate(self) -> np.ndarray:
        """One fitness per slot (higher is better), shape ``(size,)``; NaN marks a failure."""

    @abstractmethod
    def save(self, i: int, path: Path) -> None:
        """Write slot ``i``'s weights and optimiser state into the directory ``path``."""

    @abstractmethod
    def load(self, i: int, path: Path) -> None:
        """Restore slot ``i`` from the directory ``path`` (its own hyperparameters win)."""

    def set_hparams(self, i: int, hparams: Mapping[str, Any]) -> None:
        """Apply new hyperparameters to slot ``i``; override when an optimiser must be told."""
        self.hparams[i] = dict(hparams)

    def reslot(
        self,
        hparams_list: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        keep: Sequence[int | None],
    ) -> None:
        """Rearrange the batch into ``len(hparams_list)`` slots.

        New slot ``j`` carries on old slot ``keep[j]`` (its state unchanged, hyperparameters set
        to ``hparams_list[j]``), or is a fresh member as :meth:`setup` would build it when
        ``keep[j]`` is None. Old slots nobody keeps are dropped.

        This default round-trips the kept slots through :meth:`save`/:meth:`load`, which works
        for any task; tasks override it with in-memory copies.
        """
        check_reslot(self.size, hparams_list, seeds, keep)
        with tempfile.TemporaryDirectory(prefix="firepbt-reslot-") as tmp:
            saved = {}
            for j, old in enumerate(keep):
                if old is not None:
                    saved[j] = Path(tmp) / str(j)
                    self.save(old, saved[j])
            self.setup(hparams_list, seeds)
            for j, path in saved.items():
                self.load(j, path)
                self.set_hparams(j, hparams_list[j])


def check_reslot(
    size: int,
    hparams_list: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    keep: Sequence[int | None],
) -> None:
    """Raise ConfigError unless the three lists match and ``keep`` names distinct old slots."""
    if not len(hparams_list) == len(seeds) == len(keep):
        raise ConfigError(
            f"reslot: hparams_list ({len(hparams_list)}), seeds ({len(seeds)}) and keep "
            f"({len(keep)}) must have the same length"
        )
    kept = [k for k in keep if k is not None]
    if len(set(kept)) != len(kept) or any(not 0 <= k < size for k in kept):
        raise ConfigError(f"reslot: keep={list(keep)!r} must name distinct slots in [0, {size})")
