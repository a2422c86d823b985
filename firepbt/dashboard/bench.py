"""Dashboard and report performance: ``python -m firepbt.dashboard.bench``.

Prints, for a real 22-member x 20-interval PBT run on the noisy quadratic model and for a
synthetic store of 2,000 members x 40 intervals (80,000 decisions, written through the store API
the way the controller writes them):

* the dashboard API's overview and full-views times over HTTP (a real uvicorn server),
* the offline report's size and write time,
* with ``--browser`` (Debian's chromium + Playwright), the time until each page has drawn.

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from firepbt.store import open_store
from firepbt.store.base import (
    COMPLETED,
    DONE,
    MEMBER,
    CheckpointRecord,
    EventRecord,
    MetricRow,
    SegmentRecord,
    WorkerRecord,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def build_big_store(path: Path, members: int = 2000, intervals: int = 40, interval: int = 100,
                    points: int = 4, seed: int = 0) -> Path:
    """A finished PBT-like run: every interval each member either continues or (a quarter of
    them) exploits a member of the top quarter; ``points`` curve points per segment."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    st = open_store(tmp)
    with st.transaction():
        st.create_experiment({
            "task": "synthetic", "created": 0.0,
            "space": {"version": 1, "params": {
                "lr": {"type": "log_uniform", "low": 1e-4, "high": 1.0},
                "momentum": {"type": "uniform", "low": 0.0, "high": 1.0}}},
            "algorithm": {"name": "pbt", "population": members},
            "config": {"steps": intervals * interval, "interval": interval,
                       "eval_every": interval // points, "seed": seed, "mode": "async"},
        })
        hp = {w: {"lr": float(10 ** rng.uniform(-4, 0)), "momentum": float(rng.uniform())}
              for w in range(members)}
        skill = rng.normal(size=members)
        ckpt: dict[int, int | None] = dict.fromkeys(range(members))
        for w in range(members):
            st.add_event(EventRecord(0, "init", w, 0, 0.0, new_hparams=hp[w]))
        cid = sid = 0
        clock = 0.0
        for t in range(intervals):
            start = t * interval
            rows = []
            for w in range(members):
                cid += 1
                sid += 1
                clock += 0.01
                st.add_checkpoint(CheckpointRecord(cid, w, start + interval, f"ckpt/{cid}",
                                                   "x", hp[w], ckpt[w], clock))
                st.put_segment(SegmentRecord(sid, w, 0, start, start + interval, ckpt[w],
                                             hp[w], status=COMPLETED, attempts=0,
                                             to_checkpoint=cid))
                base = skill[w] + np.log1p(start / interval)
                rows += [MetricRow(w, sid, start + (k + 1) * interval // points,
                                   float(base + 0.05 * rng.normal()), clock)
                         for k in range(points)]
                ckpt[w] = cid
            st.add_metrics(rows)
            order = np.argsort(skill)
            q = members // 4
            for w, d in zip(order[:q], rng.choice(order[-q:], size=q), strict=True):
                w, d = int(w), int(d)
                new = {"lr": hp[d]["lr"] * float(rng.choice([0.8, 1.2])),
                       "momentum": hp[d]["momentum"]}
                st.add_event(EventRecord(0, "exploit", w, start + interval, clock, donor=d,
                                         donor_checkpoint=ckpt[d], old_hparams=hp[w],
                                         new_hparams=new))
                hp[w], ckpt[w], skill[w] = new, ckpt[d], skill[d]
        for w in range(members):
            st.put_worker(WorkerRecord(w, MEMBER, 1, hp[w], intervals * interval, ckpt[w],
                                       status=DONE))
        st.put_state("status", "finished")
    st.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    tmp.replace(path)
    return path


def _get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def measure_api(db: Path, repeats: int = 5) -> dict[str, float]:
    """The API over HTTP: the overview right after start (while the server warms the views in
    a thread), the full views' first answer, then the overview again (median of ``repeats``)
    and the views' build time without a server."""
    from firepbt.dashboard.data import run_payload
    from firepbt.dashboard.server import BackgroundServer, create_app

    with BackgroundServer(create_app([str(db)])) as server:
        during_warmup = _get(server.url + "api/runs/0/overview")
        full_first = _get(server.url + "api/runs/0")
        over = [_get(server.url + "api/runs/0/overview") for _ in range(repeats)]
    with open_store(db, create=False) as st:
        t = time.perf_counter()
        run_payload(st)
        build = time.perf_counter() - t
    return {
        "overview_s": statistics.median(t for t, _ in over),
        "overview_during_build_s": during_warmup[0],
        "overview_bytes": over[0][1],
        "views_first_answer_s": full_first[0],
        "views_build_s": build,
        "views_bytes": full_first[1],
    }


def measure_report(db: Path, out: Path) -> dict[str, float]:
    from firepbt.report import write_report

    t = time.perf_counter()
    write_report(str(db), out)
    return {"report_write_s": time.perf_counter() - t, "report_bytes": out.stat().st_size}


def measure_browser(urls: dict[str, str]) -> dict[str, float]:
    """Seconds from navigation until the status shows (``... status``) and until every chart
    of the first tab is drawn."""
    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, url in urls.items():
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                t = time.perf_counter()
                page.goto(url, timeout=120_000)
                page.wait_for_selector(".cards", timeout=120_000)
                out[f"{name} status"] = time.perf_counter() - t
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                out[name] = time.perf_counter() - t
                page.close()
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m firepbt.dashboard.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="runs/dashboard-bench", help="where stores and pages go")
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--intervals", type=int, default=40)
    p.add_argument("--browser", action="store_true", help="also time page loads in chromium")
    args = p.parse_args(argv)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}

    small = folder / "nqm-pbt-22.db"
    if not small.exists():
        from firepbt.algorithms import PBT
        from firepbt.api import run

        run("nqm", algorithm=PBT(population=22), steps=2000, interval=100, store=str(small),
            executor="inprocess", mode="sync", seed=0)
    big = folder / f"synthetic-{args.members}x{args.intervals}.db"
    t = time.perf_counter()
    existed = big.exists()
    build_big_store(big, members=args.members, intervals=args.intervals)
    if not existed:
        print(f"built {big} ({args.members} members x {args.intervals} intervals = "
              f"{args.members * args.intervals:,} decisions) in {time.perf_counter() - t:.0f} s")
    pages: dict[str, str] = {}
    for name, db in (("22x20", small), (f"{args.members}x{args.intervals}", big)):
        fig = {**measure_api(db), **measure_report(db, folder / f"{db.stem}.html")}
        pages[f"report {name}"] = (folder / f"{db.stem}.html").resolve().as_uri()
        figures[name] = fig
        print(f"{name:>10}: API overview {fig['overview_s'] * 1000:.0f} ms "
              f"({fig['overview_bytes'] / 1e3:.0f} kB; "
              f"{fig['overview_during_build_s'] * 1000:.0f} ms while the views build); "
              f"all views built in {fig['views_build_s']:.2f} s "
              f"({fig['views_bytes'] / 1e6:.1f} MB; first answer after start "
              f"{fig['views_first_answer_s']:.2f} s); report "
              f"{fig['report_bytes'] / 1e6:.1f} MB written in {fig['report_write_s']:.1f} s")
    if args.browser:
        if not Path(CHROMIUM).exists():
            print(f"--browser: {CHROMIUM} is absent; skipped")
        else:
            from firepbt.dashboard.server import BackgroundServer, create_app

            # The dashboard right after it starts (its views still being built).
            with BackgroundServer(create_app([str(big)])) as server:
                loads = measure_browser({**pages, f"dashboard {args.members}x"
                                         f"{args.intervals}": server.url})
            figures["browser_load_s"] = loads
            for name, s in loads.items():
                print(f"  {name}: drawn in chromium in {s:.1f} s")
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main()
