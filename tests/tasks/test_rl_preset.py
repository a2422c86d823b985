"""The RL bench (``firepbt bench rl``): its rows, and its tuned linear-decay schedule run for
real on Acrobot in a tiny comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")

from firepbt.bench import presets  # noqa: E402
from firepbt.compare import _at  # noqa: E402
from firepbt.schedules import parse_schedule  # noqa: E402
from firepbt.tasks.rl import AcrobotA2C  # noqa: E402


def test_full_preset_has_every_row_the_issue_asks_for() -> None:
    preset = presets.PRESETS["rl"]
    assert preset.seeds["full"] == 10
    (table,) = preset.tables["full"]
    assert [m.name for m in table.methods] == ["fire", "pbt", "pb2", "random"]
    assert table.baselines == {"linear": presets.A2C_LINEAR,
                               "schedule-free": presets.a2c_schedule_free(15)} and table.auc
    # Every peak of the grid is a learning rate the population methods can draw too.
    lr = AcrobotA2C.SPACE.to_json()["params"]["lr"]
    assert all(lr["low"] <= p <= lr["high"] for p in table.settings["peaks"])


def test_linear_schedule_decays_lr_to_zero_at_a_fixed_entropy_cost() -> None:
    sched = parse_schedule(_at(presets.A2C_LINEAR, 4e-3), AcrobotA2C.SPACE)
    assert sched.values(0.0)["lr"] == pytest.approx(4e-3)
    assert sched.values(0.75)["lr"] == pytest.approx(1e-3)
    assert {sched.values(f)["entropy_cost"] for f in (0.0, 0.5, 0.99)} == {0.01}


def test_tiny_rl_bench_tunes_the_peak_and_follows_the_decay(tmp_path: Path) -> None:
    table = presets._rl(5, 14, 7, 1, peaks=(2e-3, 4e-3), tuning=(10_000,))
    result = presets.main("rl", seeds=1, out=tmp_path, tables=(table,))
    rows = result["tables"]["rl"]["rows"]
    assert set(rows) == {"fire", "pbt", "pb2", "random", "linear", "schedule-free"}
    assert rows["schedule-free"]["peak"] in (2e-3, 4e-3)
    assert rows["linear"]["peak"] in (2e-3, 4e-3)
    assert all(-500.0 <= r["values"][0] <= 0.0 for r in rows.values())
    summary = json.loads((Path(result["tables"]["rl"]["folder"]) / "compare.json").read_text())
    pieces = summary["methods"]["baseline:0"]["median_schedule"]
    # Set step by step (schedule_every=1): 14 pieces, lr falling by peak/14 each update.
    peak = rows["linear"]["peak"]
    assert [p[0] for p in pieces] == list(range(14))
    assert [p[2]["lr"] for p in pieces] == pytest.approx([peak * (1 - s / 14) for s in range(14)])


def test_lunar_lander_table_is_the_same_comparison_on_lunarlander() -> None:
    from firepbt.tasks.rl import LunarLanderA2C

    table = presets._lunar_lander()
    assert (table.key, table.task) == ("lunarlander", "lunarlander")
    assert [m.name for m in table.methods] == ["fire", "pbt", "pb2", "random"]
    for peak in table.settings["peaks"]:
        assert parse_schedule(_at(table.baselines["linear"], peak),
                              LunarLanderA2C.SPACE).values(0.0)["lr"] == peak
