"""Named metrics, lower-is-better metrics and dict-valued evaluate() (issue 12, item 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import firepbt as fp
from firepbt.errors import ConfigError, RunFailed

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
