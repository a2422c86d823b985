"""The dashboard and the offline report in a real (headless) Chromium.

Each test saves screenshots of the views it checks into the ``shots`` folder
($FIREPBT_SCREENSHOTS, e.g. docs/img/dashboard, or a temp folder). Only loopback addresses;
every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firepbt.algorithms import PBT
from firepbt.api import run
from firepbt.dashboard.data import fmt
from firepbt.errors import StoreError
from firepbt.report import write_comparison, write_report
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed")

from firepbt.dashboard.server import BackgroundServer, create_app  # noqa: E402

pytestmark = pytest.mark.browser
WAIT_MS = 20_000


class Page:
    """A browser tab that records console errors and failed requests."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def open(self, url: str) -> Any:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        return self.page

    def shot(self, selector: str, path: Path) -> None:
        self.page.locator(selector).screenshot(path=str(path))


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def dashboard(pbt_store: str, fire_store: str, flaky_store: str) -> Iterator[str]:
    with BackgroundServer(create_app([pbt_store, fire_store, flaky_store], poll_s=0.5)
                          ) as server:
        yield server.url


# JS: the viewport position of a point of a Plotly chart, from its data coordinates (scroll
# the chart into view first: a click outside the viewport reaches nothing).
PIXEL = """([id, x, y]) => {
  const gd = document.getElementById(id), fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return [r.left + fl._size.l + fl.xaxis.l2p(x), r.top + fl._size.t + fl.yaxis.l2p(y)];
}"""

# JS: a member's curve point far (in pixels) from the bold best-lineage curve, so hovering it
# cannot pick the best trace: [x, y, segment id].
MEMBER_POINT = """(id) => {
  const gd = document.getElementById(id), fl = gd._fullLayout;
  const best = gd.data.find((t) => t.customdata === null || t.customdata === undefined);
  const px = (x, y) => [fl.xaxis.l2p(x), fl.yaxis.l2p(y)];
  const far = (x, y) => !best || best.x.every((bx, i) => best.y[i] === null ||
    Math.hypot(px(bx, best.y[i])[0] - px(x, y)[0], px(bx, best.y[i])[1] - px(x, y)[1]) > 12);
  for (const t of gd.data) {
    if (!t.customdata) continue;
    for (let i = Math.floor(t.x.length / 2); i < t.x.length; i++) {
      if (t.x[i] !== null && t.y[i] !== null && t.customdata[i] !== null && far(t.x[i], t.y[i]))
        return [t.x[i], t.y[i], t.customdata[i]];
    }
  }
  return null;
}"""


def test_dashboard_loads_and_shows_every_view(context: Any, dashboard: str, shots: Path
                                             ) -> None:
    tab = Page(context)
    page = tab.open(dashboard)
    assert page.locator("nav.tabs button").all_inner_texts() == ["nqm-pbt", "deceptive-fire",
                                                                 "flaky", "Compare"]
    # Every chart of the first run drew (Plotly adds .main-svg), and the metric is named.
    for sel in ("#curves-0-P1", "#schedule-0-0", "#lineage-0-plot"):
        page.wait_for_selector(f"{sel} .main-svg", timeout=WAIT_MS)
    assert "fitness (higher is better)" in page.locator("#curves-0").inner_text()
    assert page.locator("#metric-0").count() == 0  # one metric: nothing to pick
    # log y toggles the axis (the NQM fitness is a negative loss: the log view shows -fitness).
    page.click("#logy-0")
    page.wait_for_function("document.getElementById('curves-0-P1')._fullLayout.yaxis.type"
                           " === 'log'", timeout=WAIT_MS)
    assert "−fitness (log)" in page.locator("#curves-0-P1").inner_text()
    tab.shot("#curves-0", shots / "dashboard-curves-log.png")
    page.click("#logy-0")
    # The schedule of a log-uniform learning rate is on a log axis.
    assert page.evaluate("document.getElementById('schedule-0-0')._fullLayout.yaxis.type") \
        == "log"
    # Sorting the members table by the metric puts the best member first when descending.
    header = page.locator("#members-0 th", has_text="fitness (current)")
    header.click()
    header.click()
    best = page.evaluate("document.querySelector('#members-0 tr.best td').textContent")
    assert page.locator("#members-0 tbody tr").first.locator("td").first.inner_text() == best
    for view in ("status", "schedules", "members", "settings"):
        tab.shot(f"#{view}-0", shots / f"dashboard-{view}.png")
    # The FIRE run: per-sub-population panels, the evaluator timeline, transfers.
    page.click("nav.tabs button:has-text('deceptive-fire')")
    for sel in ("#curves-1-P1", "#curves-1-P2", "#gantt-1", "#firefit-1"):
        page.wait_for_selector(f"{sel} .main-svg", timeout=WAIT_MS)
    assert page.locator("#evaluators-1 table tbody tr").count() >= 1
    assert "success" in page.locator("#gantt-1").inner_text()
    tab.shot("#evaluators-1", shots / "dashboard-fire-evaluators.png")
    tab.shot("#curves-1", shots / "dashboard-fire-curves.png")
    # The comparison: one row per run, the best lineages on one chart.
    page.click("nav.tabs button:has-text('Compare')")
    page.wait_for_selector("#compare-curves .main-svg", timeout=WAIT_MS)
    assert page.locator("#compare tbody tr").count() == 3
    tab.shot("#compare", shots / "dashboard-compare.png")
    assert tab.errors == []


