"""The in-effect check: hyperparameters applied to optimisers and schedulers, then read back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from firepbt.integrations.effect import (  # noqa: E402
    APPLIED_FILE,
    NotInEffectError,
    apply_and_check,
    apply_hparams,
    check_applied,
    read_applied,
    read_applied_file,
)
from firepbt.integrations.torch import TorchTrainable  # noqa: E402

torch.set_num_threads(1)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 10)


def sgd_with_lambda(lr: float) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=lr, momentum=0.9)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup)


def test_lr_is_the_schedulers_base_and_the_shape_continues() -> None:
    opt, sched = sgd_with_lambda(0.1)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * warmup(4))
    applied = apply_and_check([opt], [sched], {"lr": 0.02, "momentum": 0.5}, "in test")
    assert applied["lr"] == [0.02, 0.02]  # scheduler base_lrs, group initial_lr
    assert applied["lr_now"] == [pytest.approx(0.02 * warmup(4))]
    assert applied["momentum"] == [0.5]
    opt.step()
    sched.step()  # the scheduler computes from the new base, not the old 0.1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * warmup(5))


def test_a_scheduler_state_restored_after_apply_is_caught() -> None:
    # The classic silent failure: the member's lr is set, then a restore loads the donor's
    # scheduler state (base_lrs 0.1) and the next step recomputes lr from the donor's base.
    donor_opt, donor_sched = sgd_with_lambda(0.1)
    donor_opt.step()
    donor_sched.step()
    donor_state = donor_sched.state_dict()
    opt, sched = sgd_with_lambda(0.1)
    apply_and_check([opt], [sched], {"lr": 0.01}, "after load")
    sched.load_state_dict(donor_state)
    with pytest.raises(NotInEffectError, match=r"'lr'.*wanted 0\.01.*is 0\.1\b"):
        check_applied({"lr": 0.01}, read_applied([opt], [sched], ["lr"]), "before training")


def test_an_optimizer_state_restored_after_apply_is_caught() -> None:
    donor, _ = sgd_with_lambda(0.3)
    opt, sched = sgd_with_lambda(0.1)
    apply_hparams([opt], [sched], {"lr": 0.01})
    opt.load_state_dict(donor.state_dict())  # initial_lr 0.3 comes back with it
    with pytest.raises(NotInEffectError, match=r"wanted 0\.01.*0\.3"):
        check_applied({"lr": 0.01}, read_applied([opt], [sched], ["lr"]), "x")


def test_without_scheduler_the_group_value_is_checked() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    apply_hparams([opt], [], {"lr": 0.05})
    check_applied({"lr": 0.05}, read_applied([opt], [], ["lr"]), "x")
    opt.param_groups[0]["lr"] = 0.07
    with pytest.raises(NotInEffectError, match=r"'lr'.*wanted 0\.05.*0\.07"):
        check_applied({"lr": 0.05}, read_applied([opt], [], ["lr"]), "x")


def test_sequential_lr_sub_schedulers_get_the_new_base() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    a = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    b = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [a, b], milestones=[10])
    apply_and_check([opt], [seq], {"lr": 0.03}, "x")
    assert a.base_lrs == [0.03] and b.base_lrs == [0.03]


class Scheduled(TorchTrainable):
    """Linear regression with a warm-up LambdaLR stepped every training step."""

    rebuild_scheduler_each_step = False

    def build(self, hparams: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = nn.Linear(4, 1)
        self.generator = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=hparams["lr"], momentum=0.9)
        self.build_lr = float(hparams["lr"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
        return model, opt

    def train_step(self) -> None:
        x = torch.randn(8, 4, generator=self.generator)
        self.optimizer.zero_grad()
        nn.functional.mse_loss(self.model(x), x.sum(1, keepdim=True)).backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.rebuild_scheduler_each_step:
            # A user bug: the schedule is rebuilt from the hyperparameters seen at build time.
            self.scheduler.base_lrs = [self.build_lr]

    def evaluate(self) -> float:
        return 0.0


def test_torch_trainable_restores_scheduler_and_applies_the_members_lr(tmp_path: Path) -> None:
    donor = Scheduled()
    donor.setup({"lr": 0.1}, seed=0)
    donor.train(5)
    donor.save(tmp_path)
    member = Scheduled()
    member.setup({"lr": 0.02}, seed=1)
    member.load(tmp_path)
    member.set_hparams({"lr": 0.02})
    assert member.scheduler.last_epoch == 5  # the donor's schedule position came with it
    member.train(3)
    assert member.optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * warmup(8))
    member.save(tmp_path / "next")
    history = read_applied_file(tmp_path / "next")
    assert [e["step"] for e in history] == [0, 5]  # donor's setup, then the member's lr
    assert history[0]["applied"]["lr"] == [0.1, 0.1]
    assert history[-1]["applied"]["lr"] == [0.02, 0.02]
    assert (tmp_path / APPLIED_FILE).is_file()


def test_torch_trainable_refuses_to_save_an_overwritten_lr(tmp_path: Path) -> None:
    t = Scheduled()
    t.rebuild_scheduler_each_step = True
    t.setup({"lr": 0.1}, seed=0)
    t.set_hparams({"lr": 0.01})
    t.train(2)
    with pytest.raises(NotInEffectError, match=r"'lr'.*before save.*wanted 0\.01.*0\.1"):
        t.save(tmp_path)


def test_the_check_reaches_the_store_from_process_workers(tmp_path: Path) -> None:
    # The default executor: the error comes back from a worker process as the segment's
    # failure, naming the hyperparameter, the wanted and the actual value.
    import firepbt as fp
    from firepbt.errors import RunFailed
    from firepbt.store import open_store

    task = Path(__file__).with_name("overwriting_task.py")
    # Every member fails, so the run as a whole fails, naming the first error.
    with pytest.raises(RunFailed, match="NotInEffectError"):
        fp.run(f"{task}:OverwritingTask", algorithm=fp.PBT(population=2), steps=20,
               interval=10, eval_every=5, store=str(tmp_path / "r.db"), workers=2,
               max_failures=1, seed=0)
    res = fp.Result(open_store(str(tmp_path / "r.db")))
    errors = [str(e.info.get("error", "")) for e in res.events("failure")]
    assert len(errors) == 2
    for err in errors:
        assert "NotInEffectError: hyperparameter 'lr' is not in effect before save" in err
        assert "is 0.01;" in err
