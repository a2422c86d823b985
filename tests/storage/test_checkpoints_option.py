"""``firepbt run --checkpoints URL`` / ``fp.run(checkpoints=...)``: a user chooses where the
checkpoints go, every resume finds them there, and the best member's weights come back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import firepbt as fp
from firepbt.errors import ConfigError
from firepbt.storage import open_storage
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy

pytest.importorskip("fsspec", reason="fsspec is not installed (the fsspec extra)")

FIREPBT = [sys.executable, "-m", "firepbt.cli"]


def firepbt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIREPBT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_the_cli_keeps_checkpoints_on_a_url_through_run_resume_check_and_export(
        tmp_path: Path) -> None:
    root = (tmp_path / "shared" / "ckpt").as_uri()
    run = firepbt("run", "quadratic", "--population", "4", "--steps", "40", "--interval", "8",
                  "--store", "q.db", "--checkpoints", root, "--no-report", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "q.db.ckpt").exists()  # nothing beside the store
    with open_store(str(tmp_path / "q.db"), create=False) as st:
        live = st.checkpoints()
        assert live and all(c.path.startswith(root + "/c") for c in live)
        assert st.get_state("checkpoint_root") == root
    assert sorted(c.id for c in live) == open_storage(root).ids()
    check = firepbt("check", "q.db", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    resumed = firepbt("resume", "q.db", "-q", cwd=tmp_path)  # finished: nothing to do
    assert resumed.returncode == 0, resumed.stderr
    export = firepbt("export", "q.db", "--checkpoint", "best", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "best").is_dir() and any((tmp_path / "best").iterdir())


def test_another_checkpoint_root_for_an_existing_experiment_is_refused(tmp_path: Path) -> None:
    store = str(tmp_path / "q.db")
    settings = {"store": store, "steps": 8, "interval": 4, "executor": "inprocess",
                "algorithm": fp.PBT(population=2)}
    fp.run(QuadraticToy, checkpoints=tmp_path / "a", **settings)
    with pytest.raises(ConfigError, match=r"checkpoints=.*keeps its checkpoints in .*a'"):
        fp.run(QuadraticToy, checkpoints=tmp_path / "b", **settings)
    default_store = str(tmp_path / "d.db")
    fp.run(QuadraticToy, **{**settings, "store": default_store})
    with pytest.raises(ConfigError, match=r"d\.db\.ckpt"):  # the default root counts too
        fp.run(QuadraticToy, checkpoints=tmp_path / "b", **{**settings, "store": default_store})
    result = fp.run(QuadraticToy, checkpoints=tmp_path / "a", **settings)  # same root: fine
    assert json.loads(json.dumps(result.summary()))["status"] == "finished"
    assert Path(result.best_checkpoint()).parent == tmp_path / "a"
