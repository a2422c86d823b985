"""Tests for firepbt.trainable: the class, duck-typed class and function forms of a task, and
how a reported fitness is picked out and normalised (``pick_metric``, ``as_metric``,
``Metric``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.errors import ConfigError
from firepbt.trainable import (
    METRIC_MODES,
    TRAINING_METHODS,
    FunctionTrainable,
    Metric,
    Trainable,
    as_metric,
    make_trainable_class,
    pick_metric,
)

# --- make_trainable_class: the three forms of a task -------------------------------------------


class Counter(Trainable):
    """The plain class form: a counter that grows by lr per step."""

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.hparams, self.seed, self.value = dict(hparams), seed, 0.0

    def train(self, steps: int) -> None:
        self.value += steps * self.hparams["lr"]

    def evaluate(self) -> float:
        return self.value

    def save(self, path: Path) -> None:
        (Path(path) / "value").write_text(repr(self.value))

    def load(self, path: Path) -> None:
        self.value = float((Path(path) / "value").read_text())


class DuckCounter:
    """The same methods without the base class (a user who did not subclass fp.Trainable)."""

    def __init__(self) -> None:
        self.own_init_ran = True
        self.value = 0.0

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.lr = hparams["lr"]

    def train(self, steps: int) -> None:
        self.value += steps * self.lr

    def evaluate(self) -> float:
        return self.value

    def save(self, path: Path) -> None:
        (Path(path) / "value").write_text(repr(self.value))

    def load(self, path: Path) -> None:
        self.value = float((Path(path) / "value").read_text())


def test_a_trainable_subclass_is_taken_as_it_is() -> None:
    assert make_trainable_class(Counter) is Counter


def test_a_duck_typed_class_becomes_a_trainable_that_keeps_its_name_and_its_own_init() -> None:
    cls = make_trainable_class(DuckCounter)
    assert issubclass(cls, Trainable) and issubclass(cls, DuckCounter)
    # Reports and error messages name the user's class, not a wrapper.
    assert (cls.__name__, cls.__qualname__, cls.__module__) == (
        "DuckCounter", "DuckCounter", __name__)
    t = cls()
    # Both constructors ran: the library's attributes and the user's own.
    assert t.hparams == {} and t.seed == 0 and t.own_init_ran  # type: ignore[attr-defined]
    t.setup({"lr": 0.5}, seed=1)
    t.train(4)
    assert t.evaluate() == 2.0
    t.set_hparams({"lr": 1.0})  # the default set_hparams of the base class
    assert t.hparams == {"lr": 1.0}


def test_a_duck_typed_class_round_trips_through_its_own_save_and_load(tmp_path: Path) -> None:
    cls = make_trainable_class(DuckCounter)
    a, b = cls(), cls()
    a.setup({"lr": 0.25}, 0)
    a.train(8)
    a.save(tmp_path)
    b.load(tmp_path)
    assert b.evaluate() == a.evaluate() == 2.0


@settings(max_examples=40, deadline=None)
@given(missing=st.sets(st.sampled_from(TRAINING_METHODS), min_size=1),
       not_callable=st.booleans())
def test_a_class_lacking_training_methods_is_refused_naming_exactly_those(
    missing: set[str], not_callable: bool
) -> None:
    """A method that is absent, or an attribute of that name that cannot be called, is
    missing; the message lists the missing ones in the documented order and says the rule."""
    body: dict[str, Any] = {m: (lambda self, *a: None) for m in TRAINING_METHODS}
    for m in missing:
        if not_callable:
            body[m] = 3
        else:
            del body[m]
    cls = type("Partial", (), body)
    with pytest.raises(ConfigError) as err:
        make_trainable_class(cls)
    msg = str(err.value)
    listed = ", ".join(m for m in TRAINING_METHODS if m in missing)
    assert f"task class 'Partial' lacks {listed}:" in msg
    assert "must subclass firepbt.Trainable" in msg and "fn(hparams, checkpoint, report)" in msg


@pytest.mark.parametrize("task", [3, "not a task", None, [Counter]])
def test_what_is_neither_a_class_nor_callable_is_refused_naming_it(task: Any) -> None:
    with pytest.raises(ConfigError, match=r"neither a Trainable subclass nor a function") as err:
        make_trainable_class(task)
    assert repr(task) in str(err.value)


# --- the function form -------------------------------------------------------------------------


def counting_fn(hparams: dict[str, Any], checkpoint: Path | None, report: Callable[..., None],
                seed: int = -1) -> None:
    """Ray-Tune style: one report per step, the value read back from a checkpoint."""
    value = 0.0 if checkpoint is None else float((checkpoint / "value").read_text())
    value += seed * 1000  # makes the seed passed in visible in the metric
    while True:
        value += hparams["lr"]  # a live dict: explore's new values appear here in place
        saved = value

        def save(path: Path, saved: float = saved) -> None:
            (Path(path) / "value").write_text(repr(saved - seed * 1000))

        report(value, save)


def test_a_function_becomes_a_trainable_that_trains_one_report_per_step(tmp_path: Path) -> None:
    cls = make_trainable_class(counting_fn)
    assert issubclass(cls, FunctionTrainable) and cls.__name__ == "Function[counting_fn]"
    t = cls()
    t.setup({"lr": 1.0}, seed=0)
    t.train(3)
    assert t.evaluate() == 3.0
    t.set_hparams({"lr": 10.0})  # in place: the running loop sees it at its next step
    t.train(2)
    assert t.evaluate() == 23.0
    t.save(tmp_path)

    restored = cls()
    restored.setup({"lr": 1.0}, seed=0)
    restored.load(tmp_path)
    restored.train(1)
    assert restored.evaluate() == 24.0


def test_the_function_form_passes_the_seed_to_a_function_that_takes_one() -> None:
    t = make_trainable_class(counting_fn)()
    t.setup({"lr": 1.0}, seed=2)
    t.train(1)
    assert t.evaluate() == 2001.0


def test_the_function_form_without_a_seed_parameter_and_a_lambda_name() -> None:
    cls = make_trainable_class(lambda hparams, checkpoint, report: [report(0.5)
                                                                    for _ in range(9)])
    assert cls.__name__ == "Function[<lambda>]"
    t = cls()
    t.setup({}, seed=5)
    t.train(2)
    assert t.evaluate() == 0.5


def test_a_function_that_never_measured_evaluates_to_nan_which_is_no_fitness() -> None:
    t = make_trainable_class(lambda h, c, report: [report() for _ in range(9)])()
    t.setup({}, 0)
    t.train(3)
    assert math.isnan(t.evaluate()) and as_metric(t.evaluate()) is None


def test_the_function_form_raises_the_functions_own_error_from_train() -> None:
    def broken(hparams: Any, checkpoint: Any, report: Any) -> None:
        report(1.0)
        raise ZeroDivisionError("the user's bug")

    t = make_trainable_class(broken)()
    t.setup({}, 0)
    t.train(1)
    with pytest.raises(ZeroDivisionError, match="the user's bug"):
        t.train(1)


def test_a_function_that_returns_early_or_never_saves_fails_with_a_clear_message(
    tmp_path: Path,
) -> None:
    t = make_trainable_class(lambda h, c, report: [report(1.0) for _ in range(2)])()
    t.setup({}, 0)
    with pytest.raises(RuntimeError, match="returned before the run's last step"):
        t.train(3)
    with pytest.raises(RuntimeError, match="never passed save= to report"):
        t.save(tmp_path)


# --- pick_metric and as_metric -----------------------------------------------------------------


@given(st.one_of(st.floats(allow_nan=False), st.integers(), st.none(), st.text()))
def test_pick_metric_passes_anything_but_a_dict_through(value: Any) -> None:
    assert pick_metric(value, "loss") is value and pick_metric(value, None) is value


def test_pick_metric_takes_the_named_key_or_fitness_by_default() -> None:
    metrics = {"fitness": 0.1, "loss": 0.2}
    assert pick_metric(metrics, "loss") == 0.2
    assert pick_metric(metrics, None) == 0.1


def test_pick_metric_names_the_missing_key_and_the_keys_there_are() -> None:
    with pytest.raises(KeyError) as err:
        pick_metric({"loss": 1.0, "acc": 0.5}, "top5")
    assert "['acc', 'loss'] but not 'top5'" in str(err.value)
    with pytest.raises(KeyError, match="but not 'fitness'"):
        pick_metric({"loss": 1.0}, None)


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.integers(-(2**53), 2**53)))
def test_a_finite_number_is_kept_as_a_float(value: float) -> None:
    got = as_metric(value)
    assert type(got) is float and got == value


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_numpy_numbers_are_numbers(value: float) -> None:
    assert as_metric(np.float32(value)) == float(np.float32(value))
    assert as_metric(np.array(value)) == value  # a 0-d array, as torch's .numpy() gives
    assert as_metric(np.int64(3)) == 3.0 and as_metric(Fraction(1, 4)) == 0.25


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf"), None, True, False,
    "abc", "", object(), [0.5], {"fitness": 0.5}, 1j,
])
def test_no_fitness_becomes_none(value: Any) -> None:
    """NaN and +-inf are diverged runs (+inf would rank first and be everyone's donor); a
    bool is a mistake (True would rank as 1.0); a non-number is no fitness at all."""
    assert as_metric(value) is None


@pytest.mark.parametrize("value", ["0.5", " 1e3 ", b"0.5"])
def test_a_numeric_string_is_no_fitness(value: Any) -> None:
    assert as_metric(value) is None


def test_a_numpy_bool_is_no_fitness() -> None:
    assert as_metric(np.bool_(True)) is None


def test_an_int_too_large_for_a_float_is_no_fitness() -> None:
    assert as_metric(10**400) is None


# --- Metric ------------------------------------------------------------------------------------


def test_metric_of_accepts_every_documented_form() -> None:
    loss = Metric("loss", "min")
    assert Metric.of(None) == Metric() == Metric("fitness", "max")
    assert Metric.of(loss) is loss
    assert Metric.of("accuracy") == Metric("accuracy", "max")
    assert Metric.of(loss.to_json()) == loss


@pytest.mark.parametrize("value", [3, 0.5, ["loss", "min"], ("loss",)])
def test_metric_of_refuses_other_values_naming_them(value: Any) -> None:
    with pytest.raises(ConfigError, match="must be a name or fp.Metric") as err:
        Metric.of(value)
    assert repr(value) in str(err.value)


def test_a_bad_mode_is_refused_naming_the_modes_there_are() -> None:
    with pytest.raises(ConfigError, match=r"mode='lower': must be one of max, min"):
        Metric("loss", "lower")
    with pytest.raises(ConfigError, match=r"mode=\{'name': 'x'\}"):
        Metric.of({"name": "loss", "mode": {"name": "x"}})


@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1),
       mode=st.sampled_from(METRIC_MODES))
def test_sign_times_value_ranks_the_better_value_first(values: list[float], mode: str) -> None:
    metric = Metric("m", mode)
    best = max(values, key=lambda v: metric.sign * v)
    assert best == (max(values) if mode == "max" else min(values))
    assert metric.sign == (1.0 if mode == "max" else -1.0)
    assert metric.describe() == f"m ({'higher' if mode == 'max' else 'lower'} is better)"
