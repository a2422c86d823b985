"""Search space: typed distributions, sampling, validation and the PBT explore step.

A :class:`Space` maps names to distributions (tunable), nested dicts of them, or constants
(fixed settings carried unchanged). Hyperparameters are nested dicts of plain Python values, so
they are JSON-able and can be stored as they are; flattened keys are dotted (``"opt.lr"``).

Explore (spec: pbt.md, "Explore rules"), per tunable key, in sorted key order:

- with probability ``resample_probability`` the value is **resampled** from its prior;
- otherwise it is **perturbed**:

  - ``Uniform`` with ``low > 0``, ``LogUniform`` and ``Int`` with ``low > 0``: multiplied by
    ``factor`` or ``1/factor`` with equal chance ("reciprocal": a random walk in log space with
    no drift), or by one of ``ray_factors`` ("ray": 1.2 or 0.8, which drifts down 4 % per pair).
    Multiplying is a step in log space, so log-scale values follow the same rule.
  - ``Uniform`` and ``Int`` with ``low <= 0``: a multiplicative step can neither reach nor cross
    zero, so these take an *additive* step instead: ``+-(factor - 1) * (high - low)``
    ("reciprocal", symmetric, so no drift) or ``(m - 1) * (high - low)`` for ``m`` in
    ``ray_factors`` ("ray").
  - ``Int`` moves by at least one step: the real-valued result is rounded *away* from the
    current value; if the bound handling leaves it where it was (it sat at a bound), it moves
    the other way (the inverse step) instead. An ``Int`` with a single value stays.
  - ``Ordered`` shifts one index up or down with equal chance, bouncing back at the ends.
  - ``Choice`` (unordered) is resampled.
  - Results leaving ``[low, high]`` are clipped, or reflected at the bound (in log space for
    multiplicative steps, linearly for additive ones, then clipped if they overshoot again).

Every explore returns the new values and the operation applied per tunable key, e.g.
``"mul 1.2"``, ``"mul 0.8333 (clipped)"``, ``"add -0.2"``, ``"shift +1 (bounced)"``,
``"resample"``, ``"keep"``; a custom explore function adds ``"; custom"`` (mode ``"after"``) or
writes ``"custom"`` (mode ``"replace"``) on the keys it changed.
"""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import numpy as np

from firepbt.errors import ConfigError

Scalar: TypeAlias = float | int | str | bool | None
"""A plain JSON-able leaf value: what hyperparameters and constants are made of."""

SPACE_FORMAT_VERSION = 1
"""Version of :meth:`Space.to_json`'s layout; :meth:`Space.from_json` refuses others."""

