"""Shared logic of the Lightning and Hugging Face callbacks.

Both frameworks own their training loop, so a member is a training *function*
(``fn(hparams, checkpoint, report)``, see :class:`firepbt.trainable.FunctionTrainable`) that
builds the model and the framework's trainer and calls its ``fit``/``train`` once. The loop
runs in a thread that firepbt pauses inside ``report`` between its steps; a callback reports
each finished optimiser step at the start of the next one (so the step's scheduler update and
any validation after it are done), applies changed hyperparameters, and checks they are in
effect. The first check runs when the framework has restored the optimiser and scheduler from
the checkpoint - the point where other tools silently lose a mutated value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from firepbt.integrations.effect import (
    DEFAULT_MAPPING,
    AppliedLog,
    apply_and_check,
    check_applied,
    read_applied,
)

Report = Callable[..., None]


class PausedLoop:
    """Step bookkeeping, hyperparameter application and checks for one framework loop.

    Args:
        hparams: The live dict firepbt updates in place (the function's ``hparams``).
        report: The function's ``report``.
        save: Writes the framework's checkpoint into a directory (called by firepbt while the
            loop is paused).
        mapping: Hyperparameter name -> optimiser param-group key.
        higher_is_better: False for a loss-like metric (it is negated for firepbt).
    """

    def __init__(
        self,
        hparams: MutableMapping[str, Any],
        report: Report,
        save: Callable[[Path], None],
        mapping: Mapping[str, str] = DEFAULT_MAPPING,
        higher_is_better: bool = True,
    ) -> None:
        self.hparams = hparams
        self.report = report
        self._save_framework = save
        self.mapping = dict(mapping)
        self.sign = 1.0 if higher_is_better else -1.0
        self.log = AppliedLog()
        self._applied_hparams: dict[str, Any] | None = None
        self._pending_step: int | None = None
        self._metric: float | None = None
        self._opts: Sequence[Any] = ()
        self._scheds: Sequence[Any] = ()

    def started(self, optimizers: Sequence[Any], schedulers: Sequence[Any], step: int) -> None:
        """The framework restored everything and is about to train: apply and check."""
        self._opts, self._scheds = list(optimizers), list(schedulers)
        self._apply(step, "after the framework restored its checkpoint")

    def metric(self, value: Any) -> None:
        """A validation metric for the step just finished."""
        self._metric = None if value is None else self.sign * float(value)

    def step_done(self, step: int) -> None:
        """An optimiser step finished (``step`` steps done); it is reported at the next start."""
        self._pending_step = step

    def before_step(self, step: int) -> None:
        """Report the previous step (pauses here between segments), then apply changes."""
        self.flush()
        if self._applied_hparams != dict(self.hparams):
            self._apply(step, "after set_hparams")
        else:
            # Nothing changed: verify anyway, so a scheduler or user code that overwrote a
            # value during the last step is caught at once.
            applied = read_applied(self._opts, self._scheds, self.hparams, self.mapping)
            check_applied(self.hparams, applied, f"at step {step}")

    def flush(self) -> None:
        """Report the pending step, if any (also called when the loop ends)."""
        if self._pending_step is None:
            return
        self._pending_step = None
        metric, self._metric = self._metric, None
        self.report(metric, save=self.save)

    def save(self, path: Path) -> None:
        applied = read_applied(self._opts, self._scheds, self.hparams, self.mapping)
        check_applied(self.hparams, applied, "before save")
        self._save_framework(Path(path))
        self.log.save(Path(path))

    def _apply(self, step: int, where: str) -> None:
        applied = apply_and_check(self._opts, self._scheds, self.hparams,
                                  f"{where} (step {step})", self.mapping)
        self._applied_hparams = dict(self.hparams)
        self.log.record(step, applied)