def test_failures_show_member_segment_and_traceback(context: Any, dashboard: str,
                                                   flaky_store: str, shots: Path) -> None:
    tab = Page(context)
    page = tab.open(dashboard)
    page.click("nav.tabs button:has-text('flaky')")
    with open_store(flaky_store, create=False) as st:
        [failure] = st.events("failure")
        segment = next(s for s in st.segments() if s.worker == failure.worker
                       and s.start_step == failure.step)
    rows = page.locator("#failures-2 tbody tr")
    assert rows.count() >= 2  # the failed attempt and the replacement
    first = rows.first.locator("td").all_inner_texts()
    assert first[:5] == ["failure", f"worker {failure.worker}", str(segment.id), "1",
                         str(failure.step)]
    assert first[5].startswith("RuntimeError: flaky training step")
    rows.first.locator("summary").click()  # unfold the traceback
    trace = rows.first.locator("pre")
    trace.wait_for(state="visible", timeout=WAIT_MS)
    assert trace.inner_text().strip() == str(failure.info["error"]).strip()
    assert "replace" in rows.nth(1).inner_text()
    assert page.locator("#status-2").inner_text().count("failures") == 1
    tab.shot("#failures-2", shots / "dashboard-failures.png")
    assert tab.errors == []


def test_hover_shows_member_and_hyperparameters(context: Any, dashboard: str, pbt_store: str,
                                                shots: Path) -> None:
    tab = Page(context)
    page = tab.open(dashboard)
    page.wait_for_selector("#curves-0-P1 .main-svg", timeout=WAIT_MS)
    found = page.evaluate(MEMBER_POINT, "curves-0-P1")
    assert found is not None, "no member point away from the best curve"
    x, y, _ = found
    run = page.evaluate("fetch('api/runs/0').then((r) => r.json())")
    page.locator("#curves-0-P1").scroll_into_view_if_needed()
    px, py = page.evaluate(PIXEL, ["curves-0-P1", x, y])
    tip = page.locator("#fp-tooltip")
    for dx in (0, 1, 0):  # Plotly hovers on mouse moves; a second move settles it
        page.mouse.move(px + dx, py)
    tip.wait_for(state="visible", timeout=WAIT_MS)
    text = tip.inner_text()
    # Whichever curve is nearest the mouse, the tooltip must name it right: the segment it
    # names belongs to the worker it names, the step is one of that segment's points, and
    # the hyperparameters are exactly that segment's.
    lines = text.splitlines()
    seg = int(next(ln for ln in lines if ln.startswith("segment ")).split()[1].rstrip(":"))
    segment = next(s for s in run["segments"] if s[0] == seg)
    worker = next(w for w in run["workers"] if w["id"] == segment[1])
    assert lines[0] == f"worker {worker['id']} (P{worker['subpop']})"
    step = int(lines[1].removeprefix("step "))
    assert segment[2] <= step <= segment[3]
    hp = run["hparams"][segment[4]]
    assert lines[-1] == ", ".join(f"{k}={fmt(v)}" for k, v in hp.items())
    assert "lr=" in lines[-1]
    tab.shot("#curves-0", shots / "dashboard-curves-hover.png")
    assert tab.errors == []


def test_clicking_a_lineage_node_shows_its_segment(context: Any, dashboard: str, shots: Path
                                                   ) -> None:
    tab = Page(context)
    page = tab.open(dashboard)
    page.wait_for_selector("#lineage-0-plot .main-svg", timeout=WAIT_MS)
    run = page.evaluate("fetch('api/runs/0').then((r) => r.json())")
    # A node that received weights from another member (an exploit), on the best lineage if
    # there is one.
    nodes = [n for n in run["graph"]["nodes"] if n["edge"] == "exploit"]
    assert nodes, "the run has no exploit to show"
    node = next((n for n in nodes if n["ckpt"] in run["best_lineage"]), nodes[0])
    page.locator("#lineage-0-plot").scroll_into_view_if_needed()
    px, py = page.evaluate(PIXEL, ["lineage-0-plot", node["step"], node["worker"]])
    page.mouse.click(px, py)
    detail = page.locator("#lineage-0-detail")
    page.wait_for_function(
        f"document.getElementById('lineage-0-detail').dataset.segment === '{node['seg']}'",
        timeout=WAIT_MS)
    text = detail.inner_text()
    assert f"Segment {node['seg']}" in text and f"checkpoint {node['parent']}" in text
    assert "(exploit)" in text and f"worker {node['parent_worker']}" in text
    for key in node["hparams"]:
        assert key in text
    tab.shot("#lineage-0", shots / "dashboard-lineage.png")
    assert tab.errors == []


