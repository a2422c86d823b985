"""Import what a user names: ``file.py:Name``, ``module:Name`` or a built-in task's short name.

Used by the API, the executors and the algorithms (a custom explore), so it lives outside the
examples package (``firepbt.tasks``), which only lends it the short names.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from firepbt.errors import ConfigError
from firepbt.tasks import BUILTIN


def load_object(ref: str) -> Any:
    """Import ``file.py:Name`` / ``module:Name`` / a builtin short name; ConfigError if not."""
    ref = BUILTIN.get(ref, ref)
    if ":" not in ref:
        raise ConfigError(
            f"task {ref!r}: expected 'file.py:Name', 'module:Name' or one of {sorted(BUILTIN)}"
        )
    where, name = ref.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.exists():
                raise ConfigError(f"task {ref!r}: file {str(path)!r} does not exist")
            # A task file may import its sibling modules, as it would when run as a script.
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            mod_name = f"firepbt_user_{path.stem}_{abs(hash(str(path)))}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
        else:
            module = _import_module(where)
    except ImportError as exc:
        raise ConfigError(f"task {ref!r}: cannot import {where!r}: {exc}") from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"task {ref!r}: {where!r} has no attribute {name!r}") from None


def _import_module(name: str) -> Any:
    """Import ``name``; a module in the current directory counts too, as with ``python -m``
    (the ``firepbt`` command's own import path does not hold the current directory)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def absolute_ref(ref: str) -> str:
    """``file.py:Name`` with the file's absolute path (a store must resume from any folder);
    other references unchanged."""
    ref = BUILTIN.get(ref, ref)
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).resolve()}:{name}"
    return ref


def source_file(ref: str) -> Path | None:
    """The file a task reference's code lives in (for the edited-task check), if any."""
    ref = BUILTIN.get(ref, ref)
    where = ref.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where).resolve()
    spec = importlib.util.find_spec(where) if where else None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None
