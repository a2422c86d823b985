"""Run the shipped store conformance suite against every backend, plus ``open_store``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.errors import ConfigError
from firepbt.store import MemoryStore, MetricRow, SQLiteStore, open_store
from firepbt.store.conformance import *  # noqa: F403
from firepbt.store.conformance import StoreFactory


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "memory":
        return StoreFactory(MemoryStore, persistent=False)
    if request.param == "postgres":
        # Each test gets an experiment of its own in the session's server (conftest.py);
        # the server is started only when a postgres test runs.
        url = request.getfixturevalue("postgres_url")
        return StoreFactory(lambda: open_store(url), persistent=True)
    return StoreFactory(lambda: SQLiteStore(tmp_path / "exp.db"), persistent=True)


# -- both backends agree ---------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False)
_json = st.recursive(
    _scalars | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=30, deadline=None)
@given(value=_json)
def test_backends_store_the_same_json(
    tmp_path_factory: pytest.TempPathFactory, value: object
) -> None:
    path = tmp_path_factory.mktemp("json") / "x.db"
    with MemoryStore() as memory, SQLiteStore(path) as sqlite:
        memory.put_state("v", value)
        sqlite.put_state("v", value)
        assert memory.get_state("v") == sqlite.get_state("v") == value


@settings(max_examples=30, deadline=None)
@given(
    keys=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 5)), max_size=12, unique=True
    )
)
def test_backends_order_metrics_alike(tmp_path_factory: pytest.TempPathFactory, keys: list) -> None:
    rows = [MetricRow(worker=w, segment=s, step=t, value=float(t), time=0.0) for w, s, t in keys]
    path = tmp_path_factory.mktemp("metrics") / "x.db"
    with MemoryStore() as memory, SQLiteStore(path) as sqlite:
        memory.add_metrics(rows)
        sqlite.add_metrics(rows)
        expected = sorted(rows, key=lambda r: (r.worker, r.segment, r.step))
        assert memory.metrics() == sqlite.metrics() == expected
        assert memory.metrics(worker=1) == [r for r in expected if r.worker == 1]


# -- open_store ------------------------------------------------------------------------------


def test_open_store_memory() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore) and store.url == "memory://"


@pytest.mark.parametrize("form", ["sqlite:///{}", "{}"])
def test_open_store_sqlite(tmp_path: Path, form: str) -> None:
    path = tmp_path / "runs" / "x.db"
    with open_store(form.format(path)) as store:
        assert isinstance(store, SQLiteStore) and store.path == path
        store.put_state("k", 1)
        url = store.url
    assert path.is_file()
    with open_store(url) as again:  # a store's url opens the same store
        assert again.get_state("k") == 1


def test_open_store_relative_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/x.db") as store:
        store.put_state("k", 1)
    assert (tmp_path / "rel" / "x.db").is_file()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://x", "unsupported"),
        ("memory://x", "unsupported"),
        ("sqlite://x.db", "unsupported"),
        ("sqlite:///:memory:", "unsupported"),
        ("", "empty"),
    ],
)
def test_open_store_rejects_unknown_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        open_store(url)
    assert repr(url) in str(info.value) and "memory://" in str(info.value)
