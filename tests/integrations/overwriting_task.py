"""A torch task whose training code overwrites the scheduler's base lr (a user bug); used by
test_effect.py through process workers, which import this file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from firepbt.integrations.torch import TorchTrainable, single_thread
from firepbt.space import LogUniform, Space


class OverwritingTask(TorchTrainable):
    """Resets its scheduler's base lr to a hard-coded 0.01 every step: firepbt's lr is lost."""

    SPACE: ClassVar[Space] = Space(lr=LogUniform(1e-3, 0.1))

    def build(self, hparams: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        single_thread()
        torch.manual_seed(seed)
        model = nn.Linear(2, 1)
        self.generator = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=hparams["lr"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return model, opt

    def train_step(self) -> None:
        x = torch.randn(8, 2, generator=self.generator)
        self.optimizer.zero_grad()
        nn.functional.mse_loss(self.model(x), x.sum(1, keepdim=True)).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.scheduler.base_lrs = [0.01]  # the bug: a hard-coded base lr

    def evaluate(self) -> float:
        with torch.no_grad():
            return -float(self.model.weight.sub(1.0).abs().sum())
