"""The teacher-student task with K members trained at once (stacked weights, ``torch.bmm``).

Slot ``k`` is exactly the member :class:`~firepbt.tasks.teacher_student.TeacherStudent` builds
from the same seed: the same initial weights, the same stream of training batches, SGD with
momentum 0.9 at its own learning rate, and the same -FVU metric, up to float rounding (a batched
product may sum in another order). Checkpoints use the single-member format (``state.pt`` of
:mod:`firepbt.integrations.torch`), so either task can restore the other's checkpoints.

Weights are stored transposed, ``[K, in, out]``, so a layer is ``baddbmm(bias, x, w)``.
Nothing mixes slots: each slot's loss depends on its own weights only and gradients of the
summed losses are the per-slot gradients, so a diverging member cannot disturb the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from firepbt.batched_trainable import BatchedTrainable, check_reslot
from firepbt.errors import ConfigError
from firepbt.integrations.torch import load_state, save_state, single_thread
from firepbt.space import Space
from firepbt.tasks.teacher_student import (
    BATCH_SIZE,
    DIM,
    HIDDEN,
    MOMENTUM,
    NOISE_STD,
    TeacherStudent,
    _derived_seed,
    eval_set,
    fvu,
    make_student,
    teacher,
)

#: ``make_student()``'s parameter names in ``parameters()`` order; weights are stored transposed.
PARAM_NAMES = ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")


def _lr(hparams: Mapping[str, Any]) -> float:
    if "lr" not in hparams:
        raise ConfigError(f"hparams={dict(hparams)!r}: the teacher-student task needs 'lr'")
    if hparams.get("optimizer", "sgd") != "sgd":
        raise ConfigError(f"optimizer={hparams['optimizer']!r}: the batched teacher-student "
                          "task trains with SGD only; use the single task (teacher-student)")
    return float(hparams["lr"])


def _to_slot(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A torch Linear parameter as stored in a slot: weight transposed, bias as a row."""
    return tensor.t().contiguous() if name.endswith("weight") else tensor.unsqueeze(0)


