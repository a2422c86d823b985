"""Issue #8 e: ``check``, ``status``, ``report`` and ``export`` never import code a store names.

A crafted store names a module (as its task and as a custom explore function) that writes a
marker file when it is imported. Reading the store must never import it: only ``resume`` runs
code the store names, and it says which before it does.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from rel_helpers import write_task

from firepbt import PBT, run
from firepbt.algorithms import algorithm_from_config
from firepbt.algorithms.fire import FirePBT
from firepbt.cli import main as cli
from firepbt.invariants import without_code

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def explore(hparams, rng):
    return hparams

class Task:
    pass
"""


def crafted_store(tmp_path: Path) -> tuple[Path, Path]:
    """A finished run whose stored task and custom explore name a module with a side effect."""
    path = tmp_path / "run.db"
    run("quadratic", algorithm=PBT(population=4), steps=16, interval=4, store=str(path),
        executor="inprocess", workers=2, seed=2)
    marker = tmp_path / "IMPORTED"
    evil = write_task(tmp_path, EVIL.format(marker=str(marker)), name="evil.py")
    conn = sqlite3.connect(path)
    with conn:
        (text,) = conn.execute("SELECT config FROM experiment").fetchone()
        config = json.loads(text)
        config["task"] = f"{evil}:Task"
        config["algorithm"]["explore"]["custom"] = f"{evil}:explore"
        conn.execute("UPDATE experiment SET config = ?", (json.dumps(config),))
    conn.close()
    return path, marker


@pytest.mark.parametrize("command", [
    ["check"], ["status"], ["report", "-o", "{tmp}/r.html"], ["export"],
    ["export", "--format", "csv"],
])
def test_reading_a_store_never_imports_the_code_it_names(
    command: list[str], tmp_path: Path
) -> None:
    """Before: ``check`` rebuilt the algorithm from the store, importing ``explore.custom``."""
    path, marker = crafted_store(tmp_path)
    args = [a.format(tmp=tmp_path) for a in command]
    cli([args[0], str(path), *args[1:]])
    assert not marker.exists(), f"firepbt {args[0]} imported code named in the store"


def test_fire_config_rebuilds_without_importing_its_nested_custom_explore(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "IMPORTED"
    evil = write_task(tmp_path, EVIL.format(marker=str(marker)), name="evil_fire.py")
    config = FirePBT(population=8, subpop_sizes=(3, 3)).to_config()
    config["pbt"]["explore"]["custom"] = f"{evil}:explore"
    alg = algorithm_from_config(without_code(config))
    assert len(alg.topology()) == 8 and not marker.exists()


def test_resume_says_which_code_it_imports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.db"
    run("quadratic", algorithm=PBT(population=2), steps=8, interval=4, store=str(path),
        executor="inprocess", workers=2, seed=2)
    capsys.readouterr()
    assert cli(["resume", str(path), "--executor", "inprocess", "-q"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("resume: imports code named in the store: task "
                     "firepbt.tasks.toys:QuadraticToy")
