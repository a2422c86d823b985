"""Tests for firepbt.space: distributions, Space, ExploreConfig and explore."""

from __future__ import annotations

import json
import math
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.errors import ConfigError
from firepbt.space import (
    Choice,
    Distribution,
    ExploreConfig,
    Int,
    LogUniform,
    Ordered,
    Space,
    Uniform,
    explore,
)


class ScriptedRng:
    """Stands in for a Generator: ``random()`` returns scripted draws, the rest is seeded.

    explore draws ``random()`` once per key for the resample coin and once more for the
    direction of a numeric/ordered perturbation (< 0.5 means up), so scripts pin each step.
    """

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)
        self._real = np.random.default_rng(0)

    def random(self) -> float:
        return self.draws.pop(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


UP, DOWN, NO_RESAMPLE = 0.0, 0.99, 0.99


def step(dist: Distribution, x: Any, up: bool, **config: Any) -> tuple[Any, str]:
    """One explore step of a one-key space with a scripted direction and no resampling."""
    rng = ScriptedRng([NO_RESAMPLE, UP if up else DOWN])
    cfg = ExploreConfig(resample_probability=0.0, **config)
    new, ops = explore(Space(x=dist), {"x": x}, cast(np.random.Generator, rng), cfg)
    assert rng.draws == [], "the step drew a different number of coins than scripted"
    return new["x"], ops["x"]


# --------------------------------------------------------------------------------------------
# Distributions: sampling


def test_uniform_sample_is_the_generators_uniform_draw() -> None:
    got = Uniform(-1, 3).sample(np.random.default_rng(5))
    assert type(got) is float
    assert got == np.random.default_rng(5).uniform(-1.0, 3.0)


def test_loguniform_sample_is_uniform_in_log_space() -> None:
    d = LogUniform(1e-4, 1.0)
    rng = np.random.default_rng(1)
    xs = np.array([d.sample(rng) for _ in range(4000)])
    assert xs.min() >= 1e-4 and xs.max() <= 1.0
    # Log-uniform: each decade holds a quarter of the mass (a uniform prior would put ~90 %
    # above 0.1).
    counts = np.histogram(np.log10(xs), bins=[-4, -3, -2, -1, 0])[0] / len(xs)
    np.testing.assert_allclose(counts, 0.25, atol=0.03)


def test_loguniform_sample_never_exceeds_high() -> None:
    d = LogUniform(0.1, 0.3)
    rng = np.random.default_rng(2)
    assert all(0.1 <= d.sample(rng) <= 0.3 for _ in range(1000))


def test_int_sample_covers_both_inclusive_bounds() -> None:
    rng = np.random.default_rng(3)
    got = {Int(2, 5).sample(rng) for _ in range(200)}
    assert got == {2, 3, 4, 5}
    assert all(type(v) is int for v in got)


def test_int_log_sample_covers_ends_and_favours_small_values() -> None:
    d = Int(1, 100, log=True)
    rng = np.random.default_rng(4)
    xs = [d.sample(rng) for _ in range(5000)]
    assert min(xs) == 1 and max(xs) == 100
    assert all(type(v) is int for v in xs)
    # log-uniform over [0.5, 100.5]: P(x <= 10) = log(10.5/0.5) / log(100.5/0.5) ~ 0.57.
    assert abs(np.mean(np.array(xs) <= 10) - 0.574) < 0.03


def test_choice_and_ordered_sample_their_values() -> None:
    rng = np.random.default_rng(6)
    assert {Choice(["a", "b", None]).sample(rng) for _ in range(100)} == {"a", "b", None}
    got = {(type(v), v) for v in (Ordered([1, 2.5, True]).sample(rng) for _ in range(100))}
    assert got == {(int, 1), (float, 2.5), (bool, True)}


def test_int_with_one_value_samples_it() -> None:
    assert Int(7, 7).sample(np.random.default_rng(0)) == 7


# --------------------------------------------------------------------------------------------
# Distributions: values (coerce / contains)


def test_uniform_coerce_accepts_numbers_and_returns_plain_float() -> None:
    d = Uniform(0, 1)
    assert d.coerce(1) == 1.0 and type(d.coerce(1)) is float
    assert type(d.coerce(np.float32(0.5))) is float
    assert d.contains(0.0) and d.contains(1.0)
    assert not d.contains(1.0000001) and not d.contains(float("nan"))
    assert not d.contains(True) and not d.contains("0.5") and not d.contains(None)


def test_int_coerce_refuses_floats_and_bools() -> None:
    d = Int(0, 10)
    assert d.coerce(np.int64(3)) == 3 and type(d.coerce(np.int64(3))) is int
    assert not d.contains(3.0)
    assert not d.contains(True)
    assert not d.contains(11) and not d.contains(-1)


def test_choice_coerce_keeps_bools_numbers_and_strings_apart() -> None:
    d = Choice([1, 2, "3"])
    assert d.coerce(2.0) == 2 and type(d.coerce(2.0)) is int  # the stored value comes back
    assert not d.contains(True)  # True == 1 in Python, but not here
    assert not d.contains(3)
    assert Choice([True, False]).contains(True) and not Choice([True, False]).contains(1)


def test_value_errors_name_key_value_and_rule() -> None:
    with pytest.raises(ConfigError, match=r"'opt\.lr'.*2\.0.*out of bounds.*<= value <="):
        LogUniform(1e-3, 1).coerce(2.0, "opt.lr")
    with pytest.raises(ConfigError, match=r"'n'.*'x'.*wrong type.*int"):
        Int(0, 3).coerce("x", "n")
    with pytest.raises(ConfigError, match=r"'act'.*'elu'.*not in choices"):
        Choice(["relu", "tanh"]).coerce("elu", "act")


# --------------------------------------------------------------------------------------------
# Invalid constructions: every one raises ConfigError naming the key and the rule

INVALID_DISTRIBUTIONS = [
    (lambda: Uniform(1, 1), r"Uniform: low=1\.0 must be < high=1\.0"),
    (lambda: Uniform(2, 1), r"Uniform: low=2\.0 must be < high=1\.0"),
    (lambda: Uniform(0, math.inf), r"Uniform: high=inf must be finite"),
    (lambda: Uniform("0", 1), r"Uniform: low='0' must be a real number"),
    (lambda: Uniform(False, 1), r"Uniform: low=False must be a real number"),
    (lambda: LogUniform(0, 1), r"LogUniform: low=0\.0 must be > 0"),
    (lambda: LogUniform(-1, 1), r"LogUniform: low=-1\.0 must be > 0"),
    (lambda: LogUniform(1, 0.5), r"LogUniform: low=1\.0 must be < high=0\.5"),
    (lambda: Int(1.5, 3), r"Int: low=1\.5 must be an int"),
    (lambda: Int(1, 3.0), r"Int: high=3\.0 must be an int"),
    (lambda: Int(5, 4), r"Int: low=5 must be <= high=4"),
    (lambda: Int(0, 4, log=True), r"Int: low=0 must be > 0 when log=True"),
    (lambda: Int(1, 4, log="yes"), r"Int: log='yes' must be a bool"),
    (lambda: Choice([]), r"Choice: values=\[\] must be non-empty"),
    (lambda: Ordered([]), r"Ordered: values=\[\] must be non-empty"),
    (lambda: Choice("abc"), r"Choice: values='abc' must be a sequence"),
    (lambda: Ordered([1, 2, 1]), r"Ordered: values=\[1, 2, 1\] must be distinct"),
    (lambda: Choice([[1], [2]]), r"Choice: values\[0\]=\[1\]: must be an int, float"),
    (lambda: Choice([1.0, math.nan]), r"Choice: values\[1\]=nan: must be finite"),
]


@pytest.mark.parametrize(("build", "message"), INVALID_DISTRIBUTIONS)
def test_invalid_distribution_raises_config_error(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Uniform(1, 0)


INVALID_SPACES = [
    ({"a.b": Uniform(0, 1)}, r"space key 'a\.b': names must be non-empty strings without '\.'"),
    ({"opt": {"": Uniform(0, 1)}}, r"space key 'opt\.': names must be non-empty"),
    ({"opt": {1: Uniform(0, 1)}}, r"space key 'opt\.1': names must be non-empty strings"),
    ({"opt": {}}, r"space key 'opt': a nested dict must not be empty"),
    ({"opt": {"sizes": [1, 2]}}, r"space key 'opt\.sizes': \[1, 2\] is not a Distribution"),
    ({"f": object}, r"space key 'f': .* is not a Distribution, a nested dict or a constant"),
    ({"eps": math.nan}, r"space key 'eps': constant=nan: must be finite"),
]


@pytest.mark.parametrize(("params", "message"), INVALID_SPACES)
def test_invalid_space_raises_config_error_naming_the_dotted_key(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Space(**params)


INVALID_EXPLORE_CONFIGS = [
    ({"resample_probability": -0.1}, r"resample_probability=-0\.1 must satisfy 0 <= p <= 1"),
    ({"resample_probability": 1.5}, r"resample_probability=1\.5 must satisfy 0 <= p <= 1"),
    ({"resample_probability": math.nan}, r"resample_probability=nan must be finite"),
    ({"resample_probability": True}, r"resample_probability=True must be a real number"),
    ({"factor": 1.0}, r"factor=1\.0 must be > 1"),
    ({"factor": 0.8}, r"factor=0\.8 must be > 1"),
    ({"factor": math.inf}, r"factor=inf must be finite"),
    ({"ray_factors": (0.8, 1.2)}, r"ray_factors=\(0\.8, 1\.2\) must satisfy up > 1 and 0 < down"),
    ({"ray_factors": (1.2, 0.0)}, r"ray_factors=\(1\.2, 0\.0\) must satisfy up > 1 and 0 < down"),
    ({"ray_factors": (1.2,)}, r"ray_factors=\(1\.2,\) must be a pair"),
    ({"perturbation": "gauss"}, r"perturbation='gauss' must be one of \('reciprocal', 'ray'\)"),
    ({"boundary": "wrap"}, r"boundary='wrap' must be one of \('clip', 'reflect'\)"),
    ({"custom_mode": "before"}, r"custom_mode='before' must be one of \('replace', 'after'\)"),
    ({"custom": 3}, r"custom=3 must be callable or None"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID_EXPLORE_CONFIGS)
def test_invalid_explore_config_raises_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="ExploreConfig: " + message):
        ExploreConfig(**kwargs)


def test_explore_config_normalises_ray_factors_to_a_float_tuple() -> None:
    cfg = ExploreConfig(ray_factors=[2, 0.5])  # type: ignore[arg-type]
    assert cfg.ray_factors == (2.0, 0.5) and type(cfg.ray_factors) is tuple


# --------------------------------------------------------------------------------------------
# Space: structure, sampling, validation

SPACE = Space(
    lr=LogUniform(1e-4, 1.0),
    opt={"momentum": Uniform(0.8, 0.99), "nesterov": Choice([True, False])},
    layers=Int(1, 8),
    width=Ordered([64, 128, 256]),
    epochs=10,
    name="mlp",
    clip=None,
)


def test_keys_are_sorted_dotted_tunable_keys_without_constants() -> None:
    assert SPACE.keys() == ["layers", "lr", "opt.momentum", "opt.nesterov", "width"]
    assert SPACE.constants() == {"clip": None, "epochs": 10, "name": "mlp"}
    assert list(SPACE.distributions()) == SPACE.keys()


def test_sample_is_nested_plain_json_and_in_the_space() -> None:
    h = SPACE.sample(np.random.default_rng(0))
    assert json.loads(json.dumps(h)) == h
    assert set(h) == {"lr", "opt", "layers", "width", "epochs", "name", "clip"}
    assert set(h["opt"]) == {"momentum", "nesterov"}
    assert (h["epochs"], h["name"], h["clip"]) == (10, "mlp", None)
    SPACE.validate(h)
    assert SPACE.contains(h)


def test_sample_is_reproducible_from_the_seed() -> None:
    a = SPACE.sample(np.random.default_rng(11))
    b = SPACE.sample(np.random.default_rng(11))
    assert a == b
    assert a != SPACE.sample(np.random.default_rng(12))


def _valid() -> dict[str, Any]:
    return {
        "lr": 0.01,
        "opt": {"momentum": 0.9, "nesterov": True},
        "layers": 3,
        "width": 128,
        "epochs": 10,
        "name": "mlp",
        "clip": None,
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    h = _valid()
    node = h
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return h


def _without(path: str) -> dict[str, Any]:
    h = _valid()
    node = h
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    del node[leaf]
    return h


INVALID_HPARAMS = [
    (_without("opt.momentum"), r"'opt\.momentum': missing key"),
    (_without("epochs"), r"'epochs': missing key"),
    ({**_valid(), "extra": 1}, r"'extra': unknown key"),
    (_with("opt.dropout", 0.1), r"'opt\.dropout': unknown key"),
    (_with("lr", 2.0), r"'lr': value 2\.0 is out of bounds; the rule is 0\.0001 <= value <= 1\.0"),
    (_with("lr", "0.1"), r"'lr': value '0\.1' has the wrong type"),
    (_with("layers", 3.0), r"'layers': value 3\.0 has the wrong type.*needs an int"),
    (_with("layers", 9), r"'layers': value 9 is out of bounds"),
    (_with("width", 100), r"'width': value 100 is not in choices \[64, 128, 256\]"),
    (_with("opt.nesterov", 1), r"'opt\.nesterov': value 1 is not in choices \[True, False\]"),
    (_with("epochs", 11), r"'epochs': value 11 differs from the constant 10"),
    (_with("clip", 0), r"'clip': value 0 differs from the constant None"),
    (_with("opt", 0.5), r"'opt': 0\.5 has the wrong type; expected a dict"),
    (_with("lr", {"a": 1}), r"'lr': value \{'a': 1\} has the wrong type"),
]


@pytest.mark.parametrize(("hparams", "message"), INVALID_HPARAMS)
def test_validate_names_key_value_and_rule(hparams: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="space key " + message):
        SPACE.validate(hparams)
    assert not SPACE.contains(hparams)


def test_validate_refuses_a_non_dict() -> None:
    with pytest.raises(ConfigError, match="hparams: .* expected a dict"):
        SPACE.validate([1, 2])  # type: ignore[arg-type]


def test_valid_hparams_pass_including_numpy_scalars() -> None:
    SPACE.validate(_valid())
    assert SPACE.contains(_with("lr", np.float64(0.5)))
    assert SPACE.contains(_with("layers", np.int32(8)))


def test_empty_space_has_no_keys_and_explores_to_itself() -> None:
    space = Space(seed=3)
    assert space.keys() == []
    assert space.sample(np.random.default_rng(0)) == {"seed": 3}
    assert explore(space, {"seed": 3}, np.random.default_rng(0)) == ({"seed": 3}, {})


# --------------------------------------------------------------------------------------------
# Space: flatten / unflatten


def test_flatten_and_unflatten_round_trip_with_constants() -> None:
    flat = SPACE.flatten(_valid())
    assert flat == {
        "clip": None,
        "epochs": 10,
        "layers": 3,
        "lr": 0.01,
        "name": "mlp",
        "opt.momentum": 0.9,
        "opt.nesterov": True,
        "width": 128,
    }
    assert list(flat) == sorted(flat)
    assert SPACE.unflatten(flat) == _valid()


def test_unflatten_refuses_a_key_that_is_both_leaf_and_prefix() -> None:
    with pytest.raises(ConfigError, match=r"flat key 'a\.b': 'a' is also a leaf"):
        SPACE.unflatten({"a": 1, "a.b": 2})
    with pytest.raises(ConfigError, match=r"flat key 'a': also the prefix of another key"):
        SPACE.unflatten({"a.b": 2, "a": 1})
    with pytest.raises(ConfigError, match=r"flat key 'a\.\.b': must be a string of non-empty"):
        SPACE.unflatten({"a..b": 1})


def test_flatten_refuses_dotted_keys() -> None:
    with pytest.raises(ConfigError, match=r"hparams key 'opt\.a\.b': must be a non-empty string"):
        SPACE.flatten({"opt": {"a.b": 1}})


# --------------------------------------------------------------------------------------------
# Space: JSON


def test_to_json_round_trips_exactly_through_json_text() -> None:
    text = json.dumps(SPACE.to_json())
    back = Space.from_json(json.loads(text))
    assert back == SPACE
    assert back.to_json() == SPACE.to_json()
    assert back.keys() == SPACE.keys()
    assert hash(back) == hash(SPACE)


def test_to_json_layout_is_tagged_and_versioned() -> None:
    d = Space(a=Int(1, 4, log=True), b={"c": Uniform(0, 1)}, k="x").to_json()
    assert d == {
        "version": 1,
        "params": {
            "a": {"type": "int", "low": 1, "high": 4, "log": True},
            "b": {"type": "nested", "params": {"c": {"type": "uniform", "low": 0.0, "high": 1.0}}},
            "k": {"type": "constant", "value": "x"},
        },
    }


def test_space_equality_keeps_bools_and_ints_apart() -> None:
    assert Space(a=True) != Space(a=1)
    assert Space(a=Choice([1, 2])) != Space(a=Choice([True, 2]))
    assert Ordered([1, 2]) != Ordered([True, 2])
    assert Space(a=Choice([1, 2])) == Space(a=Choice((1, 2)))
    assert Space(a=Uniform(0, 1)) != Space(a=LogUniform(0.1, 1))


INVALID_JSON = [
    ({"version": 2, "params": {}}, r"space version=2: unsupported"),
    ({"params": {}}, r"must be a JSON object with 'version', 'params'"),
    (
        {"version": 1, "params": {"opt": {"type": "nested", "params": {"lr": {"type": "gamma"}}}}},
        r"space key 'opt\.lr': type='gamma': unknown distribution",
    ),
    (
        {
            "version": 1,
            "params": {
                "opt": {
                    "type": "nested",
                    "params": {"lr": {"type": "log_uniform", "low": 0, "high": 1}},
                }
            },
        },
        r"space key 'opt\.lr': LogUniform: low=0\.0 must be > 0",
    ),
    (
        {"version": 1, "params": {"n": {"type": "int", "low": 1}}},
        r"space key 'n': type='int': fields \['low'\] do not match",
    ),
    (
        {"version": 1, "params": {"n": {"type": "uniform", "low": 0, "high": 1, "x": 2}}},
        r"space key 'n': type='uniform': fields \['high', 'low', 'x'\] do not match",
    ),
    ({"version": 1, "params": {"n": 3}}, r"space key 'n': 3 must be a JSON object with a 'type'"),
    (
        {"version": 1, "params": {"n": {"type": "constant", "value": [1]}}},
        r"space key 'n': \[1\] is not a Distribution",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID_JSON)
def test_from_json_refuses_bad_input_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Space.from_json(data)


# --------------------------------------------------------------------------------------------
# Explore: exact steps per rule


def test_float_multiplies_by_f_or_its_reciprocal() -> None:
    assert step(LogUniform(1e-4, 1), 0.1, up=True) == (pytest.approx(0.12), "mul 1.2")
    assert step(LogUniform(1e-4, 1), 0.1, up=False) == (pytest.approx(0.1 / 1.2), "mul 0.8333")
    assert step(Uniform(0.5, 4), 2.0, up=True, factor=1.5) == (3.0, "mul 1.5")
    assert step(Uniform(0.5, 4), 2.0, up=False, factor=1.5) == (pytest.approx(4 / 3), "mul 0.6667")


def test_ray_perturbation_uses_the_ray_pair() -> None:
    assert step(LogUniform(1e-4, 1), 0.5, up=True, perturbation="ray") == (0.6, "mul 1.2")
    assert step(LogUniform(1e-4, 1), 0.5, up=False, perturbation="ray") == (0.4, "mul 0.8")
    got = step(LogUniform(1e-4, 1), 0.5, up=False, perturbation="ray", ray_factors=(2.0, 0.25))
    assert got == (0.125, "mul 0.25")


def test_uniform_reaching_zero_steps_additively_across_it() -> None:
    # Uniform(-1, 1): a multiplicative step could never move 0 or change sign.
    assert step(Uniform(-1, 1), 0.0, up=True) == (pytest.approx(0.4), "add +0.4")
    assert step(Uniform(-1, 1), 0.1, up=False) == (pytest.approx(-0.3), "add -0.4")
    assert step(Uniform(0, 0.5), 0.0, up=True) == (pytest.approx(0.1), "add +0.1")
    assert step(Uniform(-1, 1), 0.0, up=False, perturbation="ray") == (
        pytest.approx(-0.4),
        "add -0.4",
    )


def test_clip_stops_at_the_bound() -> None:
    assert step(LogUniform(1e-3, 1), 0.9, up=True) == (1.0, "mul 1.2 (clipped)")
    assert step(LogUniform(1e-3, 1), 1e-3, up=False) == (1e-3, "mul 0.8333 (clipped)")
    assert step(Uniform(-1, 1), 0.9, up=True) == (1.0, "add +0.4 (clipped)")


def test_reflect_mirrors_at_the_bound() -> None:
    # Multiplicative: mirrored in log space, 0.9 * 1.2 = 1.08 -> 1 / 1.08.
    got = step(LogUniform(1e-3, 1), 0.9, up=True, boundary="reflect")
    assert got == (pytest.approx(1 / 1.08), "mul 1.2 (reflected)")
    got = step(LogUniform(1e-3, 1), 1e-3, up=False, boundary="reflect")
    assert got == (pytest.approx(1.2e-3), "mul 0.8333 (reflected)")
    # Additive: mirrored linearly, 0.9 + 0.4 = 1.3 -> 0.7.
    got = step(Uniform(-1, 1), 0.9, up=True, boundary="reflect")
    assert got == (pytest.approx(0.7), "add +0.4 (reflected)")


def test_reflect_that_overshoots_the_far_bound_stops_there() -> None:
    # factor 5 on Uniform(0, 1): step 4, 0.5 + 4 = 4.5 mirrors to -2.5, below low.
    assert step(Uniform(0, 1), 0.5, up=True, factor=5.0, boundary="reflect") == (
        0.0,
        "add +4 (reflected)",
    )


def test_int_rounds_away_from_the_current_value() -> None:
    assert step(Int(1, 100), 5, up=True) == (6, "mul 1.2")
    # Floating point lands just past the integer: 50 * 1.1 = 55.00000000000001 and
    # 39 * (1 / 1.3) = 29.999999999999996; rounding away must not add a second step.
    assert step(Int(1, 100), 50, up=True, factor=1.1) == (55, "mul 1.1")
    assert step(Int(1, 100), 39, up=False, factor=1.3) == (30, "mul 0.7692")
    assert step(Int(1, 100), 3, up=True) == (4, "mul 1.2")  # 3.6 -> 4
    assert step(Int(1, 100), 3, up=False) == (2, "mul 0.8333")  # 2.5 -> 2
    assert step(Int(1, 100), 2, up=True) == (3, "mul 1.2")  # 2.4 would round back to 2
    assert step(Int(1, 100), 2, up=False) == (1, "mul 0.8333")
    assert step(Int(1, 100), 50, up=True) == (60, "mul 1.2")


def test_int_at_a_bound_moves_the_other_way() -> None:
    assert step(Int(1, 10), 1, up=False) == (2, "mul 1.2 (bounced)")
    assert step(Int(1, 10), 10, up=True) == (8, "mul 0.8333 (bounced)")
    assert step(Int(3, 4), 4, up=True) == (3, "mul 0.8333 (bounced)")
    assert step(Int(3, 4), 3, up=False) == (4, "mul 1.2 (bounced)")


def test_int_reflect_at_a_bound_moves_inside() -> None:
    # 10 * 1.2 = 12 mirrors in log space to 10 / 1.2 = 8.33, rounded away from 10.
    assert step(Int(1, 10), 10, up=True, boundary="reflect") == (8, "mul 1.2 (reflected)")


def test_int_reaching_zero_steps_additively() -> None:
    assert step(Int(-5, 5), 0, up=True) == (2, "add +2")
    assert step(Int(-5, 5), 0, up=False) == (-2, "add -2")
    assert step(Int(0, 2), 0, up=True) == (1, "add +0.4")  # 0.4 rounded away from 0
    assert step(Int(0, 2), 0, up=False) == (1, "add +0.4 (bounced)")


def test_int_log_uses_the_multiplicative_rule() -> None:
    assert step(Int(16, 512, log=True), 100, up=False) == (83, "mul 0.8333")  # 83.33 -> 83


def test_int_with_one_value_stays_without_drawing_a_direction() -> None:
    rng = ScriptedRng([NO_RESAMPLE])
    cfg = ExploreConfig(resample_probability=0.0)
    got = explore(Space(x=Int(7, 7)), {"x": 7}, cast(np.random.Generator, rng), cfg)
    assert got == ({"x": 7}, {"x": "keep"})
    assert rng.draws == []


def test_ordered_shifts_one_index_and_bounces_at_the_ends() -> None:
    d = Ordered(["s", "m", "l"])
    assert step(d, "m", up=True) == ("l", "shift +1")
    assert step(d, "m", up=False) == ("s", "shift -1")
    assert step(d, "l", up=True) == ("m", "shift -1 (bounced)")
    assert step(d, "s", up=False) == ("m", "shift +1 (bounced)")


def test_ordered_with_one_value_stays() -> None:
    rng = ScriptedRng([NO_RESAMPLE])
    cfg = ExploreConfig(resample_probability=0.0)
    got = explore(Space(x=Ordered(["only"])), {"x": "only"}, cast(np.random.Generator, rng), cfg)
    assert got == ({"x": "only"}, {"x": "keep"})
    assert rng.draws == []


def test_choice_perturbation_resamples() -> None:
    space = Space(act=Choice(["relu", "tanh", "gelu"]))
    cfg = ExploreConfig(resample_probability=0.0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        new, ops = explore(space, {"act": "relu"}, rng, cfg)
        assert ops == {"act": "resample"}
        seen.add(new["act"])
    assert seen == {"relu", "tanh", "gelu"}


def test_resample_probability_one_resamples_every_key_from_the_prior() -> None:
    cfg = ExploreConfig(resample_probability=1.0)
    new, ops = explore(SPACE, _valid(), np.random.default_rng(3), cfg)
    assert ops == {k: "resample" for k in SPACE.distributions()}
    # Each key draws its coin, then its prior sample, in sorted key order.
    rng = np.random.default_rng(3)
    expected = {}
    for key, dist in SPACE.distributions().items():
        rng.random()
        expected[key] = dist.sample(rng)
    assert SPACE.flatten(new) == {**SPACE.flatten(_valid()), **expected}


def test_resample_probability_zero_never_resamples_numbers() -> None:
    cfg = ExploreConfig(resample_probability=0.0)
    rng = np.random.default_rng(4)
    h = _valid()
    for _ in range(200):
        h, ops = explore(SPACE, h, rng, cfg)
        assert all(op != "resample" for key, op in ops.items() if key != "opt.nesterov")


def test_explore_keeps_constants_returns_plain_values_and_does_not_mutate_input() -> None:
    h = _with("lr", np.float64(0.01))
    before = json.dumps(SPACE.flatten(h), default=float)
    new, ops = explore(SPACE, h, np.random.default_rng(9))
    assert json.dumps(SPACE.flatten(h), default=float) == before
    assert set(ops) == set(SPACE.keys())
    assert (new["epochs"], new["name"], new["clip"]) == (10, "mlp", None)
    assert type(new["lr"]) is float and type(new["opt"]["momentum"]) is float
    assert type(new["layers"]) is int and type(new["width"]) is int
    assert type(new["opt"]["nesterov"]) is bool
    SPACE.validate(new)


def test_explore_is_reproducible_from_the_seed() -> None:
    a = explore(SPACE, _valid(), np.random.default_rng(21))
    b = explore(SPACE, _valid(), np.random.default_rng(21))
    assert a == b


def test_explore_refuses_hparams_outside_the_space() -> None:
    with pytest.raises(ConfigError, match=r"space key 'lr': value 5\.0 is out of bounds"):
        explore(SPACE, _with("lr", 5.0), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Explore: custom functions


def test_custom_after_sees_the_builtin_result_and_its_changes_are_logged() -> None:
    seen: list[dict[str, Any]] = []

    def halve_lr(flat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        seen.append(dict(flat))
        return {**flat, "lr": np.float64(flat["lr"] / 2)}

    space = Space(lr=LogUniform(1e-4, 1), opt={"wd": LogUniform(1e-6, 1e-2)}, epochs=3)
    h = {"lr": 0.1, "opt": {"wd": 1e-4}, "epochs": 3}
    rng = ScriptedRng([NO_RESAMPLE, UP, NO_RESAMPLE, DOWN])
    cfg = ExploreConfig(resample_probability=0.0, custom=halve_lr)
    new, ops = explore(space, h, cast(np.random.Generator, rng), cfg)
    assert seen == [{"epochs": 3, "lr": pytest.approx(0.12), "opt.wd": pytest.approx(1e-4 / 1.2)}]
    assert new == {"lr": pytest.approx(0.06), "opt": {"wd": pytest.approx(1e-4 / 1.2)}, "epochs": 3}
    assert type(new["lr"]) is float
    assert ops == {"lr": "mul 1.2; custom", "opt.wd": "mul 0.8333"}


def test_custom_replace_skips_the_builtin_step() -> None:
    def double_layers(flat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**flat, "layers": flat["layers"] * 2}

    cfg = ExploreConfig(custom=double_layers, custom_mode="replace")
    new, ops = explore(SPACE, _valid(), np.random.default_rng(0), cfg)
    assert new == _with("layers", 6)
    assert ops == {k: ("custom" if k == "layers" else "keep") for k in SPACE.distributions()}


def test_custom_output_leaving_the_space_raises() -> None:
    def too_big(flat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**flat, "layers": 100}

    def drops_constant(flat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {k: v for k, v in flat.items() if k != "epochs"}

    def not_a_dict(flat: dict[str, Any], rng: np.random.Generator) -> Any:
        return [1]

    with pytest.raises(ConfigError, match=r"custom explore function left the space: .*'layers'"):
        explore(SPACE, _valid(), np.random.default_rng(0), ExploreConfig(custom=too_big))
    with pytest.raises(ConfigError, match=r"left the space: space key 'epochs': missing key"):
        explore(SPACE, _valid(), np.random.default_rng(0), ExploreConfig(custom=drops_constant))
    with pytest.raises(ConfigError, match=r"custom explore function returned \[1\]"):
        explore(SPACE, _valid(), np.random.default_rng(0), ExploreConfig(custom=not_a_dict))


# --------------------------------------------------------------------------------------------
# Properties


@st.composite
def distributions(draw: st.DrawFn) -> Distribution:
    kind = draw(st.sampled_from(["uniform", "log_uniform", "int", "int_log", "ordered", "choice"]))
    if kind == "uniform":
        low = draw(st.floats(-1e3, 1e3))
        return Uniform(low, low + draw(st.floats(1e-3, 1e3)))
    if kind == "log_uniform":
        low = draw(st.floats(1e-8, 1e3))
        return LogUniform(low, low * draw(st.floats(1.001, 1e6)))
    if kind in ("int", "int_log"):
        low = draw(st.integers(1 if kind == "int_log" else -50, 50))
        return Int(low, low + draw(st.integers(0, 1000)), log=kind == "int_log")
    values = draw(st.lists(st.integers(-100, 100), min_size=1, max_size=6, unique=True))
    return Ordered(values) if kind == "ordered" else Choice(values)


spaces = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), distributions(), min_size=1, max_size=4
).map(lambda d: Space(**d, nested={"x": d[min(d)]}, const=1))

configs = st.builds(
    ExploreConfig,
    resample_probability=st.sampled_from([0.0, 0.25, 1.0]),
    perturbation=st.sampled_from(["reciprocal", "ray"]),
    factor=st.floats(1.01, 4.0),
    boundary=st.sampled_from(["clip", "reflect"]),
)


def _in_bounds(dist: Distribution, value: Any) -> bool:
    if isinstance(dist, Uniform | LogUniform):
        return type(value) is float and dist.low <= value <= dist.high
    if isinstance(dist, Int):
        return type(value) is int and dist.low <= value <= dist.high
    assert isinstance(dist, Ordered | Choice)
    return value in dist.values


@settings(max_examples=200, deadline=None)
@given(space=spaces, config=configs, seed=st.integers(0, 2**32 - 1))
def test_property_random_explores_stay_in_bounds(
    space: Space, config: ExploreConfig, seed: int
) -> None:
    # 200 examples x 50 explores = 10k explores.
    rng = np.random.default_rng(seed)
    h = space.sample(rng)
    dists = space.distributions()
    for _ in range(50):
        h, ops = explore(space, h, rng, config)
        flat = space.flatten(h)
        assert all(_in_bounds(d, flat[k]) for k, d in dists.items()), (flat, ops)
        assert flat["const"] == 1
        assert set(ops) == set(dists)


def test_ten_thousand_explores_at_the_edges_stay_in_bounds() -> None:
    # Tight ranges and large factors push every step against a bound.
    space = Space(
        u=Uniform(0.9, 1.0), z=Uniform(-0.1, 0.0), lu=LogUniform(1e-3, 2e-3),
        i=Int(1, 2), j=Int(-1, 0), k=Int(100, 130, log=True), o=Ordered([1, 2]),
    )  # fmt: skip
    rng = np.random.default_rng(7)
    h = space.sample(rng)
    for n in range(10_000):
        cfg = ExploreConfig(
            resample_probability=0.05,
            factor=[1.2, 3.0, 50.0][n % 3],
            boundary=["clip", "reflect"][n % 2],
            perturbation=["reciprocal", "ray"][n % 5 == 0],
        )
        h, _ = explore(space, h, rng, cfg)
        assert all(_in_bounds(d, h[k]) for k, d in space.distributions().items()), h


@settings(max_examples=300, deadline=None)
@given(
    low=st.integers(-1000, 1000),
    width=st.integers(1, 2000),
    pos=st.floats(0, 1),
    config=configs,
    seed=st.integers(0, 2**32 - 1),
    log=st.booleans(),
)
def test_property_ints_always_move_when_the_range_has_two_values(
    low: int, width: int, pos: float, config: ExploreConfig, seed: int, log: bool
) -> None:
    if log:
        low = abs(low) + 1
    space = Space(n=Int(low, low + width, log=log))
    x = low + round(pos * width)
    no_resample = ExploreConfig(
        resample_probability=0.0,
        perturbation=config.perturbation,
        factor=config.factor,
        boundary=config.boundary,
    )
    new, ops = explore(space, {"n": x}, np.random.default_rng(seed), no_resample)
    assert new["n"] != x, ops
    assert low <= new["n"] <= low + width


@settings(max_examples=100, deadline=None)
@given(space=spaces)
def test_property_to_json_round_trips(space: Space) -> None:
    back = Space.from_json(json.loads(json.dumps(space.to_json())))
    assert back == space
    assert back.distributions() == space.distributions()
    assert back.constants() == space.constants()


def _mean_log_step(perturbation: str, seed: int, steps: int = 20_000) -> float:
    space = Space(x=LogUniform(1e-300, 1e300))
    cfg = ExploreConfig(resample_probability=0.0, perturbation=perturbation)
    rng = np.random.default_rng(seed)
    h = {"x": 1.0}
    for _ in range(steps):
        h, ops = explore(space, h, rng, cfg)
        assert "clipped" not in ops["x"]  # the bounds must never bend the walk
    return math.log(h["x"]) / steps


@pytest.mark.parametrize("seed", [0, 1])
def test_reciprocal_walk_has_no_drift_but_the_ray_pair_drifts(seed: int) -> None:
    # One step's log change is +-log 1.2 (sd 0.182): over 20k steps the mean has sd 0.0013.
    reciprocal = _mean_log_step("reciprocal", seed)
    assert abs(reciprocal) < 4 * math.log(1.2) / math.sqrt(20_000)
    # Ray: mean (log 1.2 + log 0.8) / 2 = log(0.96) / 2 = -0.0204 per step.
    ray = _mean_log_step("ray", seed)
    assert ray == pytest.approx(math.log(0.96) / 2, abs=4 * 0.203 / math.sqrt(20_000))


# --- Latin hypercube initialisation (fire-pbt.md section 12) ---------------------------------


def test_from_unit_maps_quantiles_through_each_scale() -> None:
    assert Uniform(2.0, 4.0).from_unit(0.25) == 2.5
    assert LogUniform(1e-3, 1.0).from_unit(0.5) == pytest.approx(10**-1.5)
    assert LogUniform(1e-3, 1.0).from_unit(0.0) == pytest.approx(1e-3)
    assert [Int(1, 4).from_unit(u) for u in (0.0, 0.24, 0.25, 0.74, 0.99)] == [1, 1, 2, 3, 4]
    assert Choice(("a", "b", "c")).from_unit(0.5) == "b"
    assert Ordered((1, 2)).from_unit(0.999) == 2
    assert 1 <= Int(1, 100, log=True).from_unit(0.5) <= 100


def test_sample_lhs_puts_one_point_in_every_stratum_of_every_dimension() -> None:
    space = Space(lr=LogUniform(1e-3, 1.0), mom=Uniform(0.0, 1.0), width=Int(0, 7), c=3)
    for seed in range(5):
        pts = space.sample_lhs(8, np.random.default_rng(seed))
        assert len(pts) == 8 and all(p["c"] == 3 and space.contains(p) for p in pts)
        lr_strata = sorted(int(8 * math.log10(p["lr"] * 1e3) / 3) for p in pts)
        assert lr_strata == list(range(8))
        assert sorted(int(8 * p["mom"]) for p in pts) == list(range(8))
        assert sorted(p["width"] for p in pts) == list(range(8))


def test_sample_lhs_is_seeded_by_the_generator() -> None:
    space = Space(lr=LogUniform(1e-3, 1.0))
    a = space.sample_lhs(5, np.random.default_rng(1))
    assert a == space.sample_lhs(5, np.random.default_rng(1))
    assert a != space.sample_lhs(5, np.random.default_rng(2))
    assert Space(c=1).sample_lhs(2, np.random.default_rng(0)) == [{"c": 1}, {"c": 1}]
    assert space.sample_lhs(0, np.random.default_rng(0)) == []
