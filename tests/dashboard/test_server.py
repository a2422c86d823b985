"""The dashboard server's API (no browser): what it answers, what it refuses, what it never
does (write to a store, import user code, bind beyond loopback unasked)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from firepbt.algorithms import PBT
from firepbt.api import run
from firepbt.cli import main
from firepbt.dashboard.data import overview
from firepbt.errors import ConfigError, StoreError
from firepbt.result import Result
from firepbt.store import MemoryStore, open_store

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed")

from firepbt.dashboard.server import (  # noqa: E402
    BackgroundServer,
    create_app,
    expand_stores,
    is_loopback,
    warn_if_exposed,
)


class Response:
    def __init__(self, status_code: int, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.text = body.decode("utf-8", "replace")
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.text)


class Client:
    """The real server (uvicorn, on a free loopback port) and a plain HTTP client."""

    def __init__(self, app: Any) -> None:
        self._server = BackgroundServer(app)

    def __enter__(self) -> Client:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def get(self, path: str) -> Response:
        url = self._server.url + path.lstrip("/")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return Response(r.status, r.read(), {k.lower(): v for k, v in r.headers.items()})
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), {})


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_api_answers_what_the_store_holds(pbt_store: str, fire_store: str) -> None:
    before = (digest(pbt_store), digest(fire_store))
    with Client(create_app([pbt_store, fire_store])) as client:
        assert client.get("/api/runs").json() == [
            {"label": "nqm-pbt", "url": f"sqlite:///{pbt_store}"},
            {"label": "deceptive-fire", "url": f"sqlite:///{fire_store}"}]
        page = client.get("/")
        assert page.status_code == 200 and "FP.live(" in page.text
        for i, path in enumerate((pbt_store, fire_store)):
            ov = client.get(f"/api/runs/{i}/overview").json()
            full = client.get(f"/api/runs/{i}").json()
            with open_store(path, create=False) as st:
                res = Result(st)
                assert ov["best"] == full["best"] == res.best
                assert ov["best_metric"] == full["best_metric"] == res.best_metric
                assert ov["counts"] == full["counts"] == st.event_counts()
                finals = res.final_metrics(subpop=None)
            # The overview's per-member metric (indexed query) is the lineage's last value.
            assert {w["id"]: w["metric"] for w in ov["workers"] if w["role"] == "member"} \
                == finals
            assert ov["version"] == full["version"]
        assert client.get("/api/runs/2").status_code == 404
        assert client.get("/api/runs/2/overview").status_code == 404
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/static/plotly-basic.min.js").headers["content-type"].startswith(
            "text/javascript")
        for name in ("page.py", "..%2Fdata.py", "nope.js"):
            assert client.get(f"/static/{name}").status_code == 404
    assert (digest(pbt_store), digest(fire_store)) == before  # read-only


def test_foreign_host_names_are_refused(pbt_store: str) -> None:
    """A page on another site that rebinds its name to 127.0.0.1 must not read the runs."""
    with Client(create_app([pbt_store])) as client:
        url = client._server.url + "api/runs/0/overview"
        req = urllib.request.Request(url, headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400
        assert client.get("/api/runs/0/overview").status_code == 200
    with Client(create_app([pbt_store], allowed_hosts=["*"])) as client:
        req = urllib.request.Request(client._server.url + "api/runs",
                                     headers={"Host": "dashboard.lan"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200


def test_user_code_is_never_imported(tmp_path: Path) -> None:
    marker = tmp_path / "imports.log"
    task = tmp_path / "mytask_dash.py"
    task.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from firepbt.tasks.toys import QuadraticToy

        with open({str(marker)!r}, "a") as f:   # every import leaves a line
            f.write("imported\\n")

        class Task(QuadraticToy):
            pass
    """))
    db = str(tmp_path / "user.db")
    run(f"{task}:Task", algorithm=PBT(population=2), steps=8, interval=4, store=db,
        executor="inprocess", seed=0)
    for name in [m for m in sys.modules if "mytask_dash" in m]:
        del sys.modules[name]
    lines = marker.read_text()
    from firepbt.report import write_report

    with Client(create_app([db])) as client:
        assert client.get("/api/runs/0").json()["task"].endswith("mytask_dash.py:Task")
        client.get("/api/runs/0/overview")
    write_report(db)
    assert marker.read_text() == lines, "the dashboard or report imported the task module"
    assert not [m for m in sys.modules if "mytask_dash" in m]