def _from_slot(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous() if name.endswith("weight") else tensor.squeeze(0)


class BatchedTeacherStudent(BatchedTrainable):
    """Online teacher-student regression, K members per process (spec fire-pbt.md section 11).

    ``evaluate()`` returns -FVU per slot on the 20,000 fixed inputs, like
    :meth:`TeacherStudent.evaluate`. Same ``SPACE`` and ``DEFAULTS`` as the single task.
    """

    SPACE: ClassVar[Space] = TeacherStudent.SPACE
    DEFAULTS: ClassVar[dict[str, int]] = TeacherStudent.DEFAULTS

    params: list[torch.Tensor]  # [K, in, out] weights and [K, 1, out] biases, PARAM_NAMES order
    buffers: list[torch.Tensor]  # momentum buffers, same shapes
    generators: list[torch.Generator]
    steps: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.params, self.buffers, self.generators, self.steps = [], [], [], []
        # Whether a slot has taken a step: the single task saves no momentum buffer before.
        self._moved: list[bool] = []
        self._lr = torch.zeros(0, 1, 1)

    # -- building ------------------------------------------------------------------------------

    @staticmethod
    def _fresh(seed: int) -> tuple[list[torch.Tensor], torch.Generator]:
        """One member's initial slot tensors and data generator, as TeacherStudent.build."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(seed, 0))
            model = make_student()
        state = model.state_dict()
        tensors = [_to_slot(n, state[n].detach()) for n in PARAM_NAMES]
        return tensors, torch.Generator().manual_seed(_derived_seed(seed, 1))

    def setup(self, hparams_list: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> None:
        self.reslot(hparams_list, seeds, [None] * len(hparams_list))

    def reslot(
        self,
        hparams_list: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        keep: Sequence[int | None],
    ) -> None:
        """Rearrange slots in memory; fresh slots are built as :meth:`setup` would."""
        check_reslot(self.size, hparams_list, seeds, keep)
        if len(hparams_list) < 1:
            raise ConfigError("hparams_list=[]: a batch needs at least one member")
        lrs = [_lr(hp) for hp in hparams_list]
        single_thread()
        self._std, self._w_star = teacher()
        self._eval_x, self._eval_y = eval_set()
        slot_params: list[list[torch.Tensor]] = []
        slot_buffers: list[list[torch.Tensor]] = []
        generators, steps, moved = [], [], []
        for old, seed in zip(keep, seeds, strict=True):
            if old is None:
                tensors, gen = self._fresh(int(seed))
                slot_params.append(tensors)
                slot_buffers.append([torch.zeros_like(t) for t in tensors])
                generators.append(gen)
                steps.append(0)
                moved.append(False)
            else:
                slot_params.append([p[old].detach() for p in self.params])
                slot_buffers.append([b[old] for b in self.buffers])
                generators.append(self.generators[old])
                steps.append(self.steps[old])
                moved.append(self._moved[old])
        self.params = [torch.stack(ts) for ts in zip(*slot_params, strict=True)]
        self.buffers = [torch.stack(ts) for ts in zip(*slot_buffers, strict=True)]
        for p in self.params:
            p.requires_grad_(True)
        self.generators, self.steps, self._moved = generators, steps, moved
        self.hparams = [dict(hp) for hp in hparams_list]
        self.seeds = [int(s) for s in seeds]
        self._lr = torch.tensor(lrs, dtype=torch.float32).view(-1, 1, 1)

    def set_hparams(self, i: int, hparams: Mapping[str, Any]) -> None:
        lr = _lr(hparams)
        self.hparams[i] = dict(hparams)
        self._lr[i] = lr

    # -- training ------------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = self.params
        h = torch.relu(torch.baddbmm(b1, x, w1))
        h = torch.relu(torch.baddbmm(b2, h, w2))
        return torch.baddbmm(b3, h, w3)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slot's fresh batch, drawn from its own generator in TeacherStudent's order."""
        xs, ys = [], []
        for gen in self.generators:
            x = torch.randn(BATCH_SIZE, DIM, generator=gen) * self._std
            noise = torch.randn(BATCH_SIZE, generator=gen) * NOISE_STD
            xs.append(x)
            ys.append((x @ self._w_star + noise).unsqueeze(1))
        return torch.stack(xs), torch.stack(ys)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            x, y = self._batch()
            # Per-slot mean squared error; the sum's gradient w.r.t. slot k is slot k's own.
            loss = ((self._forward(x) - y) ** 2).mean(dim=(1, 2)).sum()
            grads = torch.autograd.grad(loss, self.params)
            with torch.no_grad():
                # torch.optim.SGD(momentum=0.9, dampening=0): buf = 0.9 buf + g; p -= lr buf.
                # A zero buffer makes the first step buf = g, as SGD's clone of the gradient.
                for p, buf, g in zip(self.params, self.buffers, grads, strict=True):
                    buf.mul_(MOMENTUM).add_(g)
                    p.sub_(self._lr * buf)  # every slot tensor is 3-D: [K, 1, 1] broadcasts
            self.steps = [s + 1 for s in self.steps]
            self._moved = [True] * self.size

    def fvus(self) -> np.ndarray:
        """Each slot's FVU on the fixed evaluation inputs (lower is better)."""
        out = np.empty(self.size)
        x = self._eval_x
        # One slot at a time (all slots' 20k x 128 activations at once would be large), into
        # buffers reused across slots: a fresh 10 MB tensor per layer costs page faults that
        # took as long as the products themselves. Same arithmetic, bit for bit.
        h1, h2 = x.new_empty(len(x), HIDDEN), x.new_empty(len(x), HIDDEN)
        pred = x.new_empty(len(x), 1)
        with torch.no_grad():
            for k in range(self.size):
                w1, b1, w2, b2, w3, b3 = (p[k] for p in self.params)
                torch.addmm(b1, x, w1, out=h1).relu_()
                torch.addmm(b2, h1, w2, out=h2).relu_()
                out[k] = fvu(torch.addmm(b3, h2, w3, out=pred), self._eval_y)
        return out

    def evaluate(self) -> np.ndarray:
        """Return ``-FVU`` per slot (higher is better; 0 is a perfect fit)."""
        return -self.fvus()

    # -- checkpoints (the single-member format) --------------------------------------------------

    def _module(self, i: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A TeacherStudent-shaped model + SGD for slot ``i`` (the global RNG left untouched)."""
        with torch.random.fork_rng(devices=[]):
            model = make_student()
        optimizer = torch.optim.SGD(model.parameters(), lr=float(self._lr[i]), momentum=MOMENTUM)
        return model, optimizer

    def save(self, i: int, path: Path) -> None:
        model, optimizer = self._module(i)
        with torch.no_grad():
            model.load_state_dict(
                {n: _from_slot(n, p[i].detach()) for n, p in zip(PARAM_NAMES, self.params,
                                                                  strict=True)}
            )
        if self._moved[i]:
            for name, param, buf in zip(PARAM_NAMES, model.parameters(), self.buffers,
                                        strict=True):
                optimizer.state[param]["momentum_buffer"] = _from_slot(name, buf[i]).clone()
        save_state(path, model, optimizer, {"step": self.steps[i]}, self.generators[i])

    def load(self, i: int, path: Path) -> None:
        model, optimizer = self._module(i)
        extra = load_state(path, model, optimizer, self.generators[i])
        state = model.state_dict()
        with torch.no_grad():
            for k, name in enumerate(PARAM_NAMES):
                self.params[k][i] = _to_slot(name, state[name])
            moved = False
            for k, (name, param) in enumerate(zip(PARAM_NAMES, model.parameters(), strict=True)):
                buf = optimizer.state.get(param, {}).get("momentum_buffer")
                moved = moved or buf is not None
                self.buffers[k][i] = 0.0 if buf is None else _to_slot(name, buf)
        self._moved[i] = moved
        self.steps[i] = int(extra.get("step", 0))
        # The checkpoint's optimiser carries the donor's lr; the slot's own hparams win.
        self._lr[i] = _lr(self.hparams[i])
