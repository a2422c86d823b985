"""Tiny configurations of the real-task benchmark return the documented keys and numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from firepbt.bench import real
from firepbt.bench.real import Config
from firepbt.errors import ConfigError

torch.set_num_threads(1)

TABLE_KEYS = {"task", "metric", "higher_is_better", "population", "steps", "interval",
              "eval_every", "seeds", "peaks", "tuning_seeds", "worker_steps_per_run",
              "methods", "p_fire_better", "fire"}
RUN_KEYS = {"method", "seed", "value", "fitness", "auc", "curve", "schedule"}


def _check_table(out: dict[str, Any], cfg: Config, methods: set[str]) -> dict[str, Any]:
    json.dumps(out)  # the CLI prints it as JSON
    assert {"bench", "preset", "seeds", "config", "table", "plots", "wall_s"} <= set(out)
    table = out["table"]
    assert set(table) >= TABLE_KEYS
    assert set(table["methods"]) == methods
    assert table["worker_steps_per_run"] == cfg.population * cfg.steps
    assert set(table["p_fire_better"]) == methods - {"fire"}
    assert all(0.0 <= p <= 1.0 for p in table["p_fire_better"].values())
    for m, d in table["methods"].items():
        assert d["n"] == cfg.seeds
        assert [r["seed"] for r in d["runs"]] == list(range(cfg.seeds))
        for r in d["runs"]:
            assert set(r) >= RUN_KEYS, m
            assert r["method"] == m
            assert r["curve"][-1][0] == cfg.steps
            assert r["schedule"][0][0] == 0
            if m in real.POPULATION_METHODS:  # learned: contiguous pieces up to the end
                assert r["schedule"][-1][1] == cfg.steps
                assert all(a[1] == b[0] for a, b in zip(r["schedule"], r["schedule"][1:],
                                                         strict=False))
        assert d["values"] == [r["value"] for r in d["runs"]]
    fire = table["fire"]
    assert len(fire["transfers"]) == cfg.seeds
    assert sum(fire["subpop_sizes"]) + fire["evaluators"] == cfg.population
    assert 0.0 <= fire["evaluator_budget_used"] <= 1.0
    return table


def test_teacher_student_tiny(tmp_path: Path) -> None:
    # Each curve point evaluates 20,000 inputs per member: few points keep the test fast.
    cfg = Config(population=5, steps=28, interval=14, eval_every=2, seeds=2,
                 peaks=(0.01, 0.03), tuning_seeds=1)
    out = real.main("teacher-student", config=cfg, processes=1, plots_dir=tmp_path)
    table = _check_table(out, cfg, {"fire", "pbt", "random", "step", "cosine"})
    assert table["metric"] == "FVU" and table["higher_is_better"] is False
    for d in table["methods"].values():
        # FVU: a student near the zero function scores about 1; 28 steps cannot reach 0.
        assert all(0.0 < v < 1.5 for v in d["values"])
    for name in ("step", "cosine"):
        h = table["methods"][name]
        assert h["peak"] in cfg.peaks
        # The chosen peak has the best (highest) tuning fitness, i.e. the lowest FVU.
        assert h["tuning"][f"{h['peak']:.4g}"] == max(h["tuning"].values())
        assert h["tuning_worker_steps"] == len(cfg.peaks) * cfg.tuning_seeds * cfg.steps
        assert h["runs"][0]["schedule"][0][2] == pytest.approx(h["peak"])
    # Population answers report the positive FVU of their final fitness (-FVU).
    for r in table["methods"]["pbt"]["runs"]:
        assert r["value"] == pytest.approx(-r["fitness"])
        assert r["value"] == pytest.approx(r["curve"][-1][1])
    assert sorted(Path(p).name for p in out["plots"]) == [
        "real-teacher-student-curves.png", "real-teacher-student-schedules.png"]
    assert "cosine" in real.format_table(table)


def test_schedules_follow_their_peak() -> None:
    cfg = Config(population=2, steps=20, interval=10, eval_every=5, seeds=1)
    outs = real.run_schedules("teacher-student", cfg,
                              [("cosine", 1e-4, 0), ("cosine", 0.05, 0)], test=True)
    # Same seed, same data: a 500x larger peak must learn more in 20 steps.
    assert [c[0] for c in outs[0]["curve"]] == [10, 20]
    assert outs[1]["value"] < outs[0]["value"]


def test_rl_tiny_reports_auc() -> None:
    cfg = Config(population=5, steps=14, interval=7, eval_every=1, seeds=1)
    out = real.main("rl", config=cfg, processes=1)
    table = _check_table(out, cfg, {"fire", "pbt", "random"})
    assert set(table["auc"]["methods"]) == {"fire", "pbt", "random"}
    for d in table["methods"].values():
        r = d["runs"][0]
        assert -500.0 <= r["value"] <= 0.0
        assert r["auc"] == pytest.approx(sum(v for _, v in r["curve"]) / len(r["curve"]))
    assert out["plots"] == []


def test_fmnist_tiny_uses_test_accuracy() -> None:
    pytest.importorskip("firepbt.tasks.fmnist")
    from firepbt.tasks.fmnist import load_fashion_mnist

    try:
        load_fashion_mnist()
    except (OSError, ConfigError):
        pytest.skip("Fashion-MNIST files are not installed")
    cfg = Config(population=5, steps=14, interval=7, eval_every=1, seeds=1, peaks=(0.05,),
                 tuning_seeds=1)
    out = real.main("fmnist", config=cfg, processes=1)
    table = _check_table(out, cfg, {"fire", "pbt", "random", "step", "cosine"})
    for d in table["methods"].values():
        r = d["runs"][0]
        assert 0.0 <= r["value"] <= 1.0 and 0.0 <= r["fitness"] <= 1.0
        # value is the test accuracy (10k images), fitness the validation accuracy (1k): a
        # multiple of 1/10000 that is generally not the validation number.
        assert math.isclose(r["value"] * 10_000, round(r["value"] * 10_000), abs_tol=1e-6)
        assert r["fitness"] == pytest.approx(r["curve"][-1][1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": "toys"}, "bench 'toys'"), ({"preset": "huge"}, "preset='huge'"),
     ({"seeds": 0}, "seeds=0")],
)
def test_main_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        real.main(**kwargs)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="steps=0"):
        Config(population=4, steps=0, interval=1, eval_every=1, seeds=1)
    with pytest.raises(ConfigError, match="tuning_seeds=0"):
        Config(population=4, steps=10, interval=5, eval_every=1, seeds=1, peaks=(0.1,))


def test_presets_are_valid_for_fire() -> None:
    # Every preset must pass FIRE's own run validation (sign test points, warm-up).
    for task, presets in real.PRESETS.items():
        for name, cfg in presets.items():
            real.algorithm("fire", cfg.population).validate(cfg.interval, cfg.eval_every,
                                                            cfg.steps)
            if name == "full":
                assert cfg.seeds >= 5, task
