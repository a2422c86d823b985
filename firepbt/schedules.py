"""Fixed hyperparameter schedules, written as text: the baselines of ``firepbt compare``.

``lr=cosine(0.1); momentum=constant(0.9)`` gives one function per hyperparameter, from the
fraction of training done (0 at the start, 1 at the end) to the value. The forms:

* ``constant(v)``: v throughout;
* ``cosine(peak)`` or ``cosine(peak, end)``: half a cosine from peak down to end (default 0);
* ``linear(start, end)``: a straight line from start to end;
* ``step(peak, factor, at, ...)``: peak, multiplied by factor at each fraction ``at``
  (``step(1.0, 0.1, 0.5, 0.75)``: x0.1 at 50 % and again at 75 %, the classic step decay).

Entries are separated by ``;``. A baseline must give every hyperparameter the search space
tunes; constants of the space ride along, or take a plain value instead
(``lr=constant(1.0); optimizer=schedulefree; warmup_steps=100``: a Schedule-Free baseline on
a task whose space has the constants ``optimizer`` and ``warmup_steps``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from firepbt.errors import ConfigError
from firepbt.space import Space
from firepbt.space_spec import atom

FORMS = "constant(v), cosine(peak[, end]), linear(start, end), step(peak, factor, at, ...)"
_CALL = re.compile(r"^([a-z]+)\((.*)\)$")


@dataclass(frozen=True)
class Schedule:
    """A named fixed schedule: ``values(fraction)`` gives every hyperparameter's value."""

    name: str
    text: str
    parts: Mapping[str, Callable[[float], float]]
    constants: Mapping[str, Any]

    space: Space

    def values(self, fraction: float) -> dict[str, Any]:
        """Every hyperparameter at ``fraction`` of training, nested like the space."""
        flat = {**self.constants, **{k: f(fraction) for k, f in self.parts.items()}}
        return self.space.unflatten(flat)


def parse_schedule(text: str, space: Space, name: str | None = None) -> Schedule:
    """A :class:`Schedule` for ``space`` from its text form.

    Raises:
        ConfigError: a malformed entry, an unknown hyperparameter, or a tuned hyperparameter
            that the baseline leaves out (each message names it).
    """
    tuned = set(space.keys())
    known = tuned | set(space.constants())
    parts: dict[str, Callable[[float], float]] = {}
    overrides: dict[str, Any] = {}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        key, eq, value = (x.strip() for x in entry.partition("="))
        if not eq or not key:
            raise ConfigError(f"--baseline entry {entry!r}: must be key=form(...), e.g. "
                              "'lr=cosine(0.1)'")
        if key not in known:
            raise ConfigError(f"--baseline {key}: not a hyperparameter of the space "
                              f"(it has {sorted(known)})")
        if key in space.constants() and _CALL.match(value.replace(" ", "")) is None:
            overrides[key] = atom(value)  # a constant set to another plain value
            continue
        parts[key] = _form(key, value)
    missing = sorted(tuned - set(parts))
    if missing:
        raise ConfigError(f"--baseline {text!r}: gives no schedule for {missing}; a fixed "
                          "baseline must set every tuned hyperparameter (e.g. constant(v))")
    constants = {**{k: v for k, v in space.constants().items() if k not in parts}, **overrides}
    return Schedule(name or text, text, parts, constants, space)


def _form(key: str, text: str) -> Callable[[float], float]:
    m = _CALL.match(text.replace(" ", ""))
    if m is None:
        raise ConfigError(f"--baseline {key}={text!r}: expected {FORMS}")
    form = m.group(1)
    try:
        args = [float(a) for a in m.group(2).split(",") if a]
    except ValueError:
        raise ConfigError(f"--baseline {key}={text!r}: arguments must be numbers") from None

    def need(ok: bool, rule: str) -> None:
        if not ok:
            raise ConfigError(f"--baseline {key}={text!r}: {form} takes {rule}")

    if form == "constant":
        need(len(args) == 1, "one value")
        value = args[0]
        return lambda f: value
    if form == "cosine":
        need(len(args) in (1, 2), "(peak) or (peak, end)")
        peak, end = args[0], args[1] if len(args) == 2 else 0.0
        return lambda f: end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * min(f, 1.0)))
    if form == "linear":
        need(len(args) == 2, "(start, end)")
        start, end = args
        return lambda f: start + (end - start) * min(f, 1.0)
    if form == "step":
        need(len(args) >= 3 and all(0 < a < 1 for a in args[2:]),
             "(peak, factor, at, ...) with every 'at' a fraction in (0, 1)")
        peak, factor, marks = args[0], args[1], sorted(args[2:])
        return lambda f: peak * factor ** sum(1 for a in marks if f >= a)
    raise ConfigError(f"--baseline {key}={text!r}: unknown form {form!r}; expected {FORMS}")