# Relative tolerance when rounding a perturbed int: 5 * 1.2 is 6.000000000000001 in floating
# point, and rounding *away* from 5 must give 6, not 7.
_ROUND_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# Value helpers


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python scalars so values stay JSON-able and compare simply."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _kind(value: Any) -> str:
    """The comparison class of a leaf: bools are not numbers here (``True`` is not ``1``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, numbers.Real):
        return "num"
    return "other"


def _same(a: Any, b: Any) -> bool:
    """Equality of leaf values that keeps bools, numbers, strings and None apart."""
    a, b = _plain(a), _plain(b)
    return _kind(a) == _kind(b) != "other" and bool(a == b)


def _as_scalar(value: Any, what: str) -> Scalar:
    """Check that ``value`` is a JSON-able scalar (finite if a number); ``what`` names it."""
    value = _plain(value)
    kind = _kind(value)
    if kind == "other":
        raise ConfigError(
            f"{what}={value!r}: must be an int, float, str, bool or None (a JSON scalar)"
        )
    if kind == "num":
        if not math.isfinite(value):
            raise ConfigError(f"{what}={value!r}: must be finite")
        # Fractions, Decimals etc. become the builtin they stand for, for JSON.
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
    return value


def _bound_float(owner: str, name: str, value: Any) -> float:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{owner}: {name}={value!r} must be a real number")
    if not math.isfinite(value):
        raise ConfigError(f"{owner}: {name}={value!r} must be finite")
    return float(value)


def _bound_int(owner: str, name: str, value: Any) -> int:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{owner}: {name}={value!r} must be an int (Int bounds are integers)")
    return int(value)


def _choice_values(owner: str, values: Any) -> tuple[Scalar, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"{owner}: values={values!r} must be a sequence (list or tuple)")
    if len(values) == 0:
        raise ConfigError(f"{owner}: values=[] must be non-empty")
    plain = tuple(_as_scalar(v, f"{owner}: values[{i}]") for i, v in enumerate(values))
    seen: set[tuple[str, Scalar]] = set()
    for v in plain:
        tag = (_kind(v), v)
        if tag in seen:
            raise ConfigError(f"{owner}: values={list(plain)!r} must be distinct ({v!r} repeats)")
        seen.add(tag)
    return plain


def _where(key: str) -> str:
    return f"space key {key!r}"


# --------------------------------------------------------------------------------------------
# Numeric perturbation


@dataclass(frozen=True)
class _Move:
    """One perturbation step: ``x * amount`` (multiplicative) or ``x + amount`` (additive)."""

    multiplicative: bool
    amount: float

    def apply(self, x: float) -> float:
        return x * self.amount if self.multiplicative else x + self.amount

    def inverse(self) -> _Move:
        amount = 1.0 / self.amount if self.multiplicative else -self.amount
        return _Move(self.multiplicative, amount)

    def describe(self) -> str:
        return f"mul {self.amount:.4g}" if self.multiplicative else f"add {self.amount:+.4g}"


def _draw_move(
    rng: np.random.Generator, config: ExploreConfig, multiplicative: bool, span: float
) -> _Move:
    up = bool(rng.random() < 0.5)
    if config.perturbation == "reciprocal":
        if multiplicative:
            return _Move(True, config.factor if up else 1.0 / config.factor)
        # Symmetric steps: the additive analogue of f and 1/f, so again no drift.
        step = (config.factor - 1.0) * span
        return _Move(False, step if up else -step)
    m = config.ray_factors[0] if up else config.ray_factors[1]
    return _Move(True, m) if multiplicative else _Move(False, (m - 1.0) * span)


def _into_bounds(
    c: float, low: float, high: float, multiplicative: bool, boundary: str
) -> tuple[float, str]:
    """Clip or reflect ``c`` into ``[low, high]``; the second item notes what happened."""
    if low <= c <= high:
        return c, ""
    if boundary == "clip":
        return min(max(c, low), high), " (clipped)"
    if multiplicative:
        # Reflect in log space; written as high * (high / c) so huge bounds cannot overflow.
        r = high * (high / c) if c > high else low * (low / c)
    else:
        r = 2.0 * high - c if c > high else 2.0 * low - c
    # A step longer than the range overshoots the far bound too: stop there.
    return min(max(r, low), high), " (reflected)"


def _perturb_float(
    x: float,
    low: float,
    high: float,
    rng: np.random.Generator,
    config: ExploreConfig,
    multiplicative: bool,
) -> tuple[float, str]:
    move = _draw_move(rng, config, multiplicative, high - low)
    c, note = _into_bounds(move.apply(x), low, high, multiplicative, config.boundary)
    return float(c), move.describe() + note


def _int_target(x: int, move: _Move, low: int, high: int, boundary: str) -> tuple[int, str]:
    c, note = _into_bounds(move.apply(float(x)), low, high, move.multiplicative, boundary)
    tol = _ROUND_TOLERANCE * max(1.0, abs(c))
    if c > x:
        n = max(math.ceil(c - tol), x + 1)
    elif c < x:
        n = min(math.floor(c + tol), x - 1)
    else:
        n = x
    return min(max(n, low), high), note


def _perturb_int(
    x: int, low: int, high: int, rng: np.random.Generator, config: ExploreConfig
) -> tuple[int, str]:
    if low == high:
        return x, "keep"
    # Multiplicative steps need a positive range; see the module docstring.
    move = _draw_move(rng, config, low > 0, float(high - low))
    n, note = _int_target(x, move, low, high, config.boundary)
    if n == x:
        # x sat at a bound and the step pointed outwards: an int must move, so go the other way.
        move = move.inverse()
        n, _ = _int_target(x, move, low, high, config.boundary)
        note = " (bounced)"
    return n, move.describe() + note


# --------------------------------------------------------------------------------------------
# Distributions


class Distribution(ABC):
    """A typed prior over one hyperparameter. Subclasses validate their bounds at construction.

    A distribution built on its own has no key yet, so its construction errors name the class
    and the offending argument; :meth:`Space.from_json` adds the dotted key.
    """

    type_name: ClassVar[str]

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Scalar:
        """Draw one value from the prior, as a plain Python value."""

    def from_unit(self, u: float) -> Scalar:
        """The value at quantile ``u`` in [0, 1) (Latin hypercube initialisation).

        Built-in distributions map ``u`` through their own scale: uniform linearly,
        log-uniform in log space, integers rounded (each value gets an equal share; log
        integers as in :meth:`sample`), choices by index.
        """
        raise ConfigError(f"{type(self).__name__}: no quantile function; use init='iid'")

    @abstractmethod
    def coerce(self, value: Any, key: str = "value") -> Scalar:
        """Return ``value`` as the plain Python value this distribution holds.

        Raises:
            ConfigError: naming ``key``, the value and the rule, if ``value`` has the wrong type
                or lies outside the distribution.
        """

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a valid value of this distribution."""
        try:
            self.coerce(value)
        except ConfigError:
            return False
        return True

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`Distribution.from_json` rebuilds it exactly."""

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Distribution:
        """Rebuild a distribution written by :meth:`to_json`.

        Raises:
            ConfigError: unknown ``type``, unexpected fields or invalid bounds.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"distribution={data!r}: must be a JSON object with a 'type'")
        kind = data.get("type")
        cls = _DISTRIBUTIONS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ConfigError(
                f"type={kind!r}: unknown distribution; expected one of {sorted(_DISTRIBUTIONS)}"
            )
        fields = {k: v for k, v in data.items() if k != "type"}
        expected = cls._json_fields
        if set(fields) - set(expected) or not set(cls._required_fields) <= set(fields):
            raise ConfigError(
                f"type={kind!r}: fields {sorted(fields)} do not match; expected {list(expected)}"
            )
        return cls(**fields)

    _json_fields: ClassVar[tuple[str, ...]]
    _required_fields: ClassVar[tuple[str, ...]]

    @abstractmethod
    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        """One explore step from ``value`` (already coerced); returns (new value, op)."""


