"""The generic effects an algorithm's decisions come down to; the controller carries them out.

An algorithm may return decisions in its own words (PBT's ``Exploit``, FIRE's
``StartEvaluator``); each names its effects through :meth:`Decision.effects`, so the controller
knows only the handful below and never an algorithm's vocabulary. Every effect that changes a
worker's weights or status records one lineage event; ``Annotate`` records none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Decision:
    """Base of every decision; ``worker`` is who it applies to."""

    worker: int
    # Whether it settles ``worker``'s ready point; a ready worker no decision settles continues.
    settles: ClassVar[bool] = True

    def effects(self) -> Sequence[Effect]:
        """The generic effects that carry this decision out, in order."""
        raise NotImplementedError(f"{type(self).__name__} names no effects")


@dataclass(frozen=True)
class Effect(Decision):
    """A decision the controller carries out as it is."""

    def effects(self) -> Sequence[Effect]:
        return (self,)


@dataclass(frozen=True)
class Continue(Effect):
    """Keep training with the current weights and hyperparameters."""

    fitness: float | None = None


@dataclass(frozen=True)
class Overwrite(Effect):
    """``worker`` continues from ``checkpoint`` (written by ``donor``), by reference.

    The event ``kind`` (exploit, replace, transfer, ...) records the old and new
    hyperparameters and ``info``. A checkpoint that is gone is skipped (event
    ``<kind>_skipped``) and the worker continues with its own weights. A worker that was
    training or done trains again; a failed one stays failed.
    """

    checkpoint: int
    donor: int
    kind: str
    hparams: Mapping[str, Any] | None = None  # None: keep the worker's own
    info: Mapping[str, Any] = field(default_factory=dict)
    # The worker whose learning curve continues with these weights (None: a fresh curve).
    curve_from: int | None = None


@dataclass(frozen=True)
class Start(Effect):
    """Idle ``worker`` starts training ``checkpoint`` (written by ``donor``) with ``hparams``.

    It joins sub-population ``subpop``; ``annotations`` replace its algorithm-owned
    bookkeeping. The event ``kind`` records ``info``.
    """

    checkpoint: int
    donor: int
    hparams: Mapping[str, Any]
    subpop: int
    kind: str
    annotations: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop(Effect):
    """``worker`` stops and goes idle; its work in flight is void.

    The event ``kind`` records ``info`` followed by the worker's annotations.
    """

    kind: str
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GiveUp(Effect):
    """``worker`` stays failed (event ``failed`` with the last error)."""

    error: str


@dataclass(frozen=True)
class Annotate(Effect):
    """Merge ``info`` into ``worker``'s algorithm-owned bookkeeping (no event)."""

    info: Mapping[str, Any]
    settles: ClassVar[bool] = False


def json_number(x: float | None) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


__all__ = ["Annotate", "Continue", "Decision", "Effect", "GiveUp", "Overwrite", "Start", "Stop",
           "json_number"]
