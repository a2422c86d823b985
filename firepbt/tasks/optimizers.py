"""The example tasks' optimisers: SGD with momentum, or Schedule-Free SGD as a baseline.

A task's space picks one with the constant ``optimizer`` (``"sgd"``, the default, or
``"schedulefree"``), e.g. ``--space 'lr=1.0; optimizer=schedulefree; warmup_steps=100'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from firepbt.errors import ConfigError

OPTIMIZERS = ("sgd", "schedulefree")


def make_optimizer(model: nn.Module, hparams: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum (hparams ``momentum``, default 0.9, and ``weight_decay``, default 0), or
    Schedule-Free SGD (Defazio et al. 2024) when the space's constant
    ``optimizer`` is ``"schedulefree"``: the baseline that removes the schedule PBT tunes.

    Schedule-Free needs no decay; its ``lr`` is a constant peak and ``warmup_steps`` (a
    constant, default 0) ramps it up. It evaluates at averaged weights: see
    :func:`evaluation_weights`.
    """
    name = str(hparams.get("optimizer", "sgd"))
    lr = float(hparams["lr"])
    momentum = float(hparams.get("momentum", 0.9))
    weight_decay = float(hparams.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "schedulefree":
        try:
            import schedulefree
        except ImportError:
            raise ConfigError("optimizer='schedulefree' needs the schedulefree package: "
                              "pip install 'firepbt[torch]'") from None
        free: Any = schedulefree.SGDScheduleFree(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
            warmup_steps=int(hparams.get("warmup_steps", 0)),
        )
        free.train()  # Schedule-Free optimisers track train/eval mode like a module
        return free
    raise ConfigError(f"optimizer={name!r}: must be one of {', '.join(OPTIMIZERS)}")


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Evaluate a Schedule-Free member at its averaged weights (the optimiser's eval mode),
    then switch back; a no-op for other optimisers."""
    mode: Any = optimizer
    if not hasattr(mode, "eval"):
        yield
        return
    mode.eval()
    try:
        yield
    finally:
        mode.train()
