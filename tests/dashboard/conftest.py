"""Fixtures for the dashboard tests: real SQLite stores from short real runs, a headless
Chromium (Debian's, driven by Playwright), and the folder screenshots go to."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from firepbt.algorithms import PBT
from firepbt.api import run
from firepbt.tasks.toys import QuadraticToy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a headless Chromium (runs by default)")


@pytest.fixture(scope="session")
def pbt_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PBT on the noisy quadratic model (log-uniform learning rate): 8 members, 600 steps."""
    path = str(tmp_path_factory.mktemp("pbt") / "nqm-pbt.db")
    res = run("nqm", algorithm=PBT(population=8), steps=600, store=path, executor="inprocess",
              mode="sync", seed=0)
    # Closed now, not whenever the result is collected: closing the writer folds its WAL into
    # the file, which would otherwise change the file under the read-only checks.
    res.store.close()
    return path


@pytest.fixture(scope="session")
def fire_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """FIRE PBT on the deceptive toy: two sub-populations, evaluators that succeed."""
    from firepbt.algorithms.fire import FirePBT
    from firepbt.tasks.toys import DeceptiveToy

    path = str(tmp_path_factory.mktemp("fire") / "deceptive-fire.db")
    res = run(DeceptiveToy, algorithm=FirePBT(population=8, subpop_sizes=(3, 3),
                                              smoother="ema"),
              steps=400, store=path, executor="inprocess", mode="sync", seed=1)
    res.store.close()
    return path


class Flaky(QuadraticToy):
    """Fails its fifth training call; with max_failures=1 that member is replaced."""

    calls: ClassVar[int] = 0

    def train(self, steps: int) -> None:
        Flaky.calls += 1
        if Flaky.calls == 5:
            raise RuntimeError(f"flaky training step (call {Flaky.calls})")
        super().train(steps)


@pytest.fixture(scope="session")
def flaky_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PBT run in which one member's segment fails and the member is replaced."""
    path = str(tmp_path_factory.mktemp("flaky") / "flaky.db")
    Flaky.calls = 0
    res = run(Flaky, algorithm=PBT(population=4), steps=40, interval=4, store=path,
              executor="inprocess", mode="sync", seed=0, max_failures=1)
    res.store.close()
    return path


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $FIREPBT_SCREENSHOTS (e.g. docs/img/dashboard) or a temp folder."""
    folder = os.environ.get("FIREPBT_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (scripts/setup.sh does: "
                    "apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[browser]'")
    with sync_api.sync_playwright() as p:
        # Debian's Chromium, never Playwright's download (offline here and in CI).
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class TwoMetrics(QuadraticToy):
    """evaluate() returns the toy's objective as "score" (the fitness) and a "distance"."""

    def evaluate(self) -> Any:  # type: ignore[override]
        score = super().evaluate()
        return {"score": score, "distance": 1.2 - score}


@pytest.fixture(scope="session")
def metrics_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PBT run whose task reports a second named metric next to the fitness."""
    path = str(tmp_path_factory.mktemp("metrics") / "two-metrics.db")
    res = run(TwoMetrics, algorithm=PBT(population=4), steps=40, interval=4, metric="score",
              store=path, executor="inprocess", mode="sync", seed=0)
    res.store.close()
    return path
