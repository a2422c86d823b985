"""Search spaces written as text, for the command line (``--space``).

``lr=loguniform(1e-4, 1e-1); wd=loguniform(1e-6, 1e-2); momentum=0.9`` gives
``Space(lr=LogUniform(1e-4, 1e-1), wd=LogUniform(1e-6, 1e-2), momentum=0.9)``. Entries are
separated by ``;`` (or newlines, or commas outside parentheses). Each is ``key=value`` where the
value is one of

* ``uniform(low, high)``, ``loguniform(low, high)``,
* ``int(low, high)`` or ``int(low, high, log)``,
* ``choice(a, b, ...)`` (unordered) or ``ordered(a, b, ...)`` (neighbours are close),
* a constant (number or word), which rides along unchanged.

A path to a ``.json`` file holding ``Space.to_json()`` output is accepted too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from firepbt.errors import ConfigError
from firepbt.space import Choice, Int, LogUniform, Ordered, Space, Uniform

_CALL = re.compile(r"^([a-z_]+)\((.*)\)$", re.DOTALL)
FORMS = "uniform(low, high), loguniform(low, high), int(low, high[, log]), choice(a, b, ...), " \
        "ordered(a, b, ...) or a constant"


def parse_space(text: str) -> Space:
    """A :class:`Space` from its text form or from a JSON file's path.

    Raises:
        ConfigError: naming the entry, the value and the rule it breaks.
    """
    if text.strip().endswith(".json"):
        path = Path(text.strip())
        if not path.is_file():
            raise ConfigError(f"--space {text!r}: file {str(path)!r} does not exist")
        try:
            return Space.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--space {text!r}: not valid JSON ({exc})") from None
    entries = [e.strip() for e in _split(text) if e.strip()]
    if not entries:
        raise ConfigError(f"--space {text!r}: empty; write e.g. 'lr=loguniform(1e-4, 1e-1)'")
    params: dict[str, Any] = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ConfigError(f"--space entry {entry!r}: must be key=value, e.g. "
                              "'lr=loguniform(1e-4, 1e-1)'")
        if key in params:
            raise ConfigError(f"--space: hyperparameter {key!r} is given twice")
        params[key] = _value(key, value.strip())
    return Space(**params)


def _split(text: str) -> list[str]:
    """Split on ';', newlines and commas that are outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch in ";\n" or (ch == "," and depth == 0):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def atom(text: str) -> Any:
    """A plain value: an int, a float, true/false, else the (unquoted) string."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text.strip("'\"")


def _value(key: str, text: str) -> Any:
    m = _CALL.match(text)
    if m is None:
        if "(" in text or ")" in text or not text:
            raise ConfigError(f"--space {key}={text!r}: expected {FORMS}")
        return atom(text)
    form, args = m.group(1), [a for a in m.group(2).split(",") if a.strip()]
    values = [atom(a) for a in args]
    try:
        if form in ("uniform", "loguniform"):
            if len(values) != 2:
                raise ConfigError(f"{form} takes (low, high), got {len(values)} values")
            return (Uniform if form == "uniform" else LogUniform)(*values)
        if form == "int":
            if len(values) not in (2, 3) or (len(values) == 3 and values[2] != "log"):
                raise ConfigError("int takes (low, high) or (low, high, log)")
            return Int(values[0], values[1], log=len(values) == 3)
        if form in ("choice", "ordered"):
            return (Choice if form == "choice" else Ordered)(tuple(values))
    except ConfigError as exc:
        raise ConfigError(f"--space {key}={text!r}: {exc}") from None
    raise ConfigError(f"--space {key}={text!r}: unknown form {form!r}; expected {FORMS}")
