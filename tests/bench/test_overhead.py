"""The overhead benchmark: its rows run, cold and warm, and nothing in it is quoted."""

from __future__ import annotations

import inspect

import pytest

from firepbt.bench import overhead
from firepbt.bench.overhead import measure
from firepbt.bench.raytune_peer import available
from firepbt.cli import main


def test_fire_row_runs_evaluators_on_process_workers() -> None:
    r = measure(workers=8, algorithm="fire", population=8, eval_every=1)
    assert r["algorithm"] == "fire" and r["mode"] == "async"
    assert r["evaluations"] >= 1
    assert 0.0 < r["efficiency"] <= 1.0 and r["wall_s"] >= r["ideal_s"]


def test_a_warm_run_starts_its_clock_once_the_workers_are_up() -> None:
    r = measure(workers=2, population=2, steps=20, warm=True)
    assert r["warm"] and r["segments"] == 4 and r["ideal_s"] == 0.4
    assert 0.0 < r["efficiency"] <= 1.0 and r["wall_s"] >= r["ideal_s"]
    assert r["lazy_imports_s"] >= 0.0


def test_no_peer_figure_is_written_into_the_bench() -> None:
    # Peers are measured (firepbt.bench.raytune_peer) or missing with the reason, never quoted.
    source = inspect.getsource(overhead)
    assert "peers_same_work_s" not in source and "16.0" not in source


def test_peer_is_an_option_of_the_overhead_bench_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "controller", "--peer", "raytune"]) != 0
    assert "only the overhead bench" in capsys.readouterr().err


@pytest.mark.skipif(available() is None, reason="Ray Tune is installed here")
def test_peer_without_ray_tune_names_the_extra(capsys: pytest.CaptureFixture[str]) -> None:
    # Asked for explicitly, a missing peer stops the bench before anything runs.
    assert main(["bench", "overhead", "--peer", "raytune"]) != 0
    assert "firepbt[raytune]" in capsys.readouterr().err