def test_refuses_bad_stores(tmp_path: Path, pbt_store: str) -> None:
    with pytest.raises(StoreError):
        create_app([str(tmp_path / "missing.db")])
    assert not (tmp_path / "missing.db").exists()
    empty = str(tmp_path / "empty.db")
    open_store(empty).close()
    with pytest.raises(ConfigError, match="holds no experiment"):
        create_app([pbt_store, empty])
    with pytest.raises(ConfigError, match="at least one store"):
        create_app([])
    with pytest.raises(ConfigError, match="poll_s"):
        create_app([pbt_store], poll_s=0)


def test_folders_expand_to_their_stores(tmp_path: Path) -> None:
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.db", "a/sub/y.db", "a/notes.txt"):
        (tmp_path / name).write_text("")
    assert expand_stores([str(tmp_path / "a"), "memory://", "z.db"]) == [
        str(tmp_path / "a/sub/y.db"), str(tmp_path / "a/x.db"), "memory://", "z.db"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no store file"):
        expand_stores([str(tmp_path / "empty")])


def test_cli_names_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path / "nope.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_exposing_beyond_loopback_warns() -> None:
    said: list[str] = []
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        warn_if_exposed(host, 8000, said.append)
    assert said == []
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        warn_if_exposed(host, 8000, said.append)
    assert len(said) == 3 and all("no authentication" in s for s in said)


def test_overview_of_an_empty_population() -> None:
    st = MemoryStore()
    with pytest.raises(ConfigError, match="holds no experiment"):
        overview(st)
    st.create_experiment({"task": "t", "algorithm": {"name": "pbt"}, "config": {"steps": 10},
                          "created": 100.0})
    ov = overview(st, now=160.0)
    assert ov["progress"] == {"done": 0, "total": 0, "elapsed_s": 60.0, "eta_s": None}
    assert ov["best"] is None and ov["workers"] == []


def test_cli_serves_the_stores(pbt_store: str, fire_store: str) -> None:
    """`firepbt dashboard` as a user runs it: a process serving 127.0.0.1 until stopped."""
    with socket.socket() as s:  # a free loopback port (released just before the server binds)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "firepbt.cli", "dashboard", pbt_store, fire_store,
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the dashboard did not answer in 30 s"
                time.sleep(0.1)
        assert [r["label"] for r in runs] == ["nqm-pbt", "deceptive-fire"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out and "warning" not in err


def test_the_views_carry_every_named_metric_aligned_with_its_steps(metrics_store: str) -> None:
    from firepbt.dashboard.data import run_payload

    with open_store(metrics_store, create=False) as st:
        views = run_payload(st)
        res = Result(st)
        assert views["extra_metrics"] == ["distance"] == res.metric_names()[1:]
        rows = {(r.segment, r.step): r for r in st.metrics()}
        segments = {s.id: s for s in st.segments()}
        for seg, (steps, score, distance) in views["points"].items():
            for step, s, d in zip(steps, score, distance, strict=True):
                row = rows[(int(seg), step)]
                assert segments[int(seg)].worker == row.worker
                assert (s, d) == (row.value, row.extra["distance"])
        # The best lineage too: the same steps as Result's curves of that member.
        curves = res.metric_curves(views["best"])
        steps, score, distance = views["best_curve"]
        assert list(zip(steps, score, strict=True)) == curves["score"]
        assert list(zip(steps, distance, strict=True)) == curves["distance"]


def test_a_task_that_returns_one_number_sends_two_columns(pbt_store: str) -> None:
    from firepbt.dashboard.data import run_payload

    with open_store(pbt_store, create=False) as st:
        views = run_payload(st)
    assert views["extra_metrics"] == []
    assert {len(cols) for cols in views["points"].values()} == {2}
    assert len(views["best_curve"]) == 2