class _Bounded(Distribution):
    """Shared checks for the numeric distributions over ``[low, high]``."""

    low: Any
    high: Any

    def _check_real(self, value: Any, key: str) -> float:
        value = _plain(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"{_where(key)}: value {value!r} has the wrong type; {self!r} needs a real number"
            )
        if not self.low <= value <= self.high:  # also refuses NaN
            raise ConfigError(
                f"{_where(key)}: value {value!r} is out of bounds; "
                f"the rule is {self.low!r} <= value <= {self.high!r}"
            )
        return float(value)


@dataclass(frozen=True)
class Uniform(_Bounded):
    """Real values uniform on ``[low, high]`` (``low < high``, both finite).

    Perturbed multiplicatively when ``low > 0``, additively otherwise (module docstring).
    """

    low: float
    high: float

    type_name: ClassVar[str] = "uniform"
    _json_fields: ClassVar[tuple[str, ...]] = ("low", "high")
    _required_fields: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        low = _bound_float("Uniform", "low", self.low)
        high = _bound_float("Uniform", "high", self.high)
        if not low < high:
            raise ConfigError(f"Uniform: low={low!r} must be < high={high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def from_unit(self, u: float) -> float:
        return min(max(self.low + float(u) * (self.high - self.low), self.low), self.high)

    def coerce(self, value: Any, key: str = "value") -> float:
        return self._check_real(value, key)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type_name, "low": self.low, "high": self.high}

    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        return _perturb_float(value, self.low, self.high, rng, config, self.low > 0)


