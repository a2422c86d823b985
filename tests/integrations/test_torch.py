"""Tests for firepbt.integrations.torch: checkpoint helpers, apply_hparams, TorchTrainable."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from firepbt.errors import CheckpointError, ConfigError  # noqa: E402
from firepbt.integrations.torch import (  # noqa: E402
    STATE_FILE,
    TorchTrainable,
    apply_hparams,
    load_state,
    save_state,
    single_thread,
)

torch.set_num_threads(1)


class Regression(TorchTrainable):
    """A tiny noisy linear regression whose batches come from ``self.generator``."""

    def build(self, hparams: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.generator = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.SGD(model.parameters(), lr=hparams["lr"], momentum=0.9)
        return model, opt

    def train_step(self) -> None:
        x = torch.randn(16, 4, generator=self.generator)
        y = x.sum(1, keepdim=True) + 0.1 * torch.randn(16, 1, generator=self.generator)
        self.optimizer.zero_grad()
        nn.functional.mse_loss(self.model(x), y).backward()
        self.optimizer.step()

    def evaluate(self) -> float:
        x = torch.ones(1, 4)
        with torch.no_grad():
            return -float((self.model(x) - 4.0).abs())


def weights(t: TorchTrainable) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def test_round_trip_continues_bit_identically(tmp_path: Path) -> None:
    straight = Regression()
    straight.setup({"lr": 0.05}, seed=3)
    straight.train(20)

    first = Regression()
    first.setup({"lr": 0.05}, seed=3)
    first.train(10)
    first.save(tmp_path / "ck")
    resumed = Regression()
    resumed.setup({"lr": 0.05}, seed=99)  # a different seed: everything must come from the file
    resumed.load(tmp_path / "ck")
    assert resumed.step == 10
    resumed.train(10)

    assert resumed.step == straight.step == 20
    for a, b in zip(weights(resumed), weights(straight), strict=True):
        assert torch.equal(a, b)


def test_round_trip_needs_the_momentum_buffers(tmp_path: Path) -> None:
    # Guards the test above: without the optimiser state the continuation differs.
    straight = Regression()
    straight.setup({"lr": 0.05}, seed=3)
    straight.train(20)
    first = Regression()
    first.setup({"lr": 0.05}, seed=3)
    first.train(10)
    first.save(tmp_path / "ck")
    resumed = Regression()
    resumed.setup({"lr": 0.05}, seed=3)
    resumed.load(tmp_path / "ck")
    resumed.optimizer.state.clear()
    resumed.train(10)
    pairs = zip(weights(resumed), weights(straight), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_save_state_writes_one_file_and_restores_rngs(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(11)
    save_state(
        tmp_path / "a", model, opt, extra={"step": 5, "order": torch.arange(4)}, generator=gen
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [STATE_FILE]
    expected_global = torch.rand(3)
    expected_gen = torch.rand(3, generator=gen)

    other = nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.5)
    other_gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    extra = load_state(tmp_path / "a", other, other_opt, generator=other_gen)

    assert extra["step"] == 5
    assert torch.equal(extra["order"], torch.arange(4))
    assert torch.equal(other.weight, model.weight)
    assert other_opt.param_groups[0]["lr"] == 0.1
    assert torch.equal(torch.rand(3), expected_global)
    assert torch.equal(torch.rand(3, generator=other_gen), expected_gen)


def test_extra_outside_the_safe_list_is_refused_not_unpickled(tmp_path: Path) -> None:
    # A numpy array needs full unpickling; loading must never fall back to weights_only=False
    # (a checkpoint from shared storage could run code), and the error says what to do.
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_state(tmp_path, model, opt, extra={"arr": np.arange(3)})
    with pytest.raises(CheckpointError, match=r"weights_only=True.*torch.from_numpy"):
        load_state(tmp_path, model, opt)


def test_load_state_never_calls_full_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_state(tmp_path, model, opt, extra={"arr": np.arange(3)})
    calls: list[object] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError):
        load_state(tmp_path, model, opt)
    assert calls == [True]


def test_load_state_missing_file_raises(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="state.pt"):
        load_state(tmp_path, model, opt)


def test_load_state_rejects_unknown_format(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"format": 99}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match="format 99"):
        load_state(tmp_path, model, opt)


def two_group_sgd() -> torch.optim.Optimizer:
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    return torch.optim.SGD(
        [{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}],
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
    )


def test_apply_hparams_sets_every_group() -> None:
    opt = two_group_sgd()
    apply_hparams(opt, {"lr": np.float64(0.02), "momentum": 0.8, "other": "ignored"})
    for group in opt.param_groups:
        assert group["lr"] == 0.02 and type(group["lr"]) is float
        assert group["momentum"] == 0.8
        assert group["weight_decay"] == 0.0  # absent from hparams: untouched


def test_apply_hparams_custom_mapping() -> None:
    opt = two_group_sgd()
    apply_hparams(opt, {"learning_rate": 0.3, "lr": 9.0}, mapping={"learning_rate": "lr"})
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]


def test_apply_hparams_unknown_group_key_names_it() -> None:
    opt = torch.optim.Adam(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="'momentum'.*Adam"):
        apply_hparams(opt, {"lr": 0.01, "momentum": 0.9})
    apply_hparams(opt, {"lr": 0.01})  # Adam without momentum in hparams is fine
    assert opt.param_groups[0]["lr"] == 0.01


@settings(max_examples=30, deadline=None)
@given(lr=st.floats(1e-8, 10.0), momentum=st.floats(0.0, 0.999))
def test_apply_hparams_property(lr: float, momentum: float) -> None:
    opt = two_group_sgd()
    apply_hparams(opt, {"lr": lr, "momentum": momentum})
    assert all(g["lr"] == lr and g["momentum"] == momentum for g in opt.param_groups)


def test_set_hparams_and_load_keep_the_members_own_hparams(tmp_path: Path) -> None:
    donor = Regression()
    donor.setup({"lr": 0.05}, seed=0)
    donor.train(2)
    donor.save(tmp_path)
    member = Regression()
    member.setup({"lr": 0.01}, seed=1)
    member.load(tmp_path)  # the donor's optimiser state carries lr 0.05
    assert member.optimizer.param_groups[0]["lr"] == 0.01
    member.set_hparams({"lr": 0.002})
    assert member.optimizer.param_groups[0]["lr"] == 0.002
    assert member.hparams == {"lr": 0.002}


def test_setup_rejects_a_mapping_the_optimizer_lacks() -> None:
    class AdamTask(Regression):
        def build(self, hparams: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
            model = nn.Linear(4, 1)
            return model, torch.optim.Adam(model.parameters(), lr=hparams["lr"])

    with pytest.raises(ConfigError, match="momentum"):
        AdamTask().setup({"lr": 0.1, "momentum": 0.9}, seed=0)


def test_single_thread() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        single_thread()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
