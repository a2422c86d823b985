"""Whole runs on a PostgreSQL store, the way users run them: process workers, ``firepbt check``,
and a controller SIGKILLed mid-run, then resumed by a new one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgres extra)")

from firepbt import PBT, resume, run  # noqa: E402
from firepbt.cli import main as cli  # noqa: E402
from firepbt.invariants import check_store  # noqa: E402
from firepbt.store import open_store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "steps=48, interval=4, executor='process', workers=2, seed=7"

KILLED_RUN = """
from firepbt import PBT, run
if __name__ == "__main__":
    run("quadratic", algorithm=PBT(population=4), store={url!r}, {settings})
"""


def test_a_whole_run_with_process_workers_checks_clean(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run("quadratic", algorithm=PBT(population=4), store=postgres_url,
                 steps=48, interval=4, executor="process", workers=2, seed=7)
    assert result.status() == "finished"
    assert [w.step for w in result.store.workers()] == [48] * 4
    assert result.store.events("exploit"), "PBT made no exploit: the run proves little"
    result.store.close()
    capsys.readouterr()
    assert cli(["check", postgres_url]) == 0
    assert "ok: all invariants hold" in capsys.readouterr().out


@pytest.fixture(scope="module")
def killed_then_resumed(postgres_server: object) -> str:
    """A run whose controller SIGKILLs itself after its 12th commit, then resumed."""
    url = f"{postgres_server.url}?experiment=killed"  # type: ignore[attr-defined]
    code = textwrap.dedent(KILLED_RUN.format(url=url, settings=SETTINGS))
    env = {**os.environ, "FIREPBT_CRASH_AT": "controller.after_commit:12"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with open_store(url, create=False) as store:
        assert store.get_state("status") == "running"
        assert 0 < len(store.segments(status="completed")) < 48
    result = resume(url, workers=2)
    assert result.status() == "finished"
    result.store.close()
    return url


def test_a_killed_run_resumes_on_postgres(killed_then_resumed: str) -> None:
    with open_store(killed_then_resumed, create=False) as store:
        assert [w.step for w in store.workers()] == [48] * 4
        assert store.lock_holder() is None  # released by the resumed controller
    # Every record-level invariant (lineage, exploit coherence, metrics, sizes) holds.
    assert check_store(killed_then_resumed, files=False) == []


def test_a_killed_run_resumed_on_postgres_leaves_no_checkpoint_files(
    killed_then_resumed: str,
) -> None:
    assert check_store(killed_then_resumed, files=True) == []


def test_controller_bench_measures_a_postgres_store_and_drops_its_experiments(
    postgres_server: object,
) -> None:
    from firepbt.bench.controller import measure

    url = postgres_server.url  # type: ignore[attr-defined]
    row = measure(PBT(population=20), intervals=3, store_kind=url)
    assert row["store"] == "postgres" and row["decisions"] >= 60 and row["exploits"] > 0
    with psycopg_connect(url) as raw:
        left = raw.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE "
                           "'firepbt_bench%%'").fetchall()
    assert left == []


def test_bench_store_option_is_for_the_controller_bench_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["bench", "overhead", "--store", "postgresql://h/db"]) != 0
    assert "--store 'postgresql://h/db': only the controller bench" in capsys.readouterr().err


def psycopg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_the_cli_runs_and_resumes_on_a_postgres_store_and_exits_zero(
    postgres_url: str, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "firepbt.cli"]
    run_ = subprocess.run([*argv, "run", "quadratic", "--population", "2", "--steps", "20",
                           "--store", postgres_url, "-q"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert run_.returncode == 0, run_.stderr
    assert "the store is not a file" in run_.stdout
    again = subprocess.run([*argv, "resume", postgres_url, "-q"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr


OUTAGE_RUN = """
from firepbt import PBT, run
if __name__ == "__main__":
    run("sleep", algorithm=PBT(population=4), store={url!r}, steps=300, interval=10,
        executor="process", workers=2, seed=3)
"""


@pytest.mark.slow
def test_a_run_survives_its_postgres_server_stopping_for_10_s(tmp_path: Path) -> None:
    """Issue 10's fault test: the server stops mid-run for 10 s, then comes back. The run
    finishes, checks clean, and no finished segment is redone (commits wait and replay)."""
    from firepbt.store.pgserver import TempPostgres, missing_reason

    if (why := missing_reason()) is not None:
        pytest.skip(why)
    with TempPostgres() as pg:  # started on entry
        url = f"{pg.url}?experiment=outage"
        code = textwrap.dedent(OUTAGE_RUN.format(url=url))
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            done = 0
            while done < 8 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
                with contextlib.suppress(Exception), open_store(url, create=False) as st:
                    done = len(st.segments(status="completed"))
            assert proc.poll() is None and done >= 8, "the run did not get going"
            pg.stop("fast")
            time.sleep(10)
            assert proc.poll() is None, "the run gave up while the server was down"
            pg.start()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert check_store(url) == []
        with open_store(url, create=False) as st:
            completed = st.segments(status="completed")
            assert st.get_state("status") == "finished"
            assert [w.step for w in st.workers()] == [300] * 4
            assert not st.events("failure")
            # Nothing was redone: no segment ran twice (no retry, no second attempt), and
            # every completed segment wrote its own checkpoint, which the store records.
            assert all(s.attempts == 0 for s in st.segments())
            assert len({s.to_checkpoint for s in completed}) == len(completed) >= 120
            assert {s.to_checkpoint for s in completed} <= {c.id for c in
                                                            st.checkpoints(include_deleted=True)}
