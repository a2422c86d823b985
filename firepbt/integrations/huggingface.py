"""Hugging Face ``transformers.Trainer``: run an existing Trainer as a firepbt member.

Optional extra: ``pip install firepbt[huggingface]``. A member is a training function that
builds its Trainer as usual and calls :func:`train` instead of ``trainer.train()``::

    def train_fn(hparams, checkpoint, report, seed):
        args = TrainingArguments(output_dir=..., learning_rate=hparams["lr"], seed=seed,
                                 max_steps=STEPS, eval_strategy="steps", eval_steps=EVAL_EVERY,
                                 save_strategy="no", report_to="none")
        trainer = Trainer(model=make_model(seed), args=args, train_dataset=train_ds,
                          eval_dataset=val_ds, compute_metrics=accuracy)
        train(trainer, hparams, checkpoint, report, monitor="eval_accuracy")

or, for a quick search in one process, :func:`hyperparameter_search` with a
``trainer_init(hparams, seed) -> Trainer`` (like ``Trainer.hyperparameter_search``'s
``model_init``).

- **Segment boundary**: firepbt steps are ``state.global_step`` (optimiser steps). Evaluate every
  ``eval_every`` steps (``eval_strategy="steps", eval_steps=eval_every``): each evaluation is a
  curve point (``metrics[monitor]``; ``mode="min"`` negates a loss).
- **Checkpoints** are the Trainer's own checkpoint folders (model, ``optimizer.pt``,
  ``scheduler.pt``, RNG and trainer state; ``hf/`` inside firepbt's checkpoint) plus
  ``applied.json``; a member resumes with ``trainer.train(resume_from_checkpoint=...)``.
- **Hyperparameters**: ``lr`` (or ``learning_rate``) is the scheduler's base learning rate, the
  peak of a warm-up/linear schedule. ``weight_decay`` is not mapped by default (the Trainer
  keeps biases and norms in a group with decay 0.0). They are applied in ``on_train_begin`` -
  after the Trainer loaded the donor's optimiser and scheduler, whose saved base rates would
  otherwise win - and whenever firepbt changes them, then read back and checked.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from firepbt.integrations._paused import PausedLoop, Report

HF_DIR = "hf"
# weight_decay is left out: the Trainer keeps biases and norms in a group with decay 0.0 that
# one value for every group would overwrite. Pass a mapping to tune it anyway.
HF_MAPPING: Mapping[str, str] = {"lr": "lr", "learning_rate": "lr", "momentum": "momentum"}


def _raw(obj: Any, attr: str) -> Any:
    """Accelerate wraps optimiser and scheduler; the in-effect check reads the real ones."""
    inner = getattr(obj, attr, None)
    return inner if inner is not None and type(obj).__module__.startswith("accelerate") else obj


class FirePBTTrainerCallback(TrainerCallback):
    """Pauses the Trainer at firepbt's step boundaries and keeps hyperparameters in effect.

    Args:
        trainer: The Trainer it is added to (it writes the checkpoints).
        hparams, report: The training function's arguments.
        monitor: Key of the evaluation metrics that is the fitness (e.g. ``eval_accuracy``).
        mode: "max" or "min" (a loss; negated for firepbt).
        mapping: Hyperparameter name -> optimiser param-group key.
    """

    def __init__(
        self,
        trainer: Trainer,
        hparams: MutableMapping[str, Any],
        report: Report,
        monitor: str,
        mode: str = "max",
        mapping: Mapping[str, str] = HF_MAPPING,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: must be 'max' or 'min'")
        self.trainer = trainer
        self.monitor = monitor
        self.loop = PausedLoop(hparams, report, self._save, mapping, higher_is_better=mode == "max")

    def _save(self, path: Path) -> None:
        t = self.trainer
        assert t.model is not None and t.args.output_dir is not None
        t._save_checkpoint(t.model, trial=None)  # the Trainer's own complete checkpoint
        written = Path(t.args.output_dir) / f"checkpoint-{t.state.global_step}"
        target = path / HF_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(written), str(target))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer has loaded optimizer.pt and scheduler.pt by now (the donor's rates).
        opt = _raw(kwargs["optimizer"], "optimizer")
        sched = _raw(kwargs["lr_scheduler"], "scheduler")
        self.loop.started([opt], [sched], state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.loop.before_step(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.loop.step_done(state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        metrics = kwargs.get("metrics") or {}
        if self.monitor not in metrics:
            raise KeyError(f"monitor={self.monitor!r} is not among the evaluation metrics "
                           f"{sorted(metrics)}")
        self.loop.metric(metrics[self.monitor])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.loop.flush()


def train(
    trainer: Trainer,
    hparams: MutableMapping[str, Any],
    checkpoint: Path | None,
    report: Report,
    monitor: str,
    mode: str = "max",
    mapping: Mapping[str, str] = HF_MAPPING,
) -> None:
    """``trainer.train()`` as a firepbt member: resumes from ``checkpoint``, reports.

    Args:
        trainer: Your Trainer, with ``max_steps`` >= the experiment's steps and
            ``eval_strategy="steps", eval_steps=eval_every``.
        hparams, checkpoint, report: The training function's arguments, passed on.
        monitor, mode: The evaluation metric that is the fitness, and its direction.
        mapping: Hyperparameter name -> optimiser param-group key (``lr`` and
            ``learning_rate`` both mean the learning rate).
    """
    callback = FirePBTTrainerCallback(trainer, hparams, report, monitor, mode, mapping)
    trainer.add_callback(callback)
    resume = None
    if checkpoint is not None:
        resume = str(Path(checkpoint) / HF_DIR)
        callback.loop.log.load(Path(checkpoint))  # the lineage's applied history so far
    trainer.train(resume_from_checkpoint=resume)


def hyperparameter_search(
    trainer_init: Callable[[Mapping[str, Any], int], Trainer],
    space: Any,
    algorithm: Any,
    *,
    monitor: str,
    mode: str = "max",
    **run_kwargs: Any,
) -> Any:
    """Tune a Trainer's hyperparameter schedule with PBT/FIRE PBT, in this process.

    Like ``Trainer.hyperparameter_search(model_init=...)``: ``trainer_init(hparams, seed)``
    returns a fresh Trainer for a member. Members train one at a time in this process
    (``executor="inprocess"``); for worker processes write a module-level training function
    with :func:`train` and pass it to :func:`firepbt.run`.

    Args:
        trainer_init: Builds a member's Trainer (``max_steps``, ``eval_steps`` set as for
            :func:`train`).
        space, algorithm: As for :func:`firepbt.run`.
        monitor, mode: The evaluation metric that is the fitness, and its direction.
        **run_kwargs: Passed to :func:`firepbt.run` (``steps``, ``interval``, ``eval_every``,
            ``store``, ``seed``, ...).

    Returns:
        The :class:`firepbt.Result`.
    """
    import firepbt

    def member(hparams: MutableMapping[str, Any], checkpoint: Path | None, report: Report,
               seed: int) -> None:
        train(trainer_init(hparams, seed), hparams, checkpoint, report, monitor, mode)

    run_kwargs.setdefault("executor", "inprocess")
    return firepbt.run(member, space, algorithm, **run_kwargs)
