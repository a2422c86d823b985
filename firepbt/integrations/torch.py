"""PyTorch helper: one-line save/load/set_hparams for the usual model + optimiser.

PyTorch is an optional extra (``pip install firepbt[torch]``), so nothing else in firepbt
imports this module at import time; user code and the bundled tasks import it explicitly.

A checkpoint is the file ``state.pt`` inside the checkpoint directory. It holds the
model's and optimiser's state dicts, torch's global CPU RNG state (and the CUDA one when the
model trains on a GPU), the state of an optional ``torch.Generator`` (e.g. the one that orders
the data) and a user ``extra`` dict. Every tensor is saved on the CPU, so a checkpoint written
on one member's GPU loads on any other device, a CPU-only machine included.

Devices: :class:`TorchTrainable` trains each member on :func:`member_device` - the GPU its
worker was given (Ray sets ``CUDA_VISIBLE_DEVICES`` for an actor that asked for
``gpu=0.25``, so the first visible GPU is the member's share), else the CPU.
:class:`TorchTrainable` adds ``applied.json``: the hyperparameter values read back from the
optimiser and LR scheduler along the lineage (see :mod:`firepbt.integrations.effect`).
"""

from __future__ import annotations

import os
import pickle
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from firepbt.errors import CheckpointError
from firepbt.integrations.effect import (
    DEFAULT_MAPPING,
    AppliedLog,
    apply_and_check,
    check_applied,
    read_applied,
)
from firepbt.integrations.effect import apply_hparams as _apply_all
from firepbt.trainable import Trainable

STATE_FILE = "state.pt"
STATE_FORMAT = 1

def single_thread() -> None:
    """Limit torch to one intra-op thread.

    Several members train side by side on few cores; letting each grab every core makes them
    all slower through oversubscription.
    """
    torch.set_num_threads(1)


def member_device(preference: str = "auto") -> torch.device:
    """The device this worker's members train on.

    Args:
        preference: ``"auto"``: the first visible GPU when torch sees one in this worker
            process, else the CPU. Anything else is a torch device name (``"cpu"``,
            ``"cuda:1"``) used as it is.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def _on_cpu(value: Any) -> Any:
    """``value`` (a state dict, or containers of tensors) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, OrderedDict):
        out = OrderedDict((k, _on_cpu(v)) for k, v in value.items())
        # A module's state dict carries per-module versions that load_state_dict reads.
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_on_cpu(v) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _on_cuda(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Write model, optimiser, RNG states and ``extra`` to ``path / "state.pt"``.

    Args:
        path: Checkpoint directory; created if missing.
        model: The network whose ``state_dict`` is saved.
        optimizer: The optimiser whose ``state_dict`` (momentum buffers, hparams) is saved.
        extra: Small user state (step counters, data cursors). Keep it to tensors, numbers,
            strings and containers of them so it loads with ``weights_only=True``.
        generator: A torch generator whose state is saved too, e.g. the data-order generator.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Tensors go to the CPU first: a checkpoint is loaded by other members, on other GPUs or
    # none, and a tensor saved with its CUDA device would not load where that device is
    # missing.
    state = _on_cpu({
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if _on_cuda(model) else None,
        "generator": None if generator is None else generator.get_state(),
        "extra": dict(extra or {}),
    })
    # Write then rename so a crash mid-write never leaves a truncated state.pt behind.
    tmp = path / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)


