"""Tests for firepbt.report: the self-contained HTML report and the comparison page."""

from __future__ import annotations

import base64
import importlib.util
import math
import re
import time
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firepbt.algorithms import PBT, RandomSearch
from firepbt.api import run
from firepbt.errors import ConfigError, StoreError
from firepbt.report import (
    MAX_TABLE_ROWS,
    _changes_text,
    _finite_runs,
    _fitness_figure,
    _fmt,
    _RunData,
    _schedule_figure,
    _spans_decade,
    write_comparison,
    write_report,
)
from firepbt.result import Result
from firepbt.space import LogUniform, Space, Uniform
from firepbt.store import (
    COMPLETED,
    DONE,
    EVALUATOR,
    IDLE,
    MEMBER,
    CheckpointRecord,
    EventRecord,
    MemoryStore,
    MetricRow,
    SegmentRecord,
    Store,
    WorkerRecord,
    open_store,
)
from firepbt.tasks.toys import DeceptiveToy, QuadraticToy

ODD = "<lr&>"  # a hyperparameter name that must be escaped
ODD_ESCAPED = "&lt;lr&amp;&gt;"
IMG = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
HAS_FIRE = importlib.util.find_spec("firepbt.algorithms.fire") is not None


def quadratic_space() -> Space:
    # QuadraticToy reads only h0 and h1; the odd key rides along to test escaping.
    return Space(h0=Uniform(0.0, 1.0), h1=Uniform(0.0, 1.0), **{ODD: LogUniform(1e-4, 1.0)})


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG.findall(page)]


def lineage_rows(page: str) -> list[str]:
    """The body rows of the lineage table (the last table on a single-run page)."""
    table = page[page.rindex("<table>"):]
    return re.findall(r"<tr(?: class='best')?><td>.*?</tr>", table)


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page
    pngs = images(page)
    assert pngs and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


# --------------------------------------------------------------------------------------------
# Runs of the real engine (module-scoped: each costs a couple of seconds)


@pytest.fixture(scope="module")
def pbt_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pbt") / "x.db")
    run(QuadraticToy, quadratic_space(), PBT(population=4), steps=24, interval=4, eval_every=2,
        store=path, executor="inprocess", seed=1)
    return path


@pytest.fixture(scope="module")
def random_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("random") / "r.db")
    run(QuadraticToy, quadratic_space(), RandomSearch(population=3), steps=24, interval=4,
        eval_every=2, store=path, executor="inprocess", seed=2)
    return path


def test_report_of_a_pbt_run(pbt_db: str) -> None:
    out = write_report(pbt_db)
    assert out == Path(pbt_db).with_suffix(".html")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(images(page)) == 2  # fitness curves and schedules; no evaluator timeline
    with open_store(pbt_db, create=False) as st:
        res = Result(st)
        best, best_metric = res.best, res.best_metric
        assert best is not None
        exploits = len(res.events("exploit"))
        lineage = res.lineage()
    assert exploits > 0  # the run must exercise the lineage table
    assert f"<th>Best member (P1)</th><td>worker {best}</td>" in page
    assert f"<th>Best metric</th><td>{_fmt(best_metric)}</td>" in page
    assert f"<th>Exploits</th><td>{exploits}</td>" in page
    assert f"<tr class='best'><td>{best}</td><td>P1</td>" in page
    assert len(lineage_rows(page)) == len(lineage)
    assert ODD_ESCAPED in page and ODD not in page
    assert "Evaluators</h2>" not in page


def test_lineage_queries_match_result(pbt_db: str) -> None:
    with open_store(pbt_db, create=False) as st:
        res = Result(st)
        data = _RunData.load(st)
        assert data.best == res.best
        for w in data.members():
            assert data.schedule(w.id) == res.schedule(w.id)
            assert data.current_curve(w.id) == res.current_curve(w.id)


def test_a_store_passed_in_is_left_open(pbt_db: str, tmp_path: Path) -> None:
    st = open_store(pbt_db, create=False)
    try:
        out = write_report(st, tmp_path / "sub" / "r.html")
        assert out == tmp_path / "sub" / "r.html" and out.exists()
        assert st.experiment() is not None  # still usable
    finally:
        st.close()