def has_points(db: str) -> bool:
    if not Path(db).exists():
        return False
    try:
        with open_store(db, create=False) as st:
            return st.experiment() is not None and bool(st.metrics())
    except StoreError:  # the file is being created
        return False


def test_a_live_run_updates_without_reload(context: Any, tmp_path: Path, shots: Path) -> None:
    db = str(tmp_path / "live.db")
    stop = threading.Event()
    failed: list[BaseException] = []

    def slow(ctl: Any) -> None:  # a run that takes a while: the page must follow it
        if stop.is_set():
            raise KeyboardInterrupt  # ends the run (it stays resumable)
        time.sleep(0.03)

    def train() -> None:
        try:
            run(QuadraticToy, algorithm=PBT(population=4), steps=400, interval=4,
                eval_every=2, store=db, executor="inprocess", mode="async", seed=0,
                on_event=slow)
        except KeyboardInterrupt:
            pass
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed.append(exc)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not has_points(db):  # the dashboard opens on a run already under way
            assert time.monotonic() < deadline and not failed, failed
            time.sleep(0.05)
        with BackgroundServer(create_app([db], poll_s=0.3)) as server:
            tab = Page(context)
            page = tab.open(server.url)
            page.evaluate("window.__sameDocument = true")
            count = ("() => document.getElementById('curves-0-P1').data.reduce("
                     "(n, t) => n + t.x.filter((x) => x !== null).length, 0)")
            first = page.evaluate(count)
            page.wait_for_function(f"({count})() > {first}", timeout=WAIT_MS)
            later = page.evaluate(count)
            assert later > first
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            assert page.locator("#status-0").inner_text().count("running") >= 1
            tab.shot("#status-0", shots / "dashboard-live-status.png")
            assert tab.errors == []
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failed, failed


def test_offline_report_opens_with_the_network_disabled(browser: Any, pbt_store: str,
                                                         fire_store: str, tmp_path: Path,
                                                         shots: Path) -> None:
    report = write_report(fire_store, tmp_path / "fire.html")
    comparison = write_comparison({"PBT": pbt_store, "FIRE": fire_store}, tmp_path / "c.html")
    ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    requested: list[str] = []

    def only_the_file(route: Any) -> None:
        url = route.request.url
        if url.startswith("file://") or url.startswith("data:"):
            route.continue_()
        else:
            requested.append(url)
            route.abort()

    try:
        ctx.route("**/*", only_the_file)
        tab = Page(ctx)
        page = tab.open(report.as_uri())
        for sel in ("#curves-0-P1", "#curves-0-P2", "#lineage-0-plot", "#gantt-0"):
            page.wait_for_selector(f"{sel} .main-svg", timeout=WAIT_MS)
        page.screenshot(path=str(shots / "report-offline.png"))  # the first screen
        page = tab.open(comparison.as_uri())
        # A comparison opens on its comparison tab; each run has its own.
        page.wait_for_selector("#compare-curves .main-svg", timeout=WAIT_MS)
        page.click("nav.tabs button:has-text('FIRE')")
        page.wait_for_selector("#lineage-1-plot .main-svg", timeout=WAIT_MS)
        assert tab.errors == []
    finally:
        ctx.close()
    assert requested == [], f"the offline report asked the network for {requested}"


# JS: the y values of the bold best-lineage trace of a curves panel.
BEST_Y = """(id) => document.getElementById(id).data.find(
  (t) => t.customdata === null || t.customdata === undefined).y"""


def test_the_curves_panel_shows_the_metric_the_user_picks(browser: Any, metrics_store: str,
                                                          tmp_path: Path, shots: Path) -> None:
    report = write_report(metrics_store, tmp_path / "metrics.html")
    ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    try:
        tab = Page(ctx)
        page = tab.open(report.as_uri())
        page.wait_for_selector("#curves-0-P1 .main-svg", timeout=WAIT_MS)
        # The fitness first (the default), then each other name evaluate() returned.
        assert page.locator("#metric-0 option").all_inner_texts() == ["score (fitness)",
                                                                     "distance"]
        assert page.input_value("#metric-0") == "0"
        assert "score (higher is better)" in page.locator("#curves-0-P1").inner_text()
        score = page.evaluate(BEST_Y, "curves-0-P1")
        page.select_option("#metric-0", label="distance")
        page.wait_for_function("document.getElementById('curves-0-P1')._fullLayout.yaxis"
                               ".title.text === 'distance'", timeout=WAIT_MS)
        distance = page.evaluate(BEST_Y, "curves-0-P1")
        assert len(distance) == len(score) > 0
        assert distance == pytest.approx([1.2 - s for s in score])
        # Members' curves switch too, and the log axis works on the picked metric.
        page.click("#logy-0")
        page.wait_for_function("document.getElementById('curves-0-P1')._fullLayout.yaxis.type"
                               " === 'log'", timeout=WAIT_MS)
        assert page.input_value("#metric-0") == "1"
        assert "distance" in page.locator("#curves-0-P1").inner_text()
        tab.shot("#curves-0", shots / "report-metric-picker.png")
        assert tab.errors == []
    finally:
        ctx.close()
