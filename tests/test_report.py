"""Tests for firepbt.report: the self-contained interactive report and the comparison page.

The page's views are drawn in the browser from the run's data embedded in the page; these tests
check that data (what every view shows) and the page's self-containment. tests/dashboard/
opens the pages in a real browser.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from firepbt.algorithms import PBT, RandomSearch
from firepbt.api import run
from firepbt.dashboard.data import (
    MAX_EVENT_ROWS,
    MAX_POINTS,
    changes_text,
    fmt,
    overview,
    spans_decade,
)
from firepbt.dashboard.page import embed_json
from firepbt.errors import ConfigError, StoreError
from firepbt.report import _RunData, write_comparison, write_report
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
from firepbt.trainable import Metric

ODD = "<lr&>"  # a hyperparameter name that must stay text
HAS_FIRE = importlib.util.find_spec("firepbt.algorithms.fire") is not None
DATA = re.compile(r"<script id='fp-data' type='application/json'>(.*?)</script>", re.S)


def quadratic_space() -> Space:
    # QuadraticToy reads only h0 and h1; the odd key rides along to test escaping.
    return Space(h0=Uniform(0.0, 1.0), h1=Uniform(0.0, 1.0), **{ODD: LogUniform(1e-4, 1.0)})


def runs_of(page: str) -> list[dict[str, Any]]:
    """The run payloads embedded in a page (what its views draw)."""
    m = DATA.search(page)
    assert m is not None, "no embedded data"
    runs: list[dict[str, Any]] = json.loads(m.group(1))["runs"]
    return runs


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    # Nothing is loaded from anywhere: no src/href to a file or a server.
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=['\"](?!data:)", page)
    assert "plotly.js (basic - minified)" in page and "FP.offline(" in page
    # The only "</script" in the page close our own script blocks.
    assert page.count("</script>") == page.count("<script")


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
    [data] = runs_of(page)
    with open_store(pbt_db, create=False) as st:
        res = Result(st)
        best, best_metric = res.best, res.best_metric
        assert best is not None
        exploits = len(res.events("exploit"))
        lineage = res.lineage()
        finals = res.final_metrics(subpop=None)
        segments = st.segments()
    assert exploits > 0  # the run must exercise the lineage views
    assert (data["best"], data["best_metric"]) == (best, best_metric)
    assert data["counts"]["exploit"] == exploits
    assert data["metric"] == {"name": "fitness", "mode": "max", "direction": "higher is better"}
    assert data["status"] == "finished" and not data["is_fire"]
    assert data["progress"]["done"] == data["progress"]["total"] == 4 * 24
    assert [r["kind"] for r in data["lineage"]] == [e.kind for e in lineage]
    assert {int(k): v for k, v in data["final"].items()} == finals
    # Every segment with its points and hyperparameters: what the curve hover reads.
    assert [s[0] for s in data["segments"]] == [s.id for s in segments]
    for s in data["segments"]:
        seg = next(x for x in segments if x.id == s[0])
        assert data["hparams"][s[4]] == dict(seg.hparams)
    # The log axis comes from the space: LogUniform -> log, Uniform -> linear.
    assert {h["key"]: h["log"] for h in data["hp_keys"]} == {"h0": False, "h1": False, ODD: True}
    # The odd key is in the data, escaped so it cannot end the script block.
    assert "\\u003clr&>" in page and ODD not in page
    assert ["space.h0", "uniform(low=0, high=1)"] in data["settings"]


def test_lineage_queries_match_result(pbt_db: str) -> None:
    with open_store(pbt_db, create=False) as st:
        res = Result(st)
        data = _RunData.load(st)
        assert data.best == res.best
        for w in data.members():
            assert data.schedule(w.id) == res.schedule(w.id)
            assert data.current_curve(w.id) == res.current_curve(w.id)


def test_graph_edges_follow_the_checkpoints(pbt_db: str) -> None:
    [data] = runs_of(write_report(pbt_db).read_text(encoding="utf-8"))
    with open_store(pbt_db, create=False) as st:
        ckpts = {c.id: c for c in st.checkpoints(include_deleted=True)}
        exploits = {(e.worker, e.donor_checkpoint) for e in st.events("exploit")}
    nodes = data["graph"]["nodes"]
    assert nodes and len(nodes) == sum(1 for s in data["segments"] if s[7] == COMPLETED)
    handoffs = 0
    for n in nodes:
        c = ckpts[n["ckpt"]]
        assert (n["worker"], n["step"], n["parent"]) == (c.worker, c.step, c.parent)
        if n["edge"] is not None:  # weights came from another worker: an exploit here
            handoffs += 1
            assert n["edge"] == "exploit" and (n["worker"], n["parent"]) in exploits
    assert handoffs > 0
    assert data["best_lineage"][-1] == data["workers"][data["best"]]["checkpoint"]


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
    assert "<title>Quadratic &lt;toy&gt;</title>" in page
    runs = runs_of(page)
    assert [r["label"] for r in runs] == ["PBT <1>", "random & co"]
    assert json.loads(DATA.search(page).group(1))["tab"] == 2  # opens on the comparison
    for r, db in zip(runs, (pbt_db, random_db), strict=True):
        with open_store(db, create=False) as st:
            res = Result(st)
            assert (r["best"], r["best_metric"]) == (res.best, res.best_metric)
            assert r["best_curve"][1][-1] == res.best_metric
    assert runs[1]["algorithm"] == "random" and "exploit" not in runs[1]["counts"]


def test_a_min_metric_is_named_and_ranked_lowest_first(tmp_path: Path) -> None:
    db = str(tmp_path / "loss.db")
    # PBT told that lower is better on the quadratic toy: the "best" member is the lowest.
    run(QuadraticToy, quadratic_space(), PBT(population=4), steps=16, interval=4, store=db,
        executor="inprocess", seed=0, metric=Metric("loss", "min")).store.close()
    [data] = runs_of(write_report(db).read_text(encoding="utf-8"))
    assert data["metric"] == {"name": "loss", "mode": "min", "direction": "lower is better"}
    with open_store(db, create=False) as st:
        res = Result(st)
        finals = res.final_metrics()
        ov = overview(st)
        best, best_metric = res.best, res.best_metric
    assert best is not None and finals[best] == min(v for v in finals.values() if v is not None)
    assert (data["best"], data["best_metric"]) == (best, best_metric)
    assert (ov["best"], ov["best_metric"]) == (best, best_metric)


class Flaky(QuadraticToy):
    """Fails its third training call; with max_failures=1 that member is then replaced."""

    calls: ClassVar[int] = 0

    def train(self, steps: int) -> None:
        Flaky.calls += 1
        if Flaky.calls == 3:
            raise RuntimeError(f"flaky training step (call {Flaky.calls})")
        super().train(steps)


def test_failures_are_shown_with_their_error(tmp_path: Path) -> None:
    db = str(tmp_path / "flaky.db")
    Flaky.calls = 0
    run(Flaky, algorithm=PBT(population=3), steps=16, interval=4, store=db,
        executor="inprocess", mode="sync", seed=0, max_failures=1)
    [data] = runs_of(write_report(db).read_text(encoding="utf-8"))
    with open_store(db, create=False) as st:
        failures = st.events("failure")
    assert len(failures) == 1
    rows = [r for r in data["failures"] if r["kind"] == "failure"]
    assert [(r["worker"], r["attempt"]) for r in rows] == [(e.worker, e.info["attempt"])
                                                           for e in failures]
    for r in rows:
        assert "RuntimeError: flaky training step" in r["error"]
        assert r["exception"].startswith("RuntimeError") and r["segment"] is not None
    # After its last attempt the member was replaced from a donor (or given up).
    assert {r["kind"] for r in data["failures"]} & {"replace", "failed"}
    assert data["counts"]["failure"] == 1


@pytest.mark.skipif(not HAS_FIRE, reason="firepbt.algorithms.fire is not written yet")
def test_report_of_a_fire_run(tmp_path: Path) -> None:
    from firepbt.algorithms.fire import FirePBT

    db = str(tmp_path / "f.db")
    # Settings under which the deceptive toy makes evaluators succeed (see test_fire_run).
    run(DeceptiveToy, algorithm=FirePBT(population=8, subpop_sizes=(3, 3), smoother="ema"),
        steps=400, store=db, executor="inprocess", mode="sync", seed=1)
    page = write_report(db).read_text(encoding="utf-8")
    assert_self_contained(page)
    [data] = runs_of(page)
    assert data["is_fire"] and data["subpops"] == [1, 2]
    with open_store(db, create=False) as st:
        res = Result(st)
        loaded = _RunData.load(st)
        for w in loaded.members():
            assert loaded.schedule(w.id) == res.schedule(w.id)
            assert loaded.current_curve(w.id) == res.current_curve(w.id)
        started = len(st.events(kind="start_evaluator"))
        transfers = st.events(kind="transfer")
    assert transfers  # the run must exercise the transfer view
    assert len(data["evaluations"]["spans"]) == started
    assert [(t["step"], t["parent"], t["evaluator"], t["child"], t["p_value"])
            for t in data["transfers"]] == [
        (e.step, e.donor, e.info["evaluator"], e.worker, e.info["p_value"]) for e in transfers]
    assert sum(1 for n in data["graph"]["nodes"] if n["edge"] == "transfer") >= 1


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
        "metric": {"name": "validation accuracy", "mode": "max"},
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
    [data] = runs_of(page)
    assert "<title>firepbt report: tests:&lt;Fake&amp;Task&gt;</title>" in page
    assert data["task"] == "tests:<Fake&Task>"
    assert data["metric"] == {"name": "validation accuracy", "mode": "max",
                              "direction": "higher is better"}
    assert (data["best"], data["best_metric"]) == (0, 1.6)
    assert data["is_fire"] and data["subpops"] == [1, 2]
    assert ["population", "4 members (P1: 2, P2: 2), 1 evaluators"] in data["settings"]
    assert data["reasons"] == {"success": 1, "p_value": 1}
    # Completed segments of 4 steps: 11 of members (worker 0's middle one was the
    # evaluator's), 2 of the evaluator.
    assert data["compute"] == {MEMBER: 44, EVALUATOR: 8}
    assert data["transfers"] == [{"step": 8, "parent": 2, "evaluator": 4, "child": 0,
                                  "checkpoint": 6, "p_value": 0.0039, "delta": 0.25}]
    spans = data["evaluations"]["spans"]
    assert [(s["evaluator"], s["reason"], s["parent"], s["child"]) for s in spans] == [
        (4, "success", 2, 0), (4, "p_value", 3, 1)]
    assert data["evaluations"]["axis"] == "wall time since start (s)"
    fire = {w["id"]: w["fire"] for w in data["workers"]}
    assert fire == {0: None, 1: None, 2: 0.35, 3: None, 4: None}
    # Lineage: the transfer handed weights down the winner's lineage, the exploit did not.
    rows = data["lineage"]
    assert [(r["step"], r["kind"], r["worker"], r["donor"], r["donor_checkpoint"], r["best"])
            for r in rows] == [(4, "exploit", 1, 0, 1, False), (8, "transfer", 0, 2, 6, True)]
    assert rows[0]["changes"] == f"{ODD}: 0.1 → 0.0012; h: 0.2 → 0.5"
    # The graph: worker 0's last node came through the evaluator's checkpoint (a transfer),
    # the evaluator's first from worker 2's (an evaluator start).
    nodes = {n["ckpt"]: n for n in data["graph"]["nodes"]}
    # (Checkpoint ids follow creation order: c2 = 3, c6 = 5, c4 = 6, c5 = 9.)
    assert (nodes[9]["parent"], nodes[9]["parent_worker"], nodes[9]["edge"]) == (6, 4, "transfer")
    assert (nodes[6]["parent_worker"], nodes[6]["edge"]) == (2, "start_evaluator")
    assert (nodes[5]["parent_worker"], nodes[5]["edge"]) == (0, "exploit")
    assert nodes[9]["metric"] == 1.6 and nodes[9]["hparams"] == hp(0.001, 0.5)
    assert data["best_lineage"] == [3, 6, 9]
    # The best member's curve: its parent's first interval, the evaluator's, then its own.
    assert data["best_curve"][1] == [0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]


def test_fire_store_lineage_matches_result(fire_store: MemoryStore) -> None:
    data = _RunData.load(fire_store)
    res = Result(fire_store)
    for w in data.members():
        assert data.schedule(w.id) == res.schedule(w.id)
        assert data.current_curve(w.id) == res.current_curve(w.id)


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
    [data] = runs_of(write_report(st, tmp_path / "e.html").read_text(encoding="utf-8"))
    assert (data["best"], data["best_metric"], data["status"]) == (None, None, "unknown")
    assert data["points"] == {} and data["graph"]["nodes"] == []
    assert data["progress"] == {"done": 0, "total": None, "elapsed_s": None, "eta_s": None}
    runs = runs_of(write_comparison({"a": st}, tmp_path / "c.html").read_text(encoding="utf-8"))
    assert runs[0]["best"] is None and runs[0]["best_curve"] == [[], []]


def test_script_text_in_names_stays_data(tmp_path: Path) -> None:
    key = "</script><script>alert(1)</script>"
    st = MemoryStore()
    st.create_experiment({"task": key, "space": Space(**{key: Uniform(0.0, 1.0)}).to_json(),
                          "algorithm": {"name": "pbt"}, "config": {"steps": 2}})
    c = Builder(st).segment(0, 0, {key: 0.5}, [1.0, 2.0])
    st.put_worker(WorkerRecord(0, MEMBER, 1, {key: 0.5}, 2, c, status=DONE))
    page = write_report(st, tmp_path / "d.html").read_text(encoding="utf-8")
    assert key not in page
    [data] = runs_of(page)
    assert data["task"] == key and data["hp_keys"] == [{"key": key, "log": False}]


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
# Big runs stay fast; tables are capped; curves are decimated, members are not


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
    [data] = runs_of(write_report(st, tmp_path / "big.html").read_text(encoding="utf-8"))
    elapsed = time.perf_counter() - started
    assert len(data["lineage"]) == MAX_EVENT_ROWS
    assert any(f"{MAX_EVENT_ROWS} of {n_events} events" in n for n in data["notes"])
    # The most recent events are the ones kept.
    assert (data["lineage"][-1]["step"], data["lineage"][-1]["kind"]) == (rounds - 1, "exploit")
    assert len(data["workers"]) == members
    assert elapsed < 30, f"report of {n_events} events took {elapsed:.1f}s"


def test_curves_are_thinned_not_members(tmp_path: Path) -> None:
    st = MemoryStore()
    st.create_experiment({"task": "many", "space": Space(h=Uniform(0.0, 1.0)).to_json(),
                          "algorithm": {"name": "random"}, "config": {"steps": 400}})
    b = Builder(st)
    members, per_member = 40, 4 * (MAX_POINTS // 40 // 4 + 1)  # just over the budget
    for w in range(members):
        c = b.segment(w, 0, {"h": w / members}, [w + i / per_member for i in range(per_member)])
        st.put_worker(WorkerRecord(w, MEMBER, 1, {"h": w / members}, per_member, c))
    [data] = runs_of(write_report(st, tmp_path / "m.html").read_text(encoding="utf-8"))
    shipped = sum(len(p[0]) for p in data["points"].values())
    assert shipped <= MAX_POINTS + members and len(data["points"]) == members
    for pts in data["points"].values():  # each curve keeps its last point
        assert pts[0][-1] == per_member
    assert any("Curves show every 2th" in n for n in data["notes"])


# --------------------------------------------------------------------------------------------
# Helpers


def test_spans_decade() -> None:
    assert spans_decade([1e-3, 0.5])
    assert not spans_decade([0.1, 1.0])  # exactly one decade is not more than one
    assert not spans_decade([-1.0, 100.0])  # a log axis cannot show <= 0
    assert not spans_decade([])


def test_changes_text_names_changed_nested_keys() -> None:
    old = {"opt": {"lr": 0.1, "mom": 0.9}, "bs": 32}
    new = {"opt": {"lr": 0.12, "mom": 0.9}, "bs": 64}
    assert changes_text(old, new) == "opt.lr: 0.1 → 0.12; bs: 32 → 64"
    assert changes_text(new, new) == "unchanged"
    assert changes_text(None, {"a": 1}) == "a=1"
    assert fmt(float("nan")) == "nan" and fmt([0.123456, None]) == "[0.1235, -]"


def test_embed_json_cannot_end_the_script() -> None:
    text = embed_json({"k": "</script><!-- \u2028"})
    assert "<" not in text and json.loads(text) == {"k": "</script><!-- \u2028"}
    with pytest.raises(ValueError):
        embed_json({"x": float("nan")})  # JSON.parse would reject NaN: refuse early