def test_write_comparison(pbt_db: str, random_db: str, tmp_path: Path) -> None:
    out = write_comparison({"PBT <1>": pbt_db, "random & co": random_db}, tmp_path / "c.html",
                           title="Quadratic <toy>")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    # Two comparison plots, then each run's two plots.
    assert len(images(page)) == 2 + 2 + 2
    assert "<title>Quadratic &lt;toy&gt;</title>" in page
    assert "<a href='#run-0'>PBT &lt;1&gt;</a>" in page
    assert "<a href='#run-1'>random &amp; co</a>" in page
    assert "<section id='run-0'>" in page and "<section id='run-1'>" in page
    metrics = {}
    for label, db in (("PBT &lt;1&gt;", pbt_db), ("random &amp; co", random_db)):
        with open_store(db, create=False) as st:
            res = Result(st)
            metrics[label] = res.best_metric
            assert f"<td>{label}</td>" in page
            assert f"<td>worker {res.best}</td><td>{_fmt(res.best_metric)}</td>" in page
    winner = max(metrics, key=lambda k: metrics[k] or float("-inf"))
    assert f"<tr class='best'><td>{winner}</td>" in page


@pytest.mark.skipif(not HAS_FIRE, reason="firepbt.algorithms.fire is not written yet")
def test_report_of_a_fire_run(tmp_path: Path) -> None:
    from firepbt.algorithms.fire import FirePBT

    db = str(tmp_path / "f.db")
    # Settings under which the deceptive toy makes evaluators succeed (see test_fire_run).
    run(DeceptiveToy, algorithm=FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema"),
        steps=400, store=db, executor="inprocess", mode="sync", seed=1)
    page = write_report(db).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(images(page)) == 3  # curves, schedules, evaluator timeline
    assert "Evaluators</h2>" in page
    with open_store(db, create=False) as st:
        res = Result(st)
        data = _RunData.load(st)
        for w in data.members():
            assert data.schedule(w.id) == res.schedule(w.id)
            assert data.current_curve(w.id) == res.current_curve(w.id)
        assert len(data.subpops()) == 2
        assert len(_fitness_figure(data).axes) == 2  # one panel per sub-population
        started = len(st.events(kind="start_evaluator"))
        transfers = st.events(kind="transfer")
    assert transfers  # the run must exercise the transfer table
    assert f"<td>{started} started;" in page
    assert f"<th>Transfers</th><td>{len(transfers)}</td>" in page
    for e in transfers:
        assert (f"<tr><td>{e.step}</td><td>worker {e.donor}</td>"
                f"<td>worker {e.info['evaluator']}</td><td>worker {e.worker}</td>") in page


# --------------------------------------------------------------------------------------------
# A hand-built FIRE store: exact checks of the evaluator and lineage views


