"""The example tasks' optimisers: SGD with momentum or Adam, or their Schedule-Free variants
as baselines.

A task's space picks one with the constant ``optimizer`` (``"sgd"``, ``"adam"``,
``"schedulefree"`` for Schedule-Free SGD or ``"schedulefree-adam"`` for Schedule-Free AdamW;
each task has its own default), e.g. ``--space 'lr=1.0; optimizer=schedulefree;
warmup_steps=100'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from firepbt.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "schedulefree", "schedulefree-adam")


def make_optimizer(model: nn.Module, hparams: Mapping[str, Any], default: str = "sgd",
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """The optimiser the space's constant ``optimizer`` names (``default`` without one).

    ``"sgd"``: SGD with momentum (hparams ``momentum``, default 0.9, and ``weight_decay``,
    default 0); ``"adam"``: Adam (``eps``, ``weight_decay``); ``"schedulefree"`` and
    ``"schedulefree-adam"``: Schedule-Free SGD and AdamW (Defazio et al. 2024), the baselines
    that remove the schedule PBT tunes. They need no decay: their ``lr`` is a constant peak
    and ``warmup_steps`` (a constant, default 0) ramps it up. They evaluate at averaged
    weights: see :func:`evaluation_weights`.
    """
    name = str(hparams.get("optimizer", default))
    lr = float(hparams["lr"])
    momentum = float(hparams.get("momentum", 0.9))
    weight_decay = float(hparams.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, eps=eps, weight_decay=weight_decay)
    if name in ("schedulefree", "schedulefree-adam"):
        try:
            import schedulefree
        except ImportError:
            raise ConfigError(f"optimizer={name!r} needs the schedulefree package: "
                              "pip install 'firepbt[torch]'") from None
        warmup_steps = int(hparams.get("warmup_steps", 0))
        free: Any = (
            schedulefree.SGDScheduleFree(model.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay, warmup_steps=warmup_steps)
            if name == "schedulefree" else
            schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, eps=eps,
                                           weight_decay=weight_decay, warmup_steps=warmup_steps)
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