@dataclass(frozen=True)
class LogUniform(_Bounded):
    """Real values whose logarithm is uniform on ``[log low, log high]`` (``0 < low < high``)."""

    low: float
    high: float

    type_name: ClassVar[str] = "log_uniform"
    _json_fields: ClassVar[tuple[str, ...]] = ("low", "high")
    _required_fields: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        low = _bound_float("LogUniform", "low", self.low)
        high = _bound_float("LogUniform", "high", self.high)
        if not low > 0:
            raise ConfigError(f"LogUniform: low={low!r} must be > 0 (log scale needs low > 0)")
        if not low < high:
            raise ConfigError(f"LogUniform: low={low!r} must be < high={high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def sample(self, rng: np.random.Generator) -> float:
        x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        # exp(log(high)) can land one ulp above high.
        return min(max(x, self.low), self.high)

    def from_unit(self, u: float) -> float:
        lo, hi = math.log(self.low), math.log(self.high)
        return min(max(math.exp(lo + float(u) * (hi - lo)), self.low), self.high)

    def coerce(self, value: Any, key: str = "value") -> float:
        return self._check_real(value, key)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type_name, "low": self.low, "high": self.high}

    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        return _perturb_float(value, self.low, self.high, rng, config, True)


@dataclass(frozen=True)
class Int(_Bounded):
    """Integers in ``[low, high]``, both inclusive; ``log=True`` samples log-uniformly.

    ``low == high`` is allowed (a single value, which explore leaves alone); ``log`` needs
    ``low > 0``. Perturbation moves at least one step (module docstring).
    """

    low: int
    high: int
    log: bool = False

    type_name: ClassVar[str] = "int"
    _json_fields: ClassVar[tuple[str, ...]] = ("low", "high", "log")
    _required_fields: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        low = _bound_int("Int", "low", self.low)
        high = _bound_int("Int", "high", self.high)
        if not isinstance(self.log, bool | np.bool_):
            raise ConfigError(f"Int: log={self.log!r} must be a bool")
        if not low <= high:
            raise ConfigError(f"Int: low={low!r} must be <= high={high!r}")
        if self.log and not low > 0:
            raise ConfigError(f"Int: low={low!r} must be > 0 when log=True (log scale)")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "log", bool(self.log))

    def sample(self, rng: np.random.Generator) -> int:
        if not self.log:
            return int(rng.integers(self.low, self.high, endpoint=True))
        # Widen by half a step each side so the end values get their share after rounding.
        lo, hi = math.log(self.low - 0.5), math.log(self.high + 0.5)
        n = round(math.exp(rng.uniform(lo, hi)))
        return min(max(n, self.low), self.high)

    def from_unit(self, u: float) -> int:
        if not self.log:
            n = self.low + math.floor(float(u) * (self.high - self.low + 1))
        else:
            lo, hi = math.log(self.low - 0.5), math.log(self.high + 0.5)
            n = round(math.exp(lo + float(u) * (hi - lo)))
        return min(max(n, self.low), self.high)

    def coerce(self, value: Any, key: str = "value") -> int:
        value = _plain(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(
                f"{_where(key)}: value {value!r} has the wrong type; {self!r} needs an int"
            )
        self._check_real(value, key)
        return int(value)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type_name, "low": self.low, "high": self.high, "log": self.log}

    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        return _perturb_int(value, self.low, self.high, rng, config)


class _Choices(Distribution):
    """Shared parts of the two finite distributions."""

    values: tuple[Scalar, ...]
    _json_fields: ClassVar[tuple[str, ...]] = ("values",)
    _required_fields: ClassVar[tuple[str, ...]] = ("values",)

    def _setup(self) -> None:
        object.__setattr__(self, "values", _choice_values(type(self).__name__, self.values))

    def index(self, value: Any) -> int:
        """Position of ``value`` in ``values`` (bools, numbers and strings kept apart).

        Raises:
            ConfigError: if ``value`` is not one of the values.
        """
        for i, v in enumerate(self.values):
            if _same(v, value):
                return i
        raise ConfigError(f"value {value!r} is not in choices {list(self.values)!r}")

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.values[int(rng.integers(len(self.values)))]

    def from_unit(self, u: float) -> Scalar:
        n = len(self.values)
        return self.values[min(max(math.floor(float(u) * n), 0), n - 1)]

    def coerce(self, value: Any, key: str = "value") -> Scalar:
        try:
            return self.values[self.index(value)]
        except ConfigError as err:
            raise ConfigError(f"{_where(key)}: {err}") from None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type_name, "values": list(self.values)}

    def __eq__(self, other: object) -> bool:
        # Tuple equality would call Ordered([1]) and Ordered([True]) equal.
        return (
            type(other) is type(self)
            and isinstance(other, _Choices)
            and [(_kind(v), v) for v in self.values] == [(_kind(v), v) for v in other.values]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple((_kind(v), v) for v in self.values)))


