"""``firepbt dashboard``: a local web app over one or more stores (Starlette + uvicorn).

The server only reads: stores are opened with ``create=False`` and only their read methods are
called, and no user code is imported (the task and any custom explore function stay names).
The page polls ``/api/runs/{i}/overview`` (indexed queries, fast) every few seconds and fetches
the full views ``/api/runs/{i}`` only when the overview's version changed, so a live run's new
points appear without a reload.

Needs the ``dashboard`` extra: ``pip install 'firepbt[dashboard]'``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from firepbt.dashboard.data import overview, run_payload
from firepbt.dashboard.page import PLOTLY, STATIC_FILES, live_page, static_text
from firepbt.errors import ConfigError, FirePBTError
from firepbt.store import open_store
from firepbt.store.base import Store

log = logging.getLogger(__name__)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}


def _require() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FirePBTError(
            f"the dashboard needs the 'dashboard' extra ({exc.name} is missing): "
            "pip install 'firepbt[dashboard]'"
        ) from None


class _Run:
    """One store, opened read-only, with its last full payload cached by version."""

    def __init__(self, label: str, url: str) -> None:
        self.label = label
        self.url = url
        self.store: Store = open_store(url, create=False)
        if self.store.experiment() is None:
            self.store.close()
            raise ConfigError(f"store {url!r}: holds no experiment to show")
        # A second handle for the polled overview: building the views holds the first one's
        # connection for seconds on a big run, and the overview must not queue behind it.
        self._overview_store: Store = open_store(url, create=False)
        self._lock = threading.Lock()
        self._cached: tuple[str, dict[str, Any]] | None = None
        self._built_at = 0.0
        self._build_s = 0.0

    def overview(self) -> dict[str, Any]:
        return overview(self._overview_store, self.label)

    def close(self) -> None:
        self.store.close()
        self._overview_store.close()

    def payload(self) -> dict[str, Any]:
        # Building the views reads the whole store; several clients polling the same run
        # share one build per version.
        # A big live run changes its version every moment, and its views take seconds to
        # build (2,000 members: about 10 s): rebuild at most once per 5 build times, so the
        # server spends at most a sixth of its time on one run's views.
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._built_at < 5 * self._build_s:
                return self._cached[1]
            version = overview(self.store, self.label)["version"]
            if self._cached is None or self._cached[0] != version:
                data = run_payload(self.store, self.label)
                self._cached = (data["version"], data)
                self._built_at, self._build_s = now, time.monotonic() - now
            return self._cached[1]


def expand_stores(args: Sequence[str]) -> list[str]:
    """Store arguments as given, with each folder replaced by the store files (``*.db``) under
    it, sorted (``firepbt dashboard runs/demo`` shows every run of the demo).

    Raises:
        ConfigError: a folder holds no ``*.db`` file.
    """
    out: list[str] = []
    for arg in args:
        path = Path(arg)
        if "://" not in arg and path.is_dir():
            found = sorted(str(p) for p in path.rglob("*.db") if p.is_file())
            if not found:
                raise ConfigError(f"store folder {arg!r}: holds no store file (*.db)")
            out += found
        else:
            out.append(arg)
    return out


def labels_for(stores: Sequence[str]) -> list[str]:
    """Short unique labels: the file stems, or the whole path where stems clash."""
    stems = [Path(s.removeprefix("sqlite:///")).stem for s in stores]
    return [stem if stems.count(stem) == 1 else s for stem, s in zip(stems, stores, strict=True)]


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(stores: Sequence[str], poll_s: float = 2.0, title: str = "firepbt dashboard",
               allowed_hosts: Sequence[str] = LOOPBACK_NAMES) -> Any:
    """The Starlette app serving the views of ``stores`` (paths or store URLs).

    Requests whose ``Host`` header is not in ``allowed_hosts`` are refused (400), so a web
    page the user visits cannot read a loopback dashboard through DNS rebinding; pass
    ``["*"]`` when serving on another address.

    Raises:
        ConfigError: no store, ``poll_s`` not positive, or a store holds no experiment.
        StoreError: a store does not exist or cannot be opened.
    """
    _require()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    if not stores:
        raise ConfigError("stores=[]: name at least one store to show")
    if not poll_s > 0:
        raise ConfigError(f"poll_s={poll_s!r}: must be > 0")
    runs: list[_Run] = []
    try:
        for label, url in zip(labels_for(stores), stores, strict=True):
            runs.append(_Run(label, url))
    except Exception:
        for r in runs:
            r.close()
        raise
    page = live_page(title, int(poll_s * 1000))

    def run_of(request: Request) -> _Run | None:
        i = int(request.path_params["i"])
        return runs[i] if 0 <= i < len(runs) else None

    def index(request: Request) -> Response:
        return HTMLResponse(page)

    def run_list(request: Request) -> Response:
        return JSONResponse([{"label": r.label, "url": r.store.url} for r in runs])

    def run_full(request: Request) -> Response:
        r = run_of(request)
        if r is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(r.payload())

    def run_overview(request: Request) -> Response:
        r = run_of(request)
        if r is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(r.overview())

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return Response("not found", status_code=404)
        # The vendored files never change while the server runs.
        return Response(static_text(name), media_type=_TYPES[Path(name).suffix],
                        headers={"Cache-Control": "max-age=3600"})

    def warm() -> None:
        # Build the views before the first page asks (seconds for a 2,000-member run). A
        # failure here is only logged: the page's own request reports it.
        for r in runs:
            try:
                r.payload()
            except Exception:
                log.debug("warming the views of %s failed", r.url, exc_info=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        warmer = threading.Thread(target=warm, name="firepbt-dashboard-warm", daemon=True)
        warmer.start()
        yield
        warmer.join(timeout=30)  # the stores close after it (it may be reading them)
        for r in runs:
            r.close()

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/runs", run_list),
        Route("/api/runs/{i:int}", run_full),
        Route("/api/runs/{i:int}/overview", run_overview),
        Route("/static/{name}", static),
    ], lifespan=lifespan,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])
    app.state.runs = runs
    assert PLOTLY in STATIC_FILES
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` until Ctrl-C (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


class BackgroundServer:
    """Serve an app from a thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        if not is_loopback(host):
            raise ConfigError(f"host={host!r}: a background server binds loopback only")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}/"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the dashboard server did not start within 20 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def warn_if_exposed(host: str, port: int, say: Callable[[str], None]) -> None:
    if not is_loopback(host):
        say(f"warning: --host {host} exposes the dashboard on {host}:{port} to anyone who can "
            "reach this machine: it has no authentication and shows your runs' settings, "
            "hyperparameters and tracebacks. Use the default 127.0.0.1 (and an SSH tunnel) "
            "unless that is what you want.")
