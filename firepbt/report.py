"""Self-contained interactive HTML reports of experiments (``firepbt report STORE``).

A report is one HTML file that works offline: the style sheet, the vendored plotly.js basic
bundle, the views' script and the run's data are all inline, and nothing is fetched when it is
viewed. It shows the same views as the live dashboard (``firepbt dashboard``):

* status (progress, best member, counts) and the run's settings as a table,
* the fitness curves of every member (one panel per sub-population for FIRE PBT): hover for
  member, sub-population, hyperparameters, step and value; zoom, pan, a log-y toggle,
* the hyperparameter schedule of every member's lineage, the best one bold, log axes where the
  space is log-uniform,
* the lineage as a graph (click a node for its segment's hyperparameters, metric, checkpoint),
* for FIRE PBT the evaluator timeline, transfers with p-values and FIRE fitness,
* failures with their tracebacks, and a sortable members table.

:func:`write_comparison` puts several runs side by side (a comparison tab, then each run).

Everything is read from the store once (:class:`firepbt.dashboard.data.RunData`); curves are
decimated, never members, so a 2,000-member run still opens in a browser in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firepbt.dashboard.data import RunData, overview, views
from firepbt.dashboard.page import offline_page
from firepbt.errors import ConfigError, FirePBTError
from firepbt.store import open_store
from firepbt.store.base import Store

__all__ = ["write_comparison", "write_report"]

# The loader is shared with the dashboard; the old private name stays for callers.
_RunData = RunData


def write_report(store: Store | str, out: str | Path | None = None) -> Path:
    """Write the interactive HTML report of one experiment.

    Args:
        store: An open store, or a store URL/path (``runs/x.db``, ``sqlite:///runs/x.db``).
            A store opened here is closed again; one passed in is left open.
        out: Where to write; by default next to the store file (``runs/x.db`` ->
            ``runs/x.html``).

    Returns:
        The path written.

    Raises:
        ConfigError: The store holds no experiment, or ``out`` is None for a store without a
            file (``memory://``).
        StoreError: The store cannot be opened.
    """
    with _opened(store) as st:
        path = Path(out) if out is not None else _default_out(st)
        payload = _payload(st, label="")
    title = f"firepbt report: {payload['task']}"
    return _write(path, offline_page(title, [payload], subtitle=f"Store {payload['url']}"))


def write_comparison(
    stores: Mapping[str, Store | str],
    out: str | Path,
    title: str = "firepbt comparison",
) -> Path:
    """Write one HTML page comparing several runs of one task.

    The page opens on a comparison tab (each run's best member and final metric in a sortable
    table, the best lineage's metric curve of every run on one plot, the best lineage's schedule
    of every numeric hyperparameter with one line per run); each run has its own tab with the
    full report.

    Args:
        stores: Label -> store (or store URL/path), e.g. ``{"FIRE PBT": "runs/fire.db",
            "PBT": "runs/pbt.db"}``, in the order to show them.
        out: The HTML file to write.
        title: The page title.

    Returns:
        The path written.

    Raises:
        ConfigError: ``stores`` is empty, a label is not a non-empty string, or a store holds
            no experiment.
    """
    if not stores:
        raise ConfigError("stores={}: must name at least one run to compare")
    runs: list[dict[str, Any]] = []
    for label, store in stores.items():
        if not isinstance(label, str) or not label:
            raise ConfigError(f"stores label {label!r}: must be a non-empty string")
        with _opened(store) as st:
            runs.append(_payload(st, label))
    # The page opens on the comparison tab (after the runs' tabs) when there is one.
    first = len(runs) if len(runs) > 1 else 0
    return _write(Path(out), offline_page(title, runs, subtitle="comparison", first_tab=first))


def _payload(store: Store, label: str) -> dict[str, Any]:
    run = RunData.load(store)  # raises ConfigError for a store without an experiment
    return {**overview(store, label), **views(run)}


class _opened:
    """Context manager: open a store given by URL (and close it), or pass an open one through."""

    def __init__(self, store: Store | str) -> None:
        self._given = store
        self._owned: Store | None = None

    def __enter__(self) -> Store:
        if isinstance(self._given, Store):
            return self._given
        # create=False: a typo in the path must not leave an empty store behind.
        self._owned = open_store(self._given, create=False)
        return self._owned

    def __exit__(self, *exc: object) -> None:
        if self._owned is not None:
            self._owned.close()


def _default_out(store: Store) -> Path:
    if store.url.startswith("sqlite:///"):
        return Path(store.url[len("sqlite:///") :]).with_suffix(".html")
    raise ConfigError(f"out=None: store {store.url!r} has no file to write next to; pass out=")


def _write(path: Path, page: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a reader never sees half a page.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        # A full disk must leave no half-written temp file behind, and say so in one line.
        tmp.unlink(missing_ok=True)
        raise FirePBTError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
    return path
