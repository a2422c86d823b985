"""PyTorch Lightning: run an existing LightningModule + Trainer as a firepbt member.

Optional extra: ``pip install firepbt[lightning]``. A member is a training function; the
usual Lightning script needs three changes - the signature, the validation cadence and
:func:`fit` in place of ``trainer.fit``::

    def train_fn(hparams, checkpoint, report, seed):          # (1) a firepbt function
        pl.seed_everything(seed)
        model = LitClassifier(lr=hparams["lr"])               # your LightningModule
        trainer = pl.Trainer(max_steps=STEPS, val_check_interval=EVAL_EVERY,  # (2) validate
                             check_val_every_n_epoch=None, logger=False)      # every N steps
        fit(trainer, model, hparams, checkpoint, report, monitor="val_acc",   # (3)
            datamodule=FashionMNISTData())

    fp.run(train_fn, space, fp.FirePBT(population=8), steps=STEPS, interval=100,
           eval_every=EVAL_EVERY, store="runs/lit.db")

- **Segment boundary**: firepbt steps are Lightning optimiser steps (``trainer.global_step``);
  ``interval`` (and ``eval_every``) are counts of them. Use ``val_check_interval=eval_every``
  with ``check_val_every_n_epoch=None`` so every curve point is a fresh validation (FIRE PBT
  wants about 10 per interval).
- **Metric**: ``trainer.callback_metrics[monitor]`` after each validation (``mode="min"`` for a
  loss: it is negated, firepbt maximises).
- **Checkpoints** are Lightning checkpoints (``lightning.ckpt`` in firepbt's checkpoint folder,
  written by ``trainer.save_checkpoint``; loaded with ``weights_only=True``) plus
  ``applied.json``, the hyperparameter values read back along the lineage.
- **Hyperparameters** (``lr``, ``momentum``, ``weight_decay`` by default; see ``mapping``) are
  applied to every optimiser and LR scheduler in ``on_train_start`` - after Lightning restored
  their states from the checkpoint, which would otherwise bring back the donor's values -
  and whenever firepbt changes them; then read back and checked
  (:mod:`firepbt.integrations.effect`). With a scheduler, ``lr`` is its base (peak) lr.
  Names the module saved with ``save_hyperparameters()`` are updated in ``module.hparams``
  too, so a checkpoint never claims stale values.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from firepbt.integrations._paused import PausedLoop, Report
from firepbt.integrations.effect import DEFAULT_MAPPING

CKPT_FILE = "lightning.ckpt"


class FirePBTCallback(pl.Callback):
    """Pauses the Lightning loop at firepbt's step boundaries and keeps hparams in effect.

    Args:
        hparams: The live hyperparameter dict the training function received.
        report: The training function's ``report``.
        monitor: The logged validation metric that is the fitness.
        mode: "max" (accuracy) or "min" (a loss; negated for firepbt).
        mapping: Hyperparameter name -> optimiser param-group key.
    """

    def __init__(
        self,
        hparams: MutableMapping[str, Any],
        report: Report,
        monitor: str,
        mode: str = "max",
        mapping: Mapping[str, str] = DEFAULT_MAPPING,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: must be 'max' or 'min'")
        self.monitor = monitor
        self._trainer: pl.Trainer | None = None
        self.loop = PausedLoop(hparams, report, self._save, mapping, higher_is_better=mode == "max")

    def _save(self, path: Path) -> None:
        assert self._trainer is not None
        self._trainer.save_checkpoint(path / CKPT_FILE)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has restored optimiser and scheduler states by now (restore_training_state
        # runs before the fit loop starts): the one safe place to apply the member's values.
        scheds = [cfg.scheduler for cfg in trainer.lr_scheduler_configs]
        self.loop.started(trainer.optimizers, scheds, trainer.global_step)
        self._sync_module_hparams(pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.loop.before_step(trainer.global_step)
        self._sync_module_hparams(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self.loop.step_done(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            known = sorted(trainer.callback_metrics)
            raise KeyError(f"monitor={self.monitor!r} was not logged in validation; "
                           f"logged: {known}")
        self.loop.metric(float(value))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.loop.flush()

    def _sync_module_hparams(self, pl_module: pl.LightningModule) -> None:
        saved = getattr(pl_module, "hparams", None)
        if not isinstance(saved, MutableMapping):
            return
        for name in self.loop.mapping:
            if name in saved and name in self.loop.hparams:
                saved[name] = self.loop.hparams[name]

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.loop.log.entries}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loop.log.entries = list(state_dict.get("applied", []))


def fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    hparams: MutableMapping[str, Any],
    checkpoint: Path | None,
    report: Report,
    monitor: str,
    mode: str = "max",
    mapping: Mapping[str, str] = DEFAULT_MAPPING,
    **fit_kwargs: Any,
) -> None:
    """``trainer.fit(model, ...)`` as a firepbt member: resumes from ``checkpoint``, reports.

    Args:
        trainer: Your Trainer; it must validate every ``eval_every`` steps
            (``val_check_interval=eval_every, check_val_every_n_epoch=None``) and run at least
            the experiment's ``steps`` (``max_steps``).
        model: Your LightningModule.
        hparams, checkpoint, report: The training function's arguments, passed on.
        monitor, mode: The validation metric that is the fitness, and its direction.
        mapping: Hyperparameter name -> optimiser param-group key.
        **fit_kwargs: Passed to ``trainer.fit`` (``datamodule=``, ``train_dataloaders=``, ...).
    """
    if not isinstance(trainer.val_check_interval, int) or trainer.check_val_every_n_epoch:
        warnings.warn(
            f"Trainer(val_check_interval={trainer.val_check_interval!r}, "
            f"check_val_every_n_epoch={trainer.check_val_every_n_epoch!r}): firepbt's curve "
            "points reuse the last validation unless val_check_interval=eval_every (an int) "
            "and check_val_every_n_epoch=None",
            stacklevel=2,
        )
    callback = FirePBTCallback(hparams, report, monitor, mode, mapping)
    trainer.callbacks.append(callback)  # type: ignore[attr-defined]  # set in __init__
    ckpt = None if checkpoint is None else str(Path(checkpoint) / CKPT_FILE)
    trainer.fit(model, ckpt_path=ckpt, weights_only=True, **fit_kwargs)
