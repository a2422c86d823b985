"""``firepbt compare`` on a user's own task, and the schedule language of its baselines."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import firepbt as fp
from firepbt.compare import _at
from firepbt.compare import compare as compare_
from firepbt.errors import ConfigError
from firepbt.schedules import parse_schedule

FIREPBT = [sys.executable, "-m", "firepbt.cli"]

TASK = '''
from pathlib import Path

import firepbt as fp

SPACE = fp.Space(lr=fp.LogUniform(1e-3, 1.0), momentum=0.9)
DEFAULTS = {"steps": 60, "interval": 10}
METRIC = fp.Metric("loss", mode="min")


class Task(fp.Trainable):
    def setup(self, hparams, seed):
        self.hparams, self.progress = dict(hparams), 0.0

    def train(self, steps):
        self.progress += steps * self.hparams["lr"] * (1.0 - self.hparams["lr"])

    def evaluate(self):
        return {"loss": 1.0 / (1.0 + self.progress), "progress": self.progress}

    def save(self, path):
        (Path(path) / "p").write_text(repr(self.progress))

    def load(self, path):
        self.progress = float((Path(path) / "p").read_text())

    def held_out(self):
        return 2.0 * self.progress
'''

ARGS = ["--workers", "6", "--executor", "inprocess", "--baseline", "lr=cosine(0.5)",
        "--baseline", "lr=constant(0.3)"]


@pytest.fixture()
def task(tmp_path: Path) -> Path:
    (tmp_path / "task.py").write_text(TASK)
    return tmp_path


def compare(folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIREPBT, "compare", "task.py:Task", *argv], cwd=folder,
                          capture_output=True, text=True, timeout=300)


def test_compare_writes_a_page_and_json_with_every_method_and_baseline(task: Path) -> None:
    proc = compare(task, "--seeds", "3", *ARGS, "--out", "cmp")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((task / "cmp" / "compare.json").read_text())
    methods = summary["methods"]
    assert list(methods) == ["fire", "pbt", "random", "baseline:0", "baseline:1"]
    assert summary["metric"] == "loss (lower is better)"
    for m in methods.values():
        assert len(m["values"]) == 3 and all(0 < v < 1 for v in m["values"])
        assert m["mean"] == pytest.approx(sum(m["values"]) / 3)
        assert m["median_schedule"] and m["worker_steps_per_run"] > 0
        assert len(m["p_better_than"]) == len(methods) - 1
    assert sum(m["wins"] for m in methods.values()) == 3
    # Worker-steps as trained: random search's 6 members exactly 60 steps each; PBT's can
    # differ (a member that copies a donor behind it trains the gap again), so it is reported.
    assert methods["random"]["worker_steps_per_run"] == 6 * 60
    assert methods["baseline:0"]["worker_steps_per_run"] == 60
    page = (task / "cmp" / "compare.html").read_text()
    assert "FIRE PBT" in page and "lr=cosine(0.5)" in page and "data:image/png" in page
    assert "compare.html" in proc.stderr and "[15/15]" in proc.stderr


def test_an_interrupted_comparison_resumes_without_redoing_finished_runs(task: Path) -> None:
    argv = [*FIREPBT, "compare", "task.py:Task", "--seeds", "3", *ARGS, "--out", "cmp"]
    proc = subprocess.Popen(argv, cwd=task, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # bounded: the command ends by itself after 15 runs
        seen.append(line)
        if line.startswith("[4/"):
            proc.send_signal(signal.SIGINT)
            break
    assert proc.wait(timeout=60) != 0
    assert not (task / "cmp" / "compare.json").exists()
    again = compare(task, "--seeds", "3", *ARGS, "--out", "cmp")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("done before") >= 4
    summary = json.loads((task / "cmp" / "compare.json").read_text())
    assert all(len(m["values"]) == 3 for m in summary["methods"].values())
    other = compare(task, "--seeds", "3", *ARGS, "--steps", "80", "--out", "cmp")
    assert other.returncode == 2 and "steps: stored 60, given 80" in other.stderr


def test_the_schedule_language() -> None:
    space = fp.Space(lr=fp.LogUniform(1e-4, 1.0), wd=fp.Uniform(0.0, 0.1), momentum=0.9)
    s = parse_schedule("lr=cosine(1.0, 0.01); wd=linear(0.1, 0.0)", space)
    assert s.values(0.0) == {"lr": 1.0, "wd": 0.1, "momentum": 0.9}
    assert s.values(1.0)["lr"] == pytest.approx(0.01) and s.values(0.5)["wd"] == 0.05
    assert s.values(0.5)["lr"] == pytest.approx(0.505)
    step = parse_schedule("lr=step(1.0, 0.1, 0.5, 0.75); wd=constant(0.01)", space)
    assert [step.values(f)["lr"] for f in (0.0, 0.49, 0.5, 0.8)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01])
    assert math.isclose(step.values(0.3)["wd"], 0.01)
    plain = parse_schedule("lr=constant(1.0); wd=constant(0); momentum=0.95; opt=schedulefree",
                           fp.Space(lr=fp.LogUniform(1e-3, 1.0), wd=fp.Uniform(0, 0.1),
                                    momentum=0.9, opt="sgd"))
    assert plain.values(0.5) == {"lr": 1.0, "wd": 0.0, "momentum": 0.95, "opt": "schedulefree"}
    # A tuned baseline's placeholder, scaled for a baseline on another scale.
    assert _at("lr=constant({peak*10}); wd=linear({peak}, 0)", 0.25) == \
        "lr=constant(2.5); wd=linear(0.25, 0)"
    for bad, why in [("lr=cosine(1.0)", "gives no schedule for \\['wd'\\]"),
                     ("lr=cosine(1); wd=constant(0); x=constant(1)", "not a hyperparameter"),
                     ("lr=exp(1); wd=constant(0)", "unknown form 'exp'"),
                     ("lr=step(1, 0.1, 1.5); wd=constant(0)", "fraction in \\(0, 1\\)"),
                     ("lr; wd=constant(0)", "must be key=form"),
                     ("lr=0.1; wd=constant(0)", "expected constant"),  # tuned: a form
                     ("lr=cosine(1); wd=constant(0); momentum=cosine(x)", "must be numbers")]:
        with pytest.raises(ConfigError, match=why):
            parse_schedule(bad, space)


def run_compare(task: Path, **kw: object) -> dict:
    settings: dict = {"seeds": 2, "workers": 4, "executor": "inprocess", "mode": "sync",
                      "out": task / "cmp", "log": lambda line: None, **kw}
    return compare_(f"{task / 'task.py'}:Task", **settings)


def test_variants_are_named_rows_with_their_own_algorithm_executor_and_mode(task: Path) -> None:
    from firepbt.algorithms import PBT
    from firepbt.compare import Method

    latest = Method("pbt-latest", lambda w: PBT(population=w, rank_at="latest"),
                    "PBT, latest value", mode="async", processes=2)
    summary = run_compare(task, methods=["pbt", latest], jobs=2)
    assert [m["label"] for m in summary["methods"].values()] == ["PBT", "PBT, latest value"]
    plan = json.loads((task / "cmp" / "plan.json").read_text())
    assert plan["methods"][0] == "pbt"
    assert plan["methods"][1]["algorithm"]["rank_at"] == "latest"
    assert (plan["methods"][1]["mode"], plan["methods"][1]["processes"]) == ("async", 2)
    # Two runs at a time give what one at a time gives (in-process sync runs are exact).
    again = run_compare(task, methods=["pbt", latest], out=task / "one", jobs=1)
    assert again["methods"]["pbt"]["values"] == summary["methods"]["pbt"]["values"]
    for m in summary["methods"].values():
        assert len(m["exploits"]) == 2 and m["stop_reasons"] == {}
    with pytest.raises(ConfigError, match="method name 'PBT latest': must match"):
        Method("PBT latest", latest.algorithm)  # it names the store file
    for bad, why in [
        (["pbt", "pbt"], "each name must appear once"),
        (["pbt", "hyperband"], "method 'hyperband': must be one of fire, pbt, pb2, random"),
        ([Method("x", latest.algorithm, executor="threads")], "executor='threads': must be one"),
        ([Method("x", latest.algorithm, task="nqm")], "must have the comparison's search"),
    ]:
        with pytest.raises(ConfigError, match=why):
            run_compare(task, methods=bad, out=task / "bad")


def test_a_baseline_with_a_peak_is_tuned_on_its_own_seeds_first(task: Path) -> None:
    with pytest.raises(ConfigError, match="pass peaks="):
        run_compare(task, baselines=["lr=cosine({peak})"])
    summary = run_compare(task, methods=["random"], baselines=["lr=cosine({peak})"],
                          peaks=(0.05, 0.5), tuning_seeds=(100, 101), schedule_every=1,
                          test="held_out")
    tuned = summary["methods"]["baseline:0"]
    # progress grows with lr (1 - lr): 0.5 beats 0.05 by far, so the loss picks 0.5.
    assert tuned["peak"] == 0.5 and tuned["label"] == "baseline lr=cosine(0.5)"
    assert tuned["tuning"]["0.5"] < tuned["tuning"]["0.05"]
    assert tuned["tuning_worker_steps"] == 2 * 2 * 60
    assert sorted(p.name for p in (task / "cmp").glob("baseline-0-p*")) == [
        "baseline-0-p0.05-s100.json", "baseline-0-p0.05-s101.json",
        "baseline-0-p0.5-s100.json", "baseline-0-p0.5-s101.json"]
    # schedule_every=1: the cosine changes every step, so every step is its own piece.
    assert len(tuned["median_schedule"]) == 60
    # test=: each answer measured by the task's own held_out(), from its final weights.
    for m in summary["methods"].values():
        progress = [1.0 / v - 1.0 for v in m["values"]]
        assert m["test"]["values"] == pytest.approx([2.0 * p for p in progress])
    with pytest.raises(ConfigError, match="test='accuracy': task .* has no method"):
        run_compare(task, methods=["random"], test="accuracy", out=task / "bad")
