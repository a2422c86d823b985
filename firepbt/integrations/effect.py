"""Apply hyperparameters to optimisers and LR schedulers, then check they are in effect.

The most common silent failure in PBT tools is a mutated hyperparameter that never takes effect
after a restore: the restored optimiser state carries the donor's lr, or an LR scheduler
recomputes the lr from its saved ``base_lrs`` at the next step (Ray Tune #62173, Lightning's
saved hyperparameters, the Hugging Face scheduler's base rates). Every integration therefore
calls :func:`apply_and_check` after each load and each ``set_hparams``: it writes the values,
reads back what the optimiser's param groups and the scheduler really hold, and raises
:class:`NotInEffectError` (naming the hyperparameter, the wanted and the actual value) on a
mismatch. The values read back are "applied" values; :class:`AppliedLog` keeps them per step
and writes them into every checkpoint as ``applied.json`` so the whole lineage's history
survives checkpoint retention (each checkpoint carries its ancestors' entries).

Semantics with a scheduler: the hyperparameter ``lr`` is the scheduler's *base* lr (its peak
for warm-up/cosine schedules). Setting it rescales the current lr by the same factor, so the
schedule's shape continues and the next ``scheduler.step()`` uses the new base.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from firepbt.errors import ConfigError

APPLIED_FILE = "applied.json"

DEFAULT_MAPPING: Mapping[str, str] = {
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
}
"""Hyperparameter name -> optimiser param-group key."""

REL_TOL = 1e-9  # values go through float() only; anything looser would hide a real overwrite


class NotInEffectError(ConfigError):
    """A hyperparameter's value in the optimiser or scheduler is not the one firepbt set."""