def load_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote into ``model``, ``optimizer`` and the RNGs.

    The file is read onto the CPU; the weights then go to wherever ``model`` is, and the
    optimiser state to its parameters' device.

    Args:
        path: Checkpoint directory holding ``state.pt``.
        model: A model of the same architecture; its parameters are overwritten in place.
        optimizer: An optimiser over ``model``'s parameters; its state is overwritten.
        generator: Receives the saved generator state (when one was saved).

    Returns:
        The ``extra`` dict given to :func:`save_state`.

    Raises:
        CheckpointError: ``state.pt`` is missing, holds an object outside torch's
            ``weights_only`` allow-list, or was written by an unknown format version.
    """
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {str(file)!r} is missing")
    try:
        # weights_only=True only: a checkpoint may come from shared storage or another member,
        # and full unpickling would run whatever code the file names.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds an object torch refuses to load with "
            f"weights_only=True ({str(exc).splitlines()[0]}); keep extra_state() to tensors, "
            "numbers, strings, lists, tuples and dicts of them (e.g. torch.from_numpy(arr) "
            "instead of a numpy array, float(x) instead of a numpy scalar)"
        ) from None
    fmt = state.get("format")
    if fmt != STATE_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(file)!r} has format {fmt!r}; this version reads {STATE_FORMAT}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and _on_cuda(model):
        torch.cuda.set_rng_state(state["cuda_rng"])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    return dict(state["extra"])


def apply_hparams(
    optimizer: torch.optim.Optimizer,
    hparams: Mapping[str, Any],
    mapping: Mapping[str, str] = DEFAULT_MAPPING,
) -> None:
    """Set hyperparameters on every param group of ``optimizer`` in place.

    Only hyperparameters named in both ``mapping`` and ``hparams`` are touched, so a space
    without ``weight_decay`` leaves the optimiser's weight decay alone.

    Args:
        optimizer: The optimiser to update.
        hparams: Current hyperparameters (flat dict).
        mapping: Hyperparameter name -> param-group key, e.g. ``{"lr": "lr"}``.

    Raises:
        ConfigError: A mapped hyperparameter is present but the optimiser's param groups have
            no such key (e.g. ``momentum`` with Adam, which has ``betas``).
    """
    _apply_all([optimizer], [], hparams, mapping)


class TorchTrainable(Trainable):
    """A :class:`~firepbt.trainable.Trainable` for one torch model + optimiser.

    Implement :meth:`build`, :meth:`train_step` and ``evaluate``; setup, train, save, load and
    set_hparams are provided. Set ``self.generator`` in :meth:`build` to a ``torch.Generator``
    that drives all of the member's randomness (data order, sampling) and it is checkpointed
    with the weights, so a restored member continues bit-identically.
    ``self.step`` counts training steps and is checkpointed too. ``load`` expects ``setup`` to
    have run first (it fills an existing model).

    Set ``self.scheduler`` in :meth:`build` to an LR scheduler (stepped by your
    :meth:`train_step`) and it is checkpointed too; ``hparams["lr"]`` is then its base lr.
    After setup, every load and every ``set_hparams`` the values are read back from the
    optimiser and scheduler and checked (:mod:`firepbt.integrations.effect`), and again before
    each save, so a restore or scheduler that overwrote a hyperparameter raises
    :class:`~firepbt.integrations.effect.NotInEffectError` instead of training silently with
    the wrong value.

    Devices: ``self.device`` is set before :meth:`build` runs and the built model is moved
    there, so a member uses the GPU its worker was given and a CPU-only machine runs the same
    code on the CPU. Put batches on ``self.device`` in :meth:`train_step` and ``evaluate``
    (``x.to(self.device)``). Checkpoints are device-independent (see :func:`save_state`).

    Class attributes:
        HPARAM_MAPPING: Hyperparameter name -> optimiser param-group key.
        DEVICE: ``"auto"`` (default, see :func:`member_device`), or a torch device name.
    """

    HPARAM_MAPPING: ClassVar[Mapping[str, str]] = DEFAULT_MAPPING
    DEVICE: ClassVar[str] = "auto"

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator | None
    scheduler: Any
    step: int
    device: torch.device

    def __init__(self) -> None:
        super().__init__()
        self.generator = None
        self.scheduler = None
        self.step = 0
        self.applied = AppliedLog()

    @abstractmethod
    def build(
        self, hparams: Mapping[str, Any], seed: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Return a fresh ``(model, optimizer)`` for ``hparams`` and ``seed``."""

    @abstractmethod
    def train_step(self) -> None:
        """Run one optimisation step (one minibatch)."""

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.hparams = dict(hparams)
        self.seed = seed
        self.step = 0
        self.device = member_device(self.DEVICE)
        self.model, self.optimizer = self.build(self.hparams, seed)
        # Module.to moves parameters in place, so the optimiser built over them still holds
        # the same tensors.
        self.model.to(self.device)
        # Fail on a mapping/optimiser mismatch now rather than at the first explore.
        self._apply("at setup")

    def _schedulers(self) -> list[Any]:
        return [] if self.scheduler is None else [self.scheduler]

    def _apply(self, where: str) -> None:
        applied = apply_and_check([self.optimizer], self._schedulers(), self.hparams,
                                  f"{where} (step {self.step})", self.HPARAM_MAPPING)
        self.applied.record(self.step, applied)

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            self.train_step()
            self.step += 1

    def extra_state(self) -> dict[str, Any]:
        """State besides weights/optimiser/RNG to checkpoint; extend in subclasses."""
        extra: dict[str, Any] = {"step": self.step}
        if self.scheduler is not None:
            extra["scheduler"] = self.scheduler.state_dict()
        return extra

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned; extend in subclasses."""
        self.step = int(extra.get("step", 0))
        if self.scheduler is not None and "scheduler" in extra:
            self.scheduler.load_state_dict(extra["scheduler"])

    def save(self, path: Path) -> None:
        # Training may have overwritten a value (a scheduler rebuilt from build-time hparams):
        # catch it before the checkpoint claims these hparams.
        applied = read_applied([self.optimizer], self._schedulers(), self.hparams,
                               self.HPARAM_MAPPING)
        check_applied(self.hparams, applied, f"before save (step {self.step})")
        save_state(path, self.model, self.optimizer, self.extra_state(), self.generator)
        self.applied.save(Path(path))

    def load(self, path: Path) -> None:
        self.load_extra_state(load_state(path, self.model, self.optimizer, self.generator))
        self.applied.load(Path(path))
        # The checkpoint carries the donor's hparams inside the optimiser and scheduler state;
        # the member's own (possibly explored) hparams must win.
        self._apply("after load")

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        self._apply("after set_hparams")
