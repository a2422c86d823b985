"""Tests for firepbt.tasks.teacher_student (spec fire-pbt.md section 11)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from firepbt.tasks import teacher_student as ts  # noqa: E402
from firepbt.tasks.teacher_student import TeacherStudent  # noqa: E402

torch.set_num_threads(1)


def test_inputs_and_teacher_follow_the_spec() -> None:
    std = ts.input_std()
    assert std.shape == (50,)
    assert std[0] == pytest.approx(1.0) and std[-1] == pytest.approx(10**-1.5)
    assert np.allclose(np.diff(np.log10(std)), -1.5 / 49)
    std_t, w_star = ts.teacher()
    # w*_i * std_i = z_i / sqrt(d): every direction carries target variance z_i^2 / d.
    z = (w_star * std_t).numpy() * math.sqrt(50)
    np.testing.assert_allclose(
        z, np.random.default_rng(ts.TEACHER_SEED).standard_normal(50), rtol=1e-5
    )
    x, y = ts.eval_set()
    assert x.shape == (20_000, 50) and y.shape == (20_000, 1)
    np.testing.assert_allclose(x.std(0).numpy(), std, rtol=0.05)
    torch.testing.assert_close(y, (x @ w_star).unsqueeze(1))


def test_fvu() -> None:
    y = torch.tensor([[1.0], [2.0], [3.0]])
    assert ts.fvu(y, y) == 0.0
    assert ts.fvu(torch.full_like(y, 2.0), y) == pytest.approx(1.0)
    assert ts.fvu(y + 1.0, y) == pytest.approx(3.0 / 2.0)


def test_student_shape_and_scaled_last_layer() -> None:
    torch.manual_seed(0)
    model = ts.make_student()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 50), (128,), (128, 128), (128,), (1, 128), (1,)]
    bound = 1 / math.sqrt(128)  # torch's default init bound for fan-in 128
    assert float(model[-1].weight.detach().abs().max()) <= 0.1 * bound
    assert float(model[2].weight.detach().abs().max()) > 0.5 * bound


def test_fresh_student_scores_about_minus_one() -> None:
    t = TeacherStudent()
    t.setup({"lr": 0.01}, seed=0)
    assert -1.2 < t.evaluate() < -0.8  # a near-zero function explains ~nothing
    assert t.evaluate() == -t.fvu()


def test_training_reduces_fvu() -> None:
    t = TeacherStudent()
    t.setup({"lr": 0.03}, seed=0)
    t.train(400)
    assert t.fvu() < 0.5


def test_round_trip_continues_bit_identically(tmp_path: Path) -> None:
    straight = TeacherStudent()
    straight.setup({"lr": 0.02}, seed=5)
    straight.train(30)
    first = TeacherStudent()
    first.setup({"lr": 0.02}, seed=5)
    first.train(15)
    first.save(tmp_path)
    resumed = TeacherStudent()
    resumed.setup({"lr": 0.02}, seed=77)
    resumed.load(tmp_path)
    resumed.train(15)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluate() == straight.evaluate()


def test_members_share_the_teacher_but_not_the_samples() -> None:
    a, b = TeacherStudent(), TeacherStudent()
    a.setup({"lr": 0.01}, seed=1)
    b.setup({"lr": 0.01}, seed=2)
    assert a._w_star is b._w_star
    assert a.generator is not None and b.generator is not None
    assert not torch.equal(
        torch.randn(3, generator=a.generator), torch.randn(3, generator=b.generator)
    )


def test_space_and_defaults() -> None:
    sample = TeacherStudent.SPACE.sample(np.random.default_rng(0))
    assert set(sample) == {"lr", "optimizer", "warmup_steps"} and 1e-4 <= sample["lr"] <= 0.1
    assert TeacherStudent.SPACE.keys() == ["lr"]  # the optimiser constants are not tuned
    assert TeacherStudent.DEFAULTS == {"steps": 4000, "interval": 200, "eval_every": 50}


@pytest.mark.slow
def test_cosine_from_003_learns_the_teacher() -> None:
    # Spec section 11 reports FVU 0.0111 +- 0.0003 for this schedule; this implementation of
    # the written recipe measures 0.022 +- 0.001 (seeds 0-2), see the module docstring.
    t = TeacherStudent()
    t.setup({"lr": 0.03}, seed=0)
    steps = TeacherStudent.DEFAULTS["steps"]
    for s in range(steps):
        t.set_hparams({"lr": 0.03 * 0.5 * (1 + math.cos(math.pi * s / steps))})
        t.train(1)
    assert 0.015 < t.fvu() < 0.03


def test_schedule_free_student_learns_at_a_constant_lr() -> None:
    pytest.importorskip("schedulefree")
    m = TeacherStudent()
    m.setup({"lr": 0.3, "optimizer": "schedulefree", "warmup_steps": 50}, seed=0)
    m.train(400)
    assert 0.0 < m.fvu() < 0.5