def _as_float(value: Any) -> Any:
    # numpy scalars from the search space become plain floats, as torch's own hparams are.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _unwrap(optimizer: Any) -> Any:
    """The torch optimiser inside a wrapper (accelerate's AcceleratedOptimizer, Lightning's)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _schedulers_of(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any]) -> list[Any]:
    """The schedulers driving ``optimizer``, including those inside SequentialLR/Chained."""
    found: list[Any] = []
    todo = list(schedulers)
    while todo:
        s = todo.pop(0)
        todo += list(getattr(s, "_schedulers", []))
        if _unwrap(getattr(s, "optimizer", None)) is _unwrap(optimizer) and s not in found:
            found.append(s)
    return found


def apply_hparams(
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    hparams: Mapping[str, Any],
    mapping: Mapping[str, str] = DEFAULT_MAPPING,
) -> None:
    """Write ``hparams`` into every param group of ``optimizers`` and their schedulers.

    Only names in both ``mapping`` and ``hparams`` are touched. For the ``lr`` key of an
    optimiser driven by a scheduler with ``base_lrs``, the base lr (``scheduler.base_lrs`` and
    the group's ``initial_lr``) becomes the value and the current lr is rescaled by the same
    factor (see the module docstring).

    Raises:
        ConfigError: A mapped hyperparameter is present but a param group has no such key.
    """
    for name, key in mapping.items():
        if name not in hparams:
            continue
        value = _as_float(hparams[name])
        for opt in optimizers:
            scheds = _schedulers_of(opt, schedulers) if key == "lr" else []
            for i, group in enumerate(opt.param_groups):
                if key not in group:
                    known = sorted(k for k in group if k != "params")
                    raise ConfigError(
                        f"hparam {name!r} maps to optimizer key {key!r}, which "
                        f"{type(opt).__name__} param groups lack; known keys: {known}"
                    )
                based = [s for s in scheds if isinstance(getattr(s, "base_lrs", None), list)]
                if not based:
                    group[key] = value
                    continue
                old_base = float(based[0].base_lrs[i])
                factor = float(group[key]) / old_base if old_base > 0 else 1.0
                for s in based:
                    s.base_lrs[i] = value
                    last = getattr(s, "_last_lr", None)
                    if isinstance(last, list) and i < len(last):
                        last[i] = value * factor
                group["initial_lr"] = value
                group[key] = value * factor


def read_applied(
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    names: Iterable[str],
    mapping: Mapping[str, str] = DEFAULT_MAPPING,
) -> dict[str, list[float]]:
    """What the optimisers and schedulers hold for each mapped name in ``names``.

    Returns ``{name: [value per param group, over all optimisers]}``. For ``lr`` under a
    scheduler with ``base_lrs`` the values are the base lr wherever it is kept (each
    scheduler's ``base_lrs`` entry, then the group's ``initial_lr``), and ``"lr_now"`` lists
    the lr each group's next step uses.
    """
    out: dict[str, list[float]] = {}
    for name in names:
        key = mapping.get(name)
        if key is None:
            continue
        values: list[float] = []
        now: list[float] = []
        for opt in optimizers:
            scheds = _schedulers_of(opt, schedulers) if key == "lr" else []
            based = [s for s in scheds if isinstance(getattr(s, "base_lrs", None), list)]
            for i, group in enumerate(opt.param_groups):
                if key not in group:
                    continue
                if based:
                    # The base lr lives in two places: the scheduler computes from base_lrs,
                    # a chainable scheduler or a rebuilt one from the group's initial_lr. A
                    # restore that overwrote either is a silent failure, so read both.
                    values += [float(s.base_lrs[i]) for s in based]
                    values.append(float(group.get("initial_lr", based[0].base_lrs[i])))
                    now.append(float(group[key]))
                else:
                    values.append(float(group[key]))
        out[name] = values
        if now:
            out["lr_now"] = now
    return out


def check_applied(
    wanted: Mapping[str, Any],
    applied: Mapping[str, list[float]],
    where: str,
) -> None:
    """Raise :class:`NotInEffectError` unless every applied value equals the wanted one.

    Args:
        wanted: The member's hyperparameters.
        applied: :func:`read_applied`'s answer.
        where: When the check ran, for the message (e.g. "after load at step 400").
    """
    for name, values in applied.items():
        if name not in wanted:
            continue
        want = _as_float(wanted[name])
        if not isinstance(want, float):
            continue
        for i, got in enumerate(values):
            if not math.isclose(got, want, rel_tol=REL_TOL, abs_tol=0.0):
                raise NotInEffectError(
                    f"hyperparameter {name!r} is not in effect {where}: wanted {want!r}, but "
                    f"value {i} read back (param groups, then LR scheduler base_lrs and "
                    f"initial_lr) is {got!r}; "
                    "something restored or recomputed it after firepbt set it (an optimizer "
                    "or scheduler state loaded later, a scheduler built from saved "
                    "hyperparameters, or a hand-written lr schedule: use an LR scheduler, "
                    "whose base lr firepbt sets)"
                )


def apply_and_check(
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    hparams: Mapping[str, Any],
    where: str,
    mapping: Mapping[str, str] = DEFAULT_MAPPING,
) -> dict[str, list[float]]:
    """:func:`apply_hparams`, then :func:`read_applied` and :func:`check_applied`."""
    apply_hparams(optimizers, schedulers, hparams, mapping)
    applied = read_applied(optimizers, schedulers, hparams, mapping)
    check_applied(hparams, applied, where)
    return applied


class AppliedLog:
    """The applied values along one lineage, oldest first: ``[{"step", "applied"}, ...]``.

    Saved into every checkpoint (``applied.json``) and read back on load, so the newest
    checkpoint of the best member holds its lineage's whole applied history.
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def record(self, step: int, applied: Mapping[str, list[float]]) -> None:
        entry = {"step": int(step), "applied": {k: list(v) for k, v in applied.items()}}
        # A continue without change re-records the same values; keep the history short.
        if self.entries and self.entries[-1]["applied"] == entry["applied"]:
            return
        # A restore to an earlier step (exploit) drops the entries from the abandoned future.
        self.entries = [e for e in self.entries if e["step"] < entry["step"]]
        self.entries.append(entry)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{APPLIED_FILE}.tmp"
        tmp.write_text(json.dumps(self.entries), encoding="utf-8")
        os.replace(tmp, directory / APPLIED_FILE)

    def load(self, directory: Path) -> None:
        self.entries = read_applied_file(directory)


def read_applied_file(directory: str | Path) -> list[dict[str, Any]]:
    """The applied history saved in checkpoint ``directory`` (``[]`` when it has none)."""
    file = Path(directory) / APPLIED_FILE
    if not file.is_file():
        return []
    entries = json.loads(file.read_text(encoding="utf-8"))
    return entries if isinstance(entries, list) else []