@dataclass(frozen=True, eq=False)
class Ordered(_Choices):
    """A finite list of values in a meaningful order; explore shifts to a neighbouring index."""

    values: tuple[Scalar, ...]

    type_name: ClassVar[str] = "ordered"

    def __post_init__(self) -> None:
        self._setup()

    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        if len(self.values) == 1:
            return value, "keep"
        i = self.index(value)
        step = 1 if rng.random() < 0.5 else -1
        note = ""
        if not 0 <= i + step < len(self.values):
            step, note = -step, " (bounced)"
        return self.values[i + step], f"shift {step:+d}{note}"


@dataclass(frozen=True, eq=False)
class Choice(_Choices):
    """A finite set of values without order; explore resamples it."""

    values: tuple[Scalar, ...]

    type_name: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        self._setup()

    def _perturb(
        self, value: Any, rng: np.random.Generator, config: ExploreConfig
    ) -> tuple[Scalar, str]:
        # Without an order there is no "neighbour": a fresh draw is the only unbiased move.
        return self.sample(rng), "resample"


_DISTRIBUTIONS: dict[str, type[Distribution]] = {
    cls.type_name: cls for cls in (Uniform, LogUniform, Int, Ordered, Choice)
}


# --------------------------------------------------------------------------------------------
# Space

_Tree: TypeAlias = dict[str, Any]  # str -> Distribution | Scalar | _Tree


def _build_tree(params: Mapping[Any, Any], prefix: str) -> _Tree:
    tree: _Tree = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ConfigError(
                f"space key {prefix + str(key)!r}: names must be non-empty strings without '.' "
                "(dots join nested keys)"
            )
        dotted = prefix + key
        if isinstance(value, Distribution):
            tree[key] = value
        elif isinstance(value, Mapping):
            if not value:
                raise ConfigError(f"{_where(dotted)}: a nested dict must not be empty")
            tree[key] = _build_tree(value, dotted + ".")
        else:
            if _kind(_plain(value)) == "other":
                raise ConfigError(
                    f"{_where(dotted)}: {value!r} is not a Distribution, a nested dict or a "
                    "constant (int, float, str, bool or None)"
                )
            tree[key] = _as_scalar(value, f"{_where(dotted)}: constant")
    return tree


