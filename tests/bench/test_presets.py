"""The comparison benches are presets over ``compare()``: tiny tables of each kind, and the
command as a user runs it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from firepbt.algorithms.fire import FirePBT
from firepbt.api import task_attribute
from firepbt.bench import BENCHES, presets
from firepbt.bench.presets import PEAK_GRID, PRESETS, Table
from firepbt.compare import _at
from firepbt.errors import ConfigError
from firepbt.importing import load_object
from firepbt.schedules import parse_schedule
from firepbt.tasks import BUILTIN

ROW_KEYS = {"label", "values", "n", "mean", "std", "median", "min", "max", "wall_s"}


def tiny(table: Table, workers: int = 8, **settings: Any) -> Table:
    return replace(table, workers=workers, settings={**table.settings, **settings})


def bench(name: str, table: Table, out: Path, seeds: int = 2) -> dict[str, Any]:
    result = presets.main(name, seeds=seeds, out=out, tables=(table,))
    json.dumps(result)  # the CLI prints it as JSON
    figures = result["tables"][table.key]
    figures["compare"] = json.loads((Path(figures["folder"]) / "compare.json").read_text())
    return figures


def test_nqm_rows_hand_tuned_schedules_and_the_comparison_files(tmp_path: Path,
                                                                capsys: Any) -> None:
    table = bench("nqm", tiny(PRESETS["nqm"].tables["quick"][0], steps=200), tmp_path)
    assert list(table["rows"]) == ["fire", "pbt", "pb2", "random", "step", "cosine"]
    assert table["value"] == "loss" and table["higher_is_better"] is False
    assert table["worker_steps_per_run"] == 8 * 200 and table["seeds"] == [0, 1]
    for row in table["rows"].values():
        assert set(row) >= ROW_KEYS and row["n"] == 2
        # A loss relative to the start (the metric is minus it): positive, below 1.0.
        assert all(0.0 < v < 1.0 for v in row["values"])
    for name in ("step", "cosine"):
        hand = table["rows"][name]
        assert hand["peak"] in PEAK_GRID
        # The chosen peak has the best mean metric (minus the loss) on the tuning seeds.
        assert hand["tuning"][f"{hand['peak']:.4g}"] == max(hand["tuning"].values())
        assert hand["tuning_worker_steps"] == len(PEAK_GRID) * 3 * 200
    assert set(table["p_reference_better"]) == {"pbt", "pb2", "random", "step", "cosine"}
    assert all(0.0 < p <= 1.0 for p in table["p_reference_better"].values())
    fire = table["fire"]
    assert len(fire["transfers"]) == len(fire["lineage_transfers"]) == 2
    assert 0.0 <= fire["evaluator_budget_used"] <= 1.0
    folder = Path(table["folder"])
    assert folder == tmp_path / "nqm-quick" / "nqm"
    assert {"compare.json", "compare.html", "plan.json", "fire-s0.db"} <= {
        p.name for p in folder.iterdir()}
    # The printed figures are the comparison's, with the NQM's metric turned into its loss.
    summary = json.loads((folder / "compare.json").read_text())
    assert [-v for v in summary["methods"]["fire"]["values"]] == table["rows"]["fire"]["values"]
    printed = capsys.readouterr().out
    assert "nqm: loss (lower is better), W = 8 workers x 200 steps, 2 seeds" in printed
    assert "(peak lr" in printed and "p(fire better than pbt)" in printed


def test_a_bench_resumes_and_prints_the_same_figures(tmp_path: Path, capsys: Any) -> None:
    table = tiny(PRESETS["toys"].tables["quick"][1], steps=60)  # the plain toy
    table = replace(table, methods=tuple(m for m in table.methods if m.name != "pb2"))
    first = bench("toys", table, tmp_path)
    capsys.readouterr()
    again = bench("toys", table, tmp_path)
    assert again["rows"]["fire"]["values"] == first["rows"]["fire"]["values"]
    assert capsys.readouterr().out.count("done before") == 3 * 2


def test_random_search_on_the_toys_starts_anywhere_in_the_space(tmp_path: Path) -> None:
    # The toys start FIRE and PBT in a narrow INIT_SPACE; random search never explores, so its
    # row runs a task whose members start anywhere in SPACE (h in [1e-4, 1.1]).
    table = tiny(PRESETS["toys"].tables["quick"][0], steps=60)
    table = replace(table, methods=tuple(m for m in table.methods if m.name == "random"),
                    reference="random")
    out = bench("toys", table, tmp_path, seeds=1)
    plan = json.loads((Path(out["folder"]) / "plan.json").read_text())
    assert plan["methods"][0]["task"] == "firepbt.bench.presets:DeceptiveFullRange"
    first_h = out["compare"]["methods"]["random"]["median_schedule"][0][2]["h"]
    assert not 0.9 <= first_h <= 1.1  # outside INIT_SPACE (seeded: the best member's start)


def test_fire_init_counts_seeds_at_pbts_level(tmp_path: Path) -> None:
    rows = tuple(m for m in presets.INIT_ROWS if m.name in ("fire-iid-sklearn", "pbt-iid"))
    table = replace(tiny(PRESETS["fire-init"].tables["quick"][0], steps=200), methods=rows)
    out = presets.main("fire-init", seeds=2, out=tmp_path, tables=(table,))["tables"]["nqm"]
    level = out["pbt_level"]
    assert level["row"] == "pbt-iid" and set(level["counts"]) == {"fire-iid-sklearn"}
    assert 0 <= level["counts"]["fire-iid-sklearn"] <= 2
    assert out["reference"] == "fire-iid-sklearn"
    assert "seeds at PBT's level" in presets.format_table(out)


def test_async_sync_rows_run_on_their_own_executor_and_mode(tmp_path: Path) -> None:
    # This process's forkserver runs first (as after any earlier process run in a session):
    # the pool's forked processes must start their own, not wait on this one's.
    from multiprocessing import forkserver

    forkserver.ensure_running()
    rows = tuple(m for m in presets.ASYNC_ROWS
                 if m.name in ("sync-inprocess", "async-process"))
    table = replace(tiny(PRESETS["async-sync"].tables["quick"][0], steps=200), methods=rows)
    out = bench("async-sync", table, tmp_path, seeds=1)
    plan = json.loads((Path(out["folder"]) / "plan.json").read_text())
    assert plan["methods"][1]["executor"] == "process" and plan["methods"][1]["mode"] == "async"
    assert plan["methods"][1]["algorithm"]["pbt"]["rank_at"] == "equal_step"
    assert all(0.0 < r["values"][0] < 1.0 for r in out["rows"].values())


def test_rl_prints_the_area_under_the_answers_curve(tmp_path: Path) -> None:
    table = bench("rl", presets._rl(5, 14, 7, 1), tmp_path, seeds=1)
    assert all(-500.0 <= row["values"][0] <= 0.0 for row in table["rows"].values())
    fire = table["compare"]["methods"]["fire"]
    assert fire["median_curve"][-1][0] == 14
    assert table["rows"]["fire"]["auc"] == [
        pytest.approx(sum(v for _, v in fire["median_curve"]) / len(fire["median_curve"]))]


def test_fmnist_reports_the_answers_test_accuracy(tmp_path: Path) -> None:
    from firepbt.tasks.fmnist import load_fashion_mnist

    try:
        load_fashion_mnist()
    except (OSError, ConfigError):
        pytest.skip("Fashion-MNIST files are not installed")
    table = bench("fmnist", presets._fmnist(5, 14, 7, 1, (0.05,)), tmp_path, seeds=1)
    assert list(table["rows"]) == ["fire", "pbt", "pb2", "random", "step", "cosine",
                                   "schedule-free"]
    names = {"baseline:0": "step", "baseline:1": "cosine", "baseline:2": "schedule-free"}
    for key, m in table["compare"]["methods"].items():
        test = table["rows"][names.get(key, key)]
        value = test["values"][0]
        # The test accuracy of 10,000 images: a multiple of 1/10000, printed instead of the
        # validation accuracy (1,000 images) that chose the answer.
        assert 0.0 < value < 1.0 and math.isclose(value * 10_000, round(value * 10_000))
        assert m["values"][0] == pytest.approx(m["median_curve"][-1][1])


@pytest.mark.slow
def test_teacher_student_populations_train_batched(tmp_path: Path) -> None:
    t = presets._teacher_student(28, 2, (0.01, 0.03), (10_000,))
    t = replace(t, workers=5, methods=tuple(replace(m, processes=5) for m in t.methods),
                settings={**t.settings, "interval": 14})
    table = bench("teacher-student", t, tmp_path, seeds=1)
    assert table["value"] == "FVU" and table["higher_is_better"] is False
    # FVU: a student near the zero function scores about 1; 28 steps cannot reach 0.
    assert all(0.0 < r["values"][0] < 1.5 for r in table["rows"].values())
    assert table["rows"]["step"]["peak"] in (0.01, 0.03)
    assert table["rows"]["schedule-free"]["peak"] in (0.01, 0.03)  # lr: ten times the peak


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "overhead"}, "bench 'overhead': not a comparison"),
    ({"preset": "huge"}, "preset='huge'"), ({"seeds": 0}, "seeds=0")])
def test_bad_arguments_name_the_value(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        presets.main(**{"name": "toys", **kwargs})


def test_a_table_without_its_reference_row_is_refused_before_training(tmp_path: Path) -> None:
    table = presets._nqm((presets.PBT_,), tuned=False)
    with pytest.raises(ConfigError, match="table 'nqm': reference='fire' must be one of its "
                                          "methods \\(pbt\\)"):
        presets.main("nqm", seeds=1, out=tmp_path, tables=(table,))
    assert not any(tmp_path.iterdir())


def test_every_preset_is_a_valid_comparison() -> None:
    # What compare() checks before it runs, for every table of every size, without running:
    # the rows' algorithms accept the run settings and every baseline parses.
    assert set(PRESETS) <= set(BENCHES)
    for name, p in PRESETS.items():
        assert set(p.tables) == set(p.seeds) == {"quick", "full"}, name
        assert p.seeds["full"] >= 5, name
        for size, tables in p.tables.items():
            for t in tables:
                obj = load_object(BUILTIN.get(t.task, t.task))
                defaults = task_attribute(obj, "DEFAULTS")
                steps = t.settings.get("steps", defaults["steps"])
                interval = t.settings.get("interval", defaults["interval"])
                every = t.settings.get("eval_every", defaults.get("eval_every"))
                for m in t.methods:
                    m.algorithm(t.workers).validate(interval, every, steps)
                space = t.settings.get("space", task_attribute(obj, "SPACE"))
                for text in t.baselines.values():
                    for peak in t.settings["peaks"]:
                        parse_schedule(_at(text, peak), space)
                assert any(m.name == t.reference for m in t.methods), (name, size)
    assert FirePBT(population=22).n_evaluators == 6  # the budget split the docs describe


@pytest.mark.slow
def test_the_bench_command_runs_through_compare(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firepbt.cli", "bench", "nqm", "--seeds", "1", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "nqm" and out["preset"] == "quick" and out["seeds"] == 1
    folder = tmp_path / "runs" / "bench" / "nqm-quick" / "nqm"
    assert out["tables"]["nqm"]["folder"] == str(Path("runs/bench/nqm-quick/nqm"))
    summary = json.loads((folder / "compare.json").read_text())
    assert list(summary["methods"]) == ["fire", "pbt", "pb2", "random", "baseline:0",
                                        "baseline:1"]
    assert "data:image/png" in (folder / "compare.html").read_text()
    assert "nqm: loss (lower is better), W = 22 workers x 2000 steps" in proc.stdout
