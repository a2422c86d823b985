"""firepbt.integrations.lightning: a LightningModule + Trainer as a member."""

from __future__ import annotations

import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import firepbt as fp  # noqa: E402
from firepbt.integrations.effect import NotInEffectError, read_applied_file  # noqa: E402
from firepbt.integrations.lightning import CKPT_FILE, fit  # noqa: E402
from firepbt.trainable import make_trainable_class  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 20)


class LitRegression(pl.LightningModule):
    """A linear model whose optimiser and LambdaLR are built from ``self.hparams.lr``."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(4, 1)
        self.seen_lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return (DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False),
            DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64))


MODELS: list[LitRegression] = []
MODULE: list[type[LitRegression]] = [LitRegression]


def train_fn(hparams: MutableMapping[str, Any], checkpoint: Path | None, report: Any,
             seed: int) -> None:
    pl.seed_everything(seed, verbose=False)
    model = MODULE[0](lr=hparams["lr"])
    MODELS.append(model)
    trainer = pl.Trainer(
        max_steps=200, val_check_interval=5, check_val_every_n_epoch=None, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train, val = loaders()
    fit(trainer, model, hparams, checkpoint, report, monitor="val_loss", mode="min",
        train_dataloaders=train, val_dataloaders=val)


def member() -> Any:
    return make_trainable_class(train_fn)()


def test_steps_metrics_and_a_restore_that_keeps_the_members_lr(tmp_path: Path) -> None:
    MODELS.clear()
    donor = member()
    donor.setup({"lr": 0.05}, 0)
    donor.train(5)
    first = donor.evaluate()
    donor.train(25)
    assert donor.evaluate() > first  # -val_loss improves
    donor.save(tmp_path / "ck")
    assert (tmp_path / "ck" / CKPT_FILE).is_file()

    # The member restores the donor's Lightning checkpoint (optimiser + LambdaLR states with
    # base lr 0.05) but must train with its own lr 0.01.
    m = member()
    m.setup({"lr": 0.01}, 1)
    m.load(tmp_path / "ck")
    m.set_hparams({"lr": 0.01})
    m.train(5)
    lit = MODELS[-1]
    assert lit.trainer.global_step == 35
    assert lit.seen_lrs[0] == pytest.approx(0.01 * warmup(30))
    assert lit.seen_lrs[-1] == pytest.approx(0.01 * warmup(34))
    m.set_hparams({"lr": 0.002})
    m.train(2)
    assert lit.seen_lrs[-1] == pytest.approx(0.002 * warmup(36))
    assert lit.hparams.lr == 0.002  # the saved hyperparameters follow
    m.save(tmp_path / "ck2")
    history = read_applied_file(tmp_path / "ck2")
    assert [(e["step"], e["applied"]["lr"][0]) for e in history] == [
        (0, 0.05), (30, 0.01), (35, 0.002)]
    ckpt = torch.load(tmp_path / "ck2" / CKPT_FILE, weights_only=True)
    assert ckpt["hyper_parameters"]["lr"] == 0.002
    donor._stop_thread()
    m._stop_thread()


class OverwritingRegression(LitRegression):
    """A user bug: on_train_start (after firepbt applied lr) reloads a saved scheduler state."""

    state: dict[str, Any] = {}

    def on_train_start(self) -> None:
        self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(self.state)


def test_a_scheduler_that_overwrites_the_mutated_lr_is_an_error(tmp_path: Path) -> None:
    donor = member()
    donor.setup({"lr": 0.05}, 0)
    donor.train(5)
    donor.save(tmp_path)
    state = torch.load(tmp_path / CKPT_FILE, weights_only=True)["lr_schedulers"][0]
    donor._stop_thread()
    OverwritingRegression.state = state
    MODULE[0] = OverwritingRegression
    try:
        m = member()
        m.setup({"lr": 0.01}, 1)
        m.load(tmp_path)
        m.set_hparams({"lr": 0.01})
        with pytest.raises(NotInEffectError, match=r"'lr'.*at step 5.*wanted 0\.01.*0\.05"):
            m.train(1)
    finally:
        MODULE[0] = LitRegression


def test_population_run_in_process(tmp_path: Path) -> None:
    space = fp.Space(lr=fp.LogUniform(1e-3, 0.1))
    res = fp.run(train_fn, space, fp.PBT(population=3), steps=60, interval=20, eval_every=5,
                 store=str(tmp_path / "lit.db"), executor="inprocess")
    assert res.status() == "finished"
    curve = res.curves()[res.best]
    assert len([s for s, _ in curve if s <= 20]) == 4  # a curve point every eval_every steps
    assert res.best_metric is not None and res.best_metric > -1.0