def _leaves(tree: _Tree, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, node in tree.items():
        if isinstance(node, dict):
            yield from _leaves(node, prefix + key + ".")
        else:
            yield prefix + key, node


def _tree_to_json(tree: _Tree) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(tree):
        node = tree[key]
        if isinstance(node, dict):
            out[key] = {"type": "nested", "params": _tree_to_json(node)}
        elif isinstance(node, Distribution):
            out[key] = node.to_json()
        else:
            out[key] = {"type": "constant", "value": node}
    return out


def _tree_from_json(data: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        where = _where(prefix[:-1]) if prefix else "space params"
        raise ConfigError(f"{where}: {data!r} must be a JSON object")
    params: dict[str, Any] = {}
    for key, node in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(node, Mapping):
            raise ConfigError(f"{_where(dotted)}: {node!r} must be a JSON object with a 'type'")
        kind = node.get("type")
        if kind == "nested":
            if set(node) != {"type", "params"}:
                raise ConfigError(f"{_where(dotted)}: a nested node has exactly 'type', 'params'")
            params[key] = _tree_from_json(node["params"], dotted + ".")
        elif kind == "constant":
            if set(node) != {"type", "value"}:
                raise ConfigError(f"{_where(dotted)}: a constant has exactly 'type', 'value'")
            params[key] = node["value"]
        else:
            try:
                params[key] = Distribution.from_json(node)
            except ConfigError as err:
                raise ConfigError(f"{_where(dotted)}: {err}") from None
    return params


class Space:
    """A search space: tunable distributions, nested dicts of them and constants.

    Example::

        Space(lr=LogUniform(1e-4, 1.0), opt={"momentum": Uniform(0.8, 0.99)}, epochs=10)

    Constants are carried unchanged and never explored; tasks use them for fixed settings.

    Args:
        **params: name -> :class:`Distribution`, nested dict (same rules) or constant
            (int/float/str/bool/None; numbers finite).

    Raises:
        ConfigError: naming the dotted key and the rule, for a name that is empty or contains a
            dot, an empty nested dict, or a value of another type.
    """

    def __init__(self, **params: Any) -> None:
        self._tree = _build_tree(params, "")
        leaves = sorted(_leaves(self._tree))
        self._distributions = {k: v for k, v in leaves if isinstance(v, Distribution)}
        self._constants = {k: v for k, v in leaves if not isinstance(v, Distribution)}

    # -- structure ---------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Flattened dotted keys of the tunable parameters, sorted."""
        return list(self._distributions)

    def distributions(self) -> dict[str, Distribution]:
        """Dotted key -> distribution of every tunable parameter, in sorted key order."""
        return dict(self._distributions)

    def constants(self) -> dict[str, Scalar]:
        """Dotted key -> value of every constant, in sorted key order."""
        return dict(self._constants)

    # -- values ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw every tunable value from its prior (in sorted key order); constants as given.

        Returns:
            A nested dict of plain Python values (JSON-able).
        """
        flat: dict[str, Any] = {k: d.sample(rng) for k, d in self._distributions.items()}
        flat.update(self._constants)
        return self.unflatten(flat)

    def sample_lhs(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` points of one scrambled Latin hypercube over the tunable values.

        Each dimension (a tunable key, in sorted order) is cut into ``n`` equal-probability
        strata and every stratum holds exactly one point; the design is seeded from ``rng``
        (``scipy.stats.qmc.LatinHypercube``) and each coordinate is mapped through its
        distribution's :meth:`Distribution.from_unit`. Constants are carried as given.
        """
        if n < 1:
            return []
        dists = list(self._distributions.items())
        if dists:
            from scipy.stats import qmc

            design = qmc.LatinHypercube(d=len(dists), scramble=True, seed=rng).random(n)
        else:
            design = np.zeros((n, 0))
        out = []
        for row in design:
            flat: dict[str, Any] = {k: d.from_unit(float(u)) for (k, d), u in zip(dists, row,
                                                                                   strict=True)}
            flat.update(self._constants)
            out.append(self.unflatten(flat))
        return out

    def validate(self, hparams: Mapping[str, Any]) -> None:
        """Check that ``hparams`` is exactly a point of this space.

        Raises:
            ConfigError: naming the dotted key, the value and the rule: a missing or unknown
                key, a value of the wrong type, out of bounds or not in the choices, a constant
                that changed, or a nested dict where a value belongs (or the reverse).
        """
        self._normalize(hparams)

    def contains(self, hparams: Mapping[str, Any]) -> bool:
        """Whether :meth:`validate` would accept ``hparams``."""
        try:
            self._normalize(hparams)
        except ConfigError:
            return False
        return True

    def _normalize(self, hparams: Any) -> dict[str, Any]:
        """Validate ``hparams`` and return it as a nested dict of plain Python values."""
        return self._normalize_node(self._tree, hparams, "")

    def _normalize_node(self, tree: _Tree, node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            where = _where(prefix[:-1]) if prefix else "hparams"
            raise ConfigError(f"{where}: {node!r} has the wrong type; expected a dict")
        unknown = sorted(str(k) for k in node if k not in tree)
        if unknown:
            raise ConfigError(f"{_where(prefix + unknown[0])}: unknown key (not in the space)")
        out: dict[str, Any] = {}
        for key, spec in tree.items():
            dotted = prefix + key
            if key not in node:
                raise ConfigError(f"{_where(dotted)}: missing key (every space key is required)")
            value = node[key]
            if isinstance(spec, dict):
                out[key] = self._normalize_node(spec, value, dotted + ".")
            elif isinstance(spec, Distribution):
                out[key] = spec.coerce(value, dotted)
            elif _same(value, spec):
                out[key] = spec
            else:
                raise ConfigError(
                    f"{_where(dotted)}: value {value!r} differs from the constant {spec!r} "
                    "(constants are never changed)"
                )
        return out

    # -- dotted keys -------------------------------------------------------------------------

    def flatten(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Nested dict -> ``{dotted key: leaf}``, constants included, keys sorted.

        The inverse of :meth:`unflatten`. Does not validate values.

        Raises:
            ConfigError: if ``hparams`` is not a dict or a key is not a string or contains '.'.
        """
        if not isinstance(hparams, Mapping):
            raise ConfigError(f"hparams={hparams!r}: must be a dict")
        flat: dict[str, Any] = {}
        self._flatten_into(hparams, "", flat)
        return dict(sorted(flat.items()))

    def _flatten_into(self, node: Mapping[str, Any], prefix: str, flat: dict[str, Any]) -> None:
        for key, value in node.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ConfigError(
                    f"hparams key {prefix + str(key)!r}: must be a non-empty string without '.'"
                )
            if isinstance(value, Mapping):
                self._flatten_into(value, prefix + key + ".", flat)
            else:
                flat[prefix + key] = value

    def unflatten(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """``{dotted key: leaf}`` -> nested dict; the inverse of :meth:`flatten`.

        Raises:
            ConfigError: if a key is not a string, has an empty part, or is both a leaf and a
                prefix of another key (``"a"`` and ``"a.b"``).
        """
        nested: dict[str, Any] = {}
        for key, value in flat.items():
            if not isinstance(key, str) or "" in key.split("."):
                raise ConfigError(f"flat key {key!r}: must be a string of non-empty dotted parts")
            *parents, leaf = key.split(".")
            node = nested
            for i, part in enumerate(parents):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    clash = ".".join(parents[: i + 1])
                    raise ConfigError(f"flat key {key!r}: {clash!r} is also a leaf")
                node = child
            if leaf in node:
                raise ConfigError(f"flat key {key!r}: also the prefix of another key")
            node[leaf] = value
        return nested

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (stored in the experiment DB); see :meth:`from_json`."""
        return {"version": SPACE_FORMAT_VERSION, "params": _tree_to_json(self._tree)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Space:
        """Rebuild a space from :meth:`to_json` output; ``from_json(s.to_json()) == s``.

        Raises:
            ConfigError: an unknown version, a malformed node or an invalid distribution, naming
                the dotted key and the rule.
        """
        if not isinstance(data, Mapping) or set(data) != {"version", "params"}:
            raise ConfigError(f"space={data!r}: must be a JSON object with 'version', 'params'")
        if data["version"] != SPACE_FORMAT_VERSION:
            raise ConfigError(
                f"space version={data['version']!r}: unsupported; this firepbt reads version "
                f"{SPACE_FORMAT_VERSION}"
            )
        return cls(**_tree_from_json(data["params"], ""))

    def _canonical(self) -> str:
        # JSON text keeps True and 1 apart, unlike dict equality.
        return json.dumps(self.to_json(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self._canonical() == other._canonical()

    def __hash__(self) -> int:
        return hash(self._canonical())

    def __repr__(self) -> str:
        return "Space(" + ", ".join(f"{k}={v!r}" for k, v in self._tree.items()) + ")"


# --------------------------------------------------------------------------------------------
# Explore

_PERTURBATIONS = ("reciprocal", "ray")
_BOUNDARIES = ("clip", "reflect")
_CUSTOM_MODES = ("replace", "after")


@dataclass(frozen=True)
class ExploreConfig:
    """Settings of the explore step (spec: pbt.md, "Explore rules").

    Attributes:
        resample_probability: chance that a key is resampled from its prior instead of
            perturbed; in ``[0, 1]``.
        perturbation: ``"reciprocal"`` (times ``factor`` or ``1/factor``: no drift) or ``"ray"``
            (times ``ray_factors[0]`` or ``ray_factors[1]``, Ray Tune's 1.2 / 0.8).
        factor: ``f`` for ``"reciprocal"``; must be > 1.
        ray_factors: ``(up, down)`` for ``"ray"``; ``up > 1`` and ``0 < down < 1``.
        boundary: ``"clip"`` or ``"reflect"`` values that leave the bounds.
        custom: optional user function ``(flat hparams, rng) -> flat hparams``. It receives a
            copy of the full flat dict (dotted keys, constants included) and must return the full
            flat dict; its output is validated against the space.
        custom_mode: ``"replace"`` the built-in step with ``custom`` or run it ``"after"`` it.

    Raises:
        ConfigError: naming the field, its value and the rule.
    """

    resample_probability: float = 0.25
    perturbation: str = "reciprocal"
    factor: float = 1.2
    ray_factors: tuple[float, float] = (1.2, 0.8)
    boundary: str = "clip"
    custom: Callable[[dict[str, Any], np.random.Generator], dict[str, Any]] | None = None
    custom_mode: str = "after"

    def __post_init__(self) -> None:
        p = _bound_float("ExploreConfig", "resample_probability", self.resample_probability)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"ExploreConfig: resample_probability={p!r} must satisfy 0 <= p <= 1")
        object.__setattr__(self, "resample_probability", p)
        factor = _bound_float("ExploreConfig", "factor", self.factor)
        if not factor > 1.0:
            raise ConfigError(f"ExploreConfig: factor={factor!r} must be > 1")
        object.__setattr__(self, "factor", factor)
        rf = self.ray_factors
        if isinstance(rf, str | bytes) or not isinstance(rf, Sequence) or len(rf) != 2:
            raise ConfigError(f"ExploreConfig: ray_factors={rf!r} must be a pair (up, down)")
        up = _bound_float("ExploreConfig", "ray_factors[0]", rf[0])
        down = _bound_float("ExploreConfig", "ray_factors[1]", rf[1])
        if not (up > 1.0 and 0.0 < down < 1.0):
            raise ConfigError(
                f"ExploreConfig: ray_factors={(up, down)!r} must satisfy up > 1 and 0 < down < 1"
            )
        object.__setattr__(self, "ray_factors", (up, down))
        for name, allowed in (
            ("perturbation", _PERTURBATIONS),
            ("boundary", _BOUNDARIES),
            ("custom_mode", _CUSTOM_MODES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"ExploreConfig: {name}={value!r} must be one of {allowed}")
        if self.custom is not None and not callable(self.custom):
            raise ConfigError(f"ExploreConfig: custom={self.custom!r} must be callable or None")


_DEFAULT_EXPLORE = ExploreConfig()


def explore(
    space: Space,
    hparams: Mapping[str, Any],
    rng: np.random.Generator,
    config: ExploreConfig = _DEFAULT_EXPLORE,
) -> tuple[dict[str, Any], dict[str, str]]:
    """One PBT explore step from ``hparams`` (typically the donor's). Pure.

    Args:
        space: the search space ``hparams`` belongs to.
        hparams: the current nested hyperparameters; validated first.
        rng: the only source of randomness; keys draw in sorted order, so a seed replays.
        config: resample probability, perturbation rule, bounds handling, custom function.

    Returns:
        ``(new nested hparams, op per tunable dotted key)``, e.g. ``{"lr": "mul 1.2",
        "wd": "resample", "layers": "shift +1"}``. Values are plain Python and inside the
        space; constants are unchanged.

    Raises:
        ConfigError: if ``hparams`` is not in the space, or the custom function's output is not.
    """
    current = space.flatten(space._normalize(hparams))
    new = dict(current)
    replace = config.custom is not None and config.custom_mode == "replace"
    ops: dict[str, str] = {}
    for key, dist in space.distributions().items():
        if replace:
            ops[key] = "keep"
        elif rng.random() < config.resample_probability:
            new[key], ops[key] = dist.sample(rng), "resample"
        else:
            new[key], ops[key] = dist._perturb(current[key], rng, config)

    if config.custom is not None:
        out = config.custom(dict(new), rng)
        if not isinstance(out, Mapping):
            raise ConfigError(f"custom explore function returned {out!r}; expected a flat dict")
        try:
            checked = space.flatten(space._normalize(space.unflatten(out)))
        except ConfigError as err:
            raise ConfigError(f"custom explore function left the space: {err}") from None
        for key in space.distributions():
            if not _same(checked[key], new[key]):
                ops[key] = "custom" if replace else f"{ops[key]}; custom"
        new = checked
    return space.unflatten(new), ops


__all__ = [
    "SPACE_FORMAT_VERSION",
    "Choice",
    "Distribution",
    "ExploreConfig",
    "Int",
    "LogUniform",
    "Ordered",
    "Scalar",
    "Space",
    "Uniform",
    "explore",
]
