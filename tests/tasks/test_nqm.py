"""Tests for firepbt.tasks.nqm: the dynamics, the relative loss and the spec's measured numbers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from firepbt.errors import ConfigError
from firepbt.tasks.nqm import CURVATURES, DIM, NQM, START, nqm_loss, nqm_schedule_loss

STEPS = 2000


def step_decay(step: int) -> float:
    """x0.1 at 50 % and 75 % from 1.0: the spec's hand-tuned schedule."""
    return 1.0 if step < STEPS // 2 else 0.1 if step < 3 * STEPS // 4 else 0.01


def cosine(step: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / STEPS))


def early_decay(step: int) -> float:
    """The greedy mistake: the same two decays at 10 % and 20 %."""
    return 1.0 if step < STEPS // 10 else 0.1 if step < STEPS // 5 else 0.01


def expected_loss(lr_fn: Callable[[int], float], steps: int = STEPS, c: float = 1.0) -> float:
    """E[nqm_loss] after ``steps``: per direction, the mean and the variance of x in closed form."""
    mean, var = START.copy(), np.zeros(DIM)
    for step in range(steps):
        lr = lr_fn(step)
        mean = mean * (1 - lr * CURVATURES)
        var = var * (1 - lr * CURVATURES) ** 2 + lr**2 * c * CURVATURES
    return float(np.sum(CURVATURES * (mean**2 + var))) / DIM


def test_problem_definition() -> None:
    assert CURVATURES[0] == pytest.approx(1e-3)
    assert CURVATURES[-1] == pytest.approx(1.0)
    task = NQM()
    task.setup({"lr": 0.1, "c": 1.0}, 0)
    np.testing.assert_allclose(task.x, 1 / np.sqrt(CURVATURES))
    # Every direction holds the same share of the loss, and the reported loss starts at 1.
    np.testing.assert_allclose(0.5 * CURVATURES * task.x**2, 0.5)
    assert task.evaluate() == pytest.approx(-1.0)


def test_noise_free_dynamics_match_closed_form() -> None:
    task = NQM()
    task.setup({"lr": 0.5, "c": 0.0}, 0)
    task.train(30)
    np.testing.assert_allclose(task.x, START * (1 - 0.5 * CURVATURES) ** 30)
    assert nqm_loss(task.x) == pytest.approx(expected_loss(lambda _: 0.5, 30, c=0.0))


def test_noise_has_variance_c_h() -> None:
    # From x = 0 with lr = 1, one step leaves x = -noise, so x_i ~ N(0, c h_i).
    task = NQM()
    task.setup({"lr": 1.0, "c": 3.0}, 7)
    samples = []
    for _ in range(400):
        task.x = np.zeros(DIM)
        task.train(1)
        samples.append(task.x)
    ratio = np.var(samples, axis=0) / (3.0 * CURVATURES)
    assert 0.9 < float(np.mean(ratio)) < 1.1


def test_schedule_loss_matches_the_trainable() -> None:
    task = NQM()
    task.setup({"lr": 0.2, "c": 1.0}, 4)
    task.train(150)
    assert nqm_schedule_loss(lambda _: 0.2, steps=150, seed=4) == -task.evaluate()


def test_spec_numbers_in_expectation() -> None:
    # The spec measured 0.0085 (step decay) and 0.009 (cosine); these are the exact expectations.
    assert expected_loss(step_decay) == pytest.approx(0.0085, abs=1e-4)
    assert expected_loss(cosine) == pytest.approx(0.009, abs=7e-4)


def test_spec_numbers_over_seeds() -> None:
    # One run's loss has a standard deviation of ~0.0005 (16 seeds), so a mean over 8 seeds has
    # ~0.00018; the bounds sit >= 2.5 of those from the measured means 0.0084 and 0.0096.
    step = np.mean([nqm_schedule_loss(step_decay, seed=s) for s in range(8)])
    cos = np.mean([nqm_schedule_loss(cosine, seed=s) for s in range(8)])
    assert 0.0079 < step < 0.0091
    assert 0.0090 < cos < 0.0103
    assert step < cos


def test_early_decay_wins_at_once_but_loses_at_the_end() -> None:
    # The greedy lure: right after the early decay the loss is clearly below the schedule's ...
    at_decay = STEPS // 10 + STEPS // 20
    assert expected_loss(early_decay, at_decay) < 0.7 * expected_loss(step_decay, at_decay)
    # ... but the flat directions stall and it ends ~10x worse.
    assert nqm_schedule_loss(early_decay, seed=0) > 5 * nqm_schedule_loss(step_decay, seed=0)


def test_validation() -> None:
    with pytest.raises(ConfigError, match="'lr'=0.0 must be > 0"):
        NQM().setup({"lr": 0.0, "c": 1.0}, 0)
    with pytest.raises(ConfigError, match="'c'=-1.0 must be >= 0"):
        NQM().setup({"lr": 0.1, "c": -1.0}, 0)
    with pytest.raises(ConfigError, match="'lr' is missing"):
        NQM().setup({"c": 1.0}, 0)
    with pytest.raises(ConfigError, match="steps=-1"):
        nqm_schedule_loss(cosine, steps=-1)


def test_c_defaults_to_one() -> None:
    with_c, without_c = NQM(), NQM()
    with_c.setup({"lr": 0.3, "c": 1.0}, 2)
    without_c.setup({"lr": 0.3}, 2)
    with_c.train(20)
    without_c.train(20)
    assert with_c.evaluate() == without_c.evaluate()