class Builder:
    """Writes completed segments and events into a store the way the controller does."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = 100.0

    def segment(self, worker: int, start: int, hp: Mapping[str, Any],
                values: Sequence[float | None], parent: int | None = None) -> int:
        cid = self.store.next_id("checkpoint")
        sid = self.store.next_id("segment")
        end = start + len(values)
        self.store.add_checkpoint(
            CheckpointRecord(cid, worker, end, f"/nowhere/{cid}", "0", dict(hp), parent,
                             self.clock))
        self.store.put_segment(SegmentRecord(sid, worker, 0, start, end, parent, dict(hp),
                                             status=COMPLETED, to_checkpoint=cid))
        self.store.add_metrics([MetricRow(worker, sid, start + i + 1, v, self.clock)
                                for i, v in enumerate(values)])
        return cid

    def event(self, kind: str, worker: int, step: int, **kw: Any) -> None:
        self.clock += 1.0
        self.store.add_event(EventRecord(0, kind, worker, step, self.clock, **kw))


def hp(lr: float, h: float) -> dict[str, float]:
    return {ODD: lr, "h": h}


@pytest.fixture
def fire_store() -> MemoryStore:
    """P1 = {0, 1}, P2 = {2, 3}, evaluator 4. Evaluator 4 takes worker 2's weights with child 0's
    hyperparameters and succeeds (transfer to 0); worker 1 exploits worker 0; a second
    evaluation (parent 3, child 1) stops on its p-value. Worker 0 wins."""
    st = MemoryStore()
    space = Space(h=Uniform(0.0, 1.0), **{ODD: LogUniform(1e-4, 1.0)})
    st.create_experiment({
        "task": "tests:<Fake&Task>", "space": space.to_json(),
        "algorithm": {"name": "fire", "population": 5},
        "config": {"steps": 12, "interval": 4, "eval_every": 1, "seed": 3, "mode": "async"},
    })
    b = Builder(st)
    h0, h1, h1b = hp(0.001, 0.5), hp(0.1, 0.2), hp(0.0012, 0.5)
    h2, h3 = hp(0.01, 0.9), hp(0.5, 0.1)
    c0 = b.segment(0, 0, h0, [0.1, 0.2, 0.3, 0.4])
    b.segment(1, 0, h1, [0.0, 0.1, 0.1, 0.2])
    c2 = b.segment(2, 0, h2, [0.2, 0.4, 0.6, 0.8])
    c3 = b.segment(3, 0, h3, [0.0, 0.0, None, 0.1])
    b.event("start_evaluator", 4, 4, donor=2, donor_checkpoint=c2, new_hparams=h0,
            info={"child": 0})
    b.event("exploit", 1, 4, donor=0, donor_checkpoint=c0, old_hparams=h1, new_hparams=h1b,
            info={"ops": {"h": "resample"}, "fitness": 0.2, "donor_fitness": 0.4})
    c6 = b.segment(1, 4, h1b, [0.45, 0.5, 0.55, 0.6], parent=c0)
    c4 = b.segment(4, 4, h0, [0.9, 1.0, 1.1, 1.2], parent=c2)
    c8 = b.segment(2, 4, h2, [0.8, 0.85, 0.9, 0.95], parent=c2)
    c10 = b.segment(3, 4, h3, [0.2, 0.3, 0.3, 0.4], parent=c3)
    b.event("transfer", 0, 8, donor=2, donor_checkpoint=c4, old_hparams=h0, new_hparams=h0,
            info={"evaluator": 4, "p_value": 0.0039, "delta": 0.25})
    b.event("stop_evaluator", 4, 8, info={"reason": "success", "p_value": 0.0039,
                                          "delta": 0.25, "parent": 2, "child": 0})
    b.event("start_evaluator", 4, 8, donor=3, donor_checkpoint=c10, new_hparams=h1b,
            info={"child": 1})
    c5 = b.segment(0, 8, h0, [1.3, 1.4, 1.5, 1.6], parent=c4)
    c7 = b.segment(1, 8, h1b, [0.6, 0.6, 0.7, 0.7], parent=c6)
    c9 = b.segment(2, 8, h2, [1.0, 1.0, 1.1, 1.1], parent=c8)
    c11 = b.segment(3, 8, h3, [0.4, 0.5, 0.5, 0.6], parent=c10)
    b.segment(4, 8, h1b, [0.4, 0.4, 0.5, 0.5], parent=c10)
    b.event("stop_evaluator", 4, 12, info={"reason": "p_value", "p_value": 0.6,
                                           "delta": -0.1, "parent": 3, "child": 1})
    for wid, sub, hps, ck, info in ((0, 1, h0, c5, {}), (1, 1, h1b, c7, {}),
                                    (2, 2, h2, c9, {"fire_fitness": 0.35}),
                                    (3, 2, h3, c11, {"fire_fitness": None})):
        st.put_worker(WorkerRecord(wid, MEMBER, sub, hps, 12, ck, status=DONE, info=info))
    st.put_worker(WorkerRecord(4, EVALUATOR, 2, h1b, 12, None, status=IDLE))
    st.put_state("status", "finished")
    return st


def test_fire_report_views(fire_store: MemoryStore, tmp_path: Path) -> None:
    page = write_report(fire_store, tmp_path / "f.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(images(page)) == 3
    assert "<title>firepbt report: tests:&lt;Fake&amp;Task&gt;</title>" in page
    assert ODD_ESCAPED in page and ODD not in page
    assert "<th>Best member (P1)</th><td>worker 0</td>" in page
    assert "<th>Best metric</th><td>1.6</td>" in page
    assert "<th>Population</th><td>4 members (P1: 2, P2: 2), 1 evaluators</td>" in page
    assert "<th>Evaluations</th><td>2 started; stopped: p_value 1, success 1</td>" in page
    # Completed segments of 4 steps: 11 of members (worker 0's middle one was the
    # evaluator's), 2 of the evaluator.
    assert "members 44 (85%), evaluators 8 (15%)" in page
    # The transfers table: step, parent, evaluator, child, p-value, delta.
    assert ("<tr><td>8</td><td>worker 2</td><td>worker 4</td><td>worker 0</td>"
            "<td>0.0039</td><td>0.25</td></tr>") in page
    # FIRE fitness column: a value and a missing one.
    assert "<th>FIRE fitness</th>" in page
    assert "<td>P2</td><td>done</td><td>12</td><td>1.1</td><td>0.35</td>" in page
    # Lineage: the transfer handed weights down the winner's lineage, the exploit did not.
    rows = lineage_rows(page)
    assert len(rows) == 2
    assert rows[0].startswith("<tr><td>4</td><td>exploit</td><td>worker 1</td>"
                              "<td>worker 0 (checkpoint 1)</td>")
    assert "h: 0.2 → 0.5" in rows[0] and f"{ODD_ESCAPED}: 0.1 → 0.0012" in rows[0]
    assert rows[1].startswith("<tr class='best'><td>8</td><td>transfer</td><td>worker 0</td>")
    assert "via evaluator 4 (p=0.0039, Δ=0.25)" in rows[1]


def test_fire_store_lineage_and_figures(fire_store: MemoryStore) -> None:
    data = _RunData.load(fire_store)
    res = Result(fire_store)
    for w in data.members():
        assert data.schedule(w.id) == res.schedule(w.id)
        assert data.current_curve(w.id) == res.current_curve(w.id)
    # The winner's curve: its parent's first interval, the evaluator's, then its own.
    assert [v for _, v in data.current_curve(0)] == [
        0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    assert len(_fitness_figure(data).axes) == 2
    fig = _schedule_figure(data, ["h", ODD])
    # LogUniform in the space -> log axis, even though the best lineage's values are close.
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["linear", "log"]


def test_memory_store_needs_an_out_path(fire_store: MemoryStore) -> None:
    with pytest.raises(ConfigError, match="memory://.*pass out="):
        write_report(fire_store)


def test_a_run_without_points_yet(tmp_path: Path) -> None:
    st = MemoryStore()
    st.create_experiment({"task": "t", "space": Space(h=Uniform(0.0, 1.0)).to_json(),
                          "algorithm": {"name": "fire"}, "config": {}})
    st.put_worker(WorkerRecord(0, MEMBER, 1, {"h": 0.5}, 0, None))
    st.put_worker(WorkerRecord(1, MEMBER, 2, {"h": 0.5}, 0, None))
    st.put_worker(WorkerRecord(2, EVALUATOR, 1, {}, 0, None, status=IDLE))
    page = write_report(st, tmp_path / "e.html").read_text(encoding="utf-8")
    assert len(images(page)) == 3
    assert "<th>Best member (P1)</th><td>-</td>" in page
    assert "<th>Status</th><td>unknown</td>" in page
    page = write_comparison({"a": st}, tmp_path / "c.html").read_text(encoding="utf-8")
    assert "<td>a</td><td>fire</td><td>unknown</td><td>-</td><td>-</td>" in page


def test_dollar_in_names_is_not_mathtext(tmp_path: Path) -> None:
    key = r"$\nosuchcommand$"  # matplotlib would fail to parse this as mathtext
    st = MemoryStore()
    st.create_experiment({"task": "t", "space": Space(**{key: Uniform(0.0, 1.0)}).to_json(),
                          "algorithm": {"name": "pbt"}, "config": {"steps": 2}})
    c = Builder(st).segment(0, 0, {key: 0.5}, [1.0, 2.0])
    st.put_worker(WorkerRecord(0, MEMBER, 1, {key: 0.5}, 2, c, status=DONE))
    page = write_report(st, tmp_path / "d.html").read_text(encoding="utf-8")
    assert len(images(page)) == 2
    page = write_comparison({"$\\bad$": st}, tmp_path / "c.html").read_text(encoding="utf-8")
    assert len(images(page)) == 2 + 2


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_store_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        write_report(str(tmp_path / "nope.db"))
    assert list(tmp_path.iterdir()) == []


def test_store_without_experiment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no experiment"):
        write_report(MemoryStore(), tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize(
    ("stores", "match"),
    [({}, "at least one run"), ({"": MemoryStore()}, "non-empty string")],
)
def test_comparison_validation(stores: dict[str, Store], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        write_comparison(stores, tmp_path / "c.html")


# --------------------------------------------------------------------------------------------
# Big runs stay fast; tables are capped


def test_big_run_is_capped_and_fast(tmp_path: Path) -> None:
    st = MemoryStore()
    st.create_experiment({"task": "big", "space": Space(h=Uniform(0.0, 1.0)).to_json(),
                          "algorithm": {"name": "pbt", "population": 10},
                          "config": {"steps": 300, "interval": 1}})
    b = Builder(st)
    members, rounds = 10, 300
    last: dict[int, int | None] = dict.fromkeys(range(members))
    for t in range(rounds):
        prev = dict(last)
        for w in range(members):
            parent = prev[w]
            if w > 0 and t > 0:  # everyone but member 0 exploits member 0 every round
                parent = prev[0]
                b.event("exploit", w, t, donor=0, donor_checkpoint=prev[0],
                        old_hparams={"h": 0.1}, new_hparams={"h": 0.2 + w / 100})
            last[w] = b.segment(w, t, {"h": 0.1 if w == 0 else 0.2 + w / 100},
                                [t - (0.5 if w else 0.0)], parent=parent)
    for w in range(members):
        st.put_worker(WorkerRecord(w, MEMBER, 1, {"h": 0.1}, rounds, last[w], status=DONE))
    n_events = (members - 1) * (rounds - 1)
    started = time.perf_counter()
    page = write_report(st, tmp_path / "big.html").read_text(encoding="utf-8")
    elapsed = time.perf_counter() - started
    assert f"Showing {MAX_TABLE_ROWS} of {n_events} events" in page
    assert len(lineage_rows(page)) == MAX_TABLE_ROWS
    # The most recent events are the ones kept.
    assert lineage_rows(page)[-1].startswith(f"<tr><td>{rounds - 1}</td><td>exploit</td>")
    assert elapsed < 30, f"report of {n_events} events took {elapsed:.1f}s"


# --------------------------------------------------------------------------------------------
# Helpers


POINTS = st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.floats())))


@given(POINTS)
def test_finite_runs_keeps_exactly_the_finite_points(points: list[tuple[int, float | None]]
                                                     ) -> None:
    runs = _finite_runs(points)
    assert [p for r in runs for p in r] == [(float(s), v) for s, v in points if _valid(v)]
    # One run per maximal stretch of valid points: a gap is never bridged by a line.
    stretches = [list(g) for ok, g in groupby(points, key=lambda p: _valid(p[1])) if ok]
    assert [len(r) for r in runs] == [len(g) for g in stretches]


def _valid(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def test_spans_decade() -> None:
    assert _spans_decade([1e-3, 0.5])
    assert not _spans_decade([0.1, 1.0])  # exactly one decade is not more than one
    assert not _spans_decade([-1.0, 100.0])  # a log axis cannot show <= 0
    assert not _spans_decade([])


def test_changes_text_names_changed_nested_keys() -> None:
    old = {"opt": {"lr": 0.1, "mom": 0.9}, "bs": 32}
    new = {"opt": {"lr": 0.12, "mom": 0.9}, "bs": 64}
    assert _changes_text(old, new) == "opt.lr: 0.1 → 0.12; bs: 32 → 64"
    assert _changes_text(new, new) == "unchanged"
    assert _changes_text(None, {"a": 1}) == "a=1"
