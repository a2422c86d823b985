"""Named metrics, lower-is-better metrics and dict-valued evaluate() (issue 12, item 10)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import firepbt as fp
from firepbt.errors import ConfigError, RunFailed
from firepbt.store import open_store

SPACE = fp.Space(lr=fp.LogUniform(1e-3, 1.0))


class Loss(fp.Trainable):
    """A loss that falls faster with a larger lr; lower is better."""

    METRIC = fp.Metric("loss", mode="min")

    def setup(self, hparams: Any, seed: int) -> None:
        self.hparams, self.progress = dict(hparams), 0.0

    def train(self, steps: int) -> None:
        self.progress += steps * self.hparams["lr"]

    def evaluate(self) -> Any:
        return 1.0 / (1.0 + self.progress)

    def save(self, path: Path) -> None:
        (Path(path) / "p").write_text(repr(self.progress))

    def load(self, path: Path) -> None:
        self.progress = float((Path(path) / "p").read_text())


class Several(Loss):
    """evaluate() returns several named metrics."""

    METRIC = "accuracy"

    def evaluate(self) -> Any:
        loss = super().evaluate()
        return {"loss": loss, "accuracy": 1.0 - loss}


def run(task: Any, **kw: Any) -> fp.Result:
    return fp.run(task, SPACE, fp.PBT(population=4, quantile=0.25), steps=40, interval=10,
                  store="memory://", executor="inprocess", seed=3, **kw)


def test_a_lower_is_better_metric_is_stored_as_reported_and_ranked_the_right_way() -> None:
    res = run(Loss)
    assert res.metric == fp.Metric("loss", "min")
    finals = res.final_metrics()
    assert all(v is not None and 0 < v < 1 for v in finals.values())  # raw losses, not negated
    assert res.best == min(finals, key=lambda k: finals[k])  # type: ignore[arg-type]
    # Exploits copy members with a lower loss.
    for e in res.events("exploit"):
        assert e.info["donor_fitness"] > e.info["fitness"]  # fitness = -loss
    assert res.summary()["metric"] == "loss (lower is better)"


def test_the_same_task_as_higher_is_better_picks_the_opposite_member() -> None:
    lower = run(Loss)
    higher = run(Loss, metric=fp.Metric("loss", "max"))
    assert lower.best != higher.best


def test_evaluate_may_return_several_metrics_one_of_which_is_the_fitness() -> None:
    res = run(Several)
    assert res.metric.name == "accuracy"
    assert all(v is not None and 0 < v < 1 for v in res.final_metrics().values())
    with pytest.raises(RunFailed, match="but not 'top5'"):
        run(Several, metric="top5")


@pytest.mark.parametrize(("name", "mode"), [("", "max"), ("loss", "lower"), (3, "min")])
def test_an_invalid_metric_is_refused_naming_the_value(name: Any, mode: str) -> None:
    with pytest.raises(ConfigError, match="metric"):
        fp.Metric(name, mode)


def test_the_other_named_metrics_are_recorded_and_read_back_per_member() -> None:
    res = run(Several)
    rows = res.store.metrics()
    assert rows and all(set(r.extra) == {"loss"} for r in rows)
    for r in rows:  # each point keeps the loss measured together with its accuracy
        assert r.value is not None and r.extra["loss"] == pytest.approx(1.0 - r.value)
    assert res.metric_names() == ["accuracy", "loss"]
    best = res.best
    assert best is not None
    curves = res.metric_curves(best)
    assert list(curves) == ["accuracy", "loss"]
    assert curves["accuracy"] == res.current_curve(best)  # along the lineage, like the fitness
    assert [s for s, _ in curves["loss"]] == [s for s, _ in curves["accuracy"]]
    own = res.metric_curves(best, lineage=False)
    assert own["accuracy"] == res.curves()[best]  # only what the member recorded itself
    with pytest.raises(KeyError, match="99"):
        res.metric_curves(99)


class Flaky(Loss):
    """One other metric is sometimes NaN and sometimes missing."""

    METRIC = fp.Metric("loss", mode="min")

    calls = 0

    def evaluate(self) -> Any:
        Flaky.calls += 1
        loss = super().evaluate()
        if Flaky.calls % 3 == 0:
            return {"loss": loss}
        return {"loss": loss, "grad_norm": float("nan") if Flaky.calls % 3 == 1 else loss}


def test_invalid_or_missing_other_metrics_are_kept_as_such() -> None:
    res = run(Flaky)
    values = [r.extra.get("grad_norm", "missing") for r in res.store.metrics()]
    assert None in values and "missing" in values  # NaN: None; not reported: absent
    assert all(v in (None, "missing") or isinstance(v, float) for v in values)
    assert res.summary()["metric"] == "loss (lower is better)"
    # The report's columns stay aligned with the steps: a missing or invalid value is None.
    from firepbt.dashboard.data import run_payload

    views = run_payload(res.store)
    assert views["extra_metrics"] == ["grad_norm"]
    shown = [v for cols in views["points"].values() for v in cols[2]]
    assert all(len(c) == len(cols[0]) for cols in views["points"].values() for c in cols)
    assert shown.count(None) == values.count(None) + values.count("missing")


TASK = '''
from pathlib import Path

import firepbt as fp

SPACE = fp.Space(lr=fp.LogUniform(1e-3, 1.0))


class Task(fp.Trainable):
    def setup(self, hparams, seed):
        self.hparams, self.progress = dict(hparams), 0.0

    def train(self, steps):
        self.progress += steps * self.hparams["lr"]

    def evaluate(self):
        loss = 1.0 / (1.0 + self.progress)
        return {"accuracy": 1.0 - loss, "loss": loss}

    def save(self, path):
        (Path(path) / "p").write_text(repr(self.progress))

    def load(self, path):
        self.progress = float((Path(path) / "p").read_text())
'''


def test_the_cli_records_every_metric_and_the_report_offers_each_curve(tmp_path: Path) -> None:
    """As a user runs it: process workers, ``--metric accuracy``, then ``firepbt report``."""
    (tmp_path / "task.py").write_text(TASK)

    def firepbt(*argv: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "firepbt.cli", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        return proc

    firepbt("run", "task.py:Task", "--metric", "accuracy", "--population", "4", "--steps", "40",
            "--interval", "10", "--eval-every", "5", "--store", "st.db", "--no-report", "-q")
    with open_store(str(tmp_path / "st.db"), create=False) as store:
        rows = store.metrics()
        assert {r.worker for r in rows} == {w.id for w in store.workers()}
        for r in rows:
            assert r.value is not None and r.extra["loss"] == pytest.approx(1.0 - r.value)
        res = fp.Result(store)
        assert res.metric_names() == ["accuracy", "loss"]
        best = res.best
        assert best is not None and len(res.metric_curves(best)["loss"]) == 40 // 5
    firepbt("report", "st.db", "-o", "report.html")
    page = (tmp_path / "report.html").read_text()
    data = json.loads(re.search(r"<script id='fp-data' type='application/json'>(.*?)</script>",
                                page, re.S).group(1))  # type: ignore[union-attr]
    run_view = data["runs"][0]
    assert run_view["metric"]["name"] == "accuracy" and run_view["extra_metrics"] == ["loss"]
    # Each segment's points: steps, accuracy, loss (the curves panel's metric picker).
    for steps, accuracy, loss in run_view["points"].values():
        assert len(steps) == len(accuracy) == len(loss) > 0
        assert loss == pytest.approx([1.0 - a for a in accuracy])
