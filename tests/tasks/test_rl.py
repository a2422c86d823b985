"""Tests for firepbt.tasks.rl (A2C on Acrobot-v1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from firepbt.errors import ConfigError  # noqa: E402
from firepbt.tasks import rl  # noqa: E402
from firepbt.tasks.rl import AcrobotA2C, LunarLanderA2C  # noqa: E402

torch.set_num_threads(1)

GOOD = {"lr": 3e-3, "entropy_cost": 1e-2, "gamma": 0.99, "gae_lambda": 0.95, "optimizer": "adam",
        "warmup_steps": 0}


def make(seed: int = 0, **changes: Any) -> AcrobotA2C:
    t = AcrobotA2C()
    t.setup({**GOOD, **changes}, seed)
    return t


def weights(t: AcrobotA2C) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def assert_same_weights(a: AcrobotA2C, b: AcrobotA2C) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_space_and_defaults() -> None:
    assert AcrobotA2C.SPACE.keys() == ["entropy_cost", "lr"]
    assert AcrobotA2C.SPACE.constants() == {"gae_lambda": 0.95, "gamma": 0.99,
                                            "optimizer": "adam", "warmup_steps": 0}
    AcrobotA2C.SPACE.validate(GOOD)
    assert set(AcrobotA2C.DEFAULTS) == {"steps", "interval", "eval_every"}
    sample = AcrobotA2C.SPACE.sample(np.random.default_rng(0))
    make(**sample)  # any point of the space builds


def test_gae_matches_hand_computation() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    last = torch.tensor([10.0])
    g, lam = 0.9, 0.5
    d2 = 3.0 + g * 10.0 - 1.5
    d1 = 2.0 - 1.0  # episode ended at t=1: no bootstrap, no carry of later advantages
    d0 = 1.0 + g * 1.0 - 0.5
    expected = torch.tensor([[d0 + g * lam * d1], [d1], [d2]])
    torch.testing.assert_close(rl.gae(rewards, values, dones, last, g, lam), expected)
    # lam = 1 and no dones: advantages are the discounted returns minus the values.
    adv = rl.gae(rewards, values, torch.zeros(3, 1), last, g, 1.0)
    ret = [1 + g * 2 + g**2 * 3 + g**3 * 10, 2 + g * 3 + g**2 * 10, 3 + g * 10]
    torch.testing.assert_close(adv + values, torch.tensor(ret).unsqueeze(1))


def test_evaluate_is_worst_before_any_episode_then_mean_of_recent() -> None:
    t = make()
    assert t.evaluate() == rl.WORST_RETURN == -500.0
    t.recent.extend([-100.0, -200.0])
    assert t.evaluate() == -150.0
    t.recent.extend([-1.0] * rl.RECENT_EPISODES)
    assert t.evaluate() == -1.0  # only the last 20 episodes count


def test_episode_returns_are_recorded_undiscounted() -> None:
    t = make()
    done = np.zeros(rl.NUM_ENVS, dtype=bool)
    for _ in range(3):
        t._record(np.full(rl.NUM_ENVS, -1.0), done)
    done[2] = True
    t._record(np.full(rl.NUM_ENVS, -1.0), done)
    assert list(t.recent) == [-4.0] and t.episodes == 1
    assert t._running[2] == 0.0 and t._running[0] == -4.0


def test_same_seed_same_training_different_seed_differs() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for t in (a, b, c):
        t.train(5)
    assert_same_weights(a, b)
    torch.testing.assert_close(a._obs, b._obs, rtol=0, atol=0)
    assert not torch.equal(a._obs, c._obs)
    assert any(not torch.equal(p, q) for p, q in zip(weights(a), weights(c), strict=True))
    assert a.step == 5


def test_save_load_restores_weights_optimiser_buffer_and_step(tmp_path: Path) -> None:
    a = make(seed=1)
    a.train(3)
    a.recent.extend([-500.0, -321.0])  # pretend episodes finished
    a.episodes = 2
    a.save(tmp_path)
    b = make(seed=1, lr=1e-4)  # same member seed, explored lr
    b.load(tmp_path)
    assert_same_weights(a, b)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for k, st in sa["state"].items():
        torch.testing.assert_close(st["exp_avg"], sb["state"][k]["exp_avg"])
        torch.testing.assert_close(st["exp_avg_sq"], sb["state"][k]["exp_avg_sq"])
        assert int(st["step"]) == int(sb["state"][k]["step"]) == 3
    assert list(b.recent) == [-500.0, -321.0] and b.recent.maxlen == rl.RECENT_EPISODES
    assert b.episodes == 2 and b.step == 3 and b.evaluate() == a.evaluate()
    assert b.generator is not None and a.generator is not None
    assert torch.equal(b.generator.get_state(), a.generator.get_state())
    # The member's own (explored) lr wins over the donor's.
    assert b.optimizer.param_groups[0]["lr"] == 1e-4


def test_two_loads_of_a_checkpoint_continue_identically(tmp_path: Path) -> None:
    a = make(seed=2)
    a.train(2)
    a.save(tmp_path)
    b, c = make(seed=2), make(seed=2)
    b.load(tmp_path)
    c.load(tmp_path)
    b.train(3)
    c.train(3)
    assert_same_weights(b, c)


def test_loading_a_step_zero_checkpoint_equals_fresh_setup(tmp_path: Path) -> None:
    a = make(seed=5)
    a.save(tmp_path)
    a.train(4)
    b = make(seed=5)
    b.load(tmp_path)
    b.train(4)
    # Envs are reset from (seed, step) both at setup and at load, so this is exact.
    assert_same_weights(a, b)


def test_set_hparams_changes_lr_in_place() -> None:
    t = make()
    optimiser = t.optimizer
    t.set_hparams({**GOOD, "lr": 1e-4, "entropy_cost": 0.05})
    assert t.optimizer is optimiser
    assert all(g["lr"] == 1e-4 for g in optimiser.param_groups)
    assert t.hparams["entropy_cost"] == 0.05


def test_schedule_free_adamw_trains_warms_up_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("schedulefree")
    hp = {"optimizer": "schedulefree-adam", "warmup_steps": 4}
    a = make(seed=3, **hp)
    assert type(a.optimizer).__name__ == "AdamWScheduleFree"
    assert a.optimizer.param_groups[0]["warmup_steps"] == 4
    before = weights(a)
    a.train(3)
    assert any(not torch.equal(p, q) for p, q in zip(before, weights(a), strict=True))
    a.save(tmp_path)
    # Envs restart at a load, so two loads (not the original) continue identically.
    b, c = make(seed=3, **hp), make(seed=3, **hp)
    b.load(tmp_path)
    c.load(tmp_path)
    assert_same_weights(a, b)
    b.train(2)
    c.train(2)
    assert_same_weights(b, c)
    # The explored lr reaches the Schedule-Free optimiser like Adam's.
    b.set_hparams({**GOOD, **hp, "lr": 1e-4})
    assert b.optimizer.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", 0.0), ("lr", float("nan")), ("entropy_cost", -1.0), ("gamma", 1.5),
     ("gae_lambda", -0.1), ("lr", "fast")],
)
def test_invalid_hparams_raise_config_error(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        make(**{key: value})
    t = make()
    with pytest.raises(ConfigError, match=key):
        t.set_hparams({**GOOD, key: value})


def test_missing_hparam_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="gamma"):
        make().setup({"lr": 1e-3, "entropy_cost": 0.01, "gae_lambda": 0.95}, 0)


def test_episodes_reaching_the_time_limit_are_counted() -> None:
    # A policy that ignores the goal runs into the 500-step limit: every env finishes at -500.
    t = make(lr=1e-4)
    t.train(500 // rl.ROLLOUT_STEPS + 1)  # 512 env steps: each env hits the limit once
    assert t.episodes == rl.NUM_ENVS
    assert list(t.recent) == [-500.0] * rl.NUM_ENVS
    assert t.evaluate() == -500.0
    assert np.all(t._running == -(512 - 500))  # new episodes started after the truncation


def test_lunar_lander_builds_trains_and_is_deterministic() -> None:
    pytest.importorskip("Box2D")
    a, b = LunarLanderA2C(), LunarLanderA2C()
    for t in (a, b):
        t.setup(GOOD, 7)
        assert t.evaluate() == LunarLanderA2C.NO_EPISODE_RETURN == -500.0
        t.train(2)
    assert_same_weights(a, b)
    assert a._obs.shape == (rl.NUM_ENVS, 8)


@pytest.mark.slow
def test_returns_improve_with_a_good_lr() -> None:
    t = make(seed=0)
    t.train(700)
    # Measured: -500 for the first ~300 steps, about -100 by step 500.
    assert t.evaluate() > -200.0
