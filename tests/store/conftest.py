"""A throwaway PostgreSQL server for the store tests (one per test session, loopback only)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from firepbt.store.pgserver import TempPostgres, missing_reason

_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TempPostgres]:
    """A PostgreSQL 15 server on 127.0.0.1, stopped and removed at the end of the session.

    Skips (naming what is missing) where the server binaries or psycopg are not installed;
    scripts/setup.sh installs both, so CI always runs these tests.
    """
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgres extra)")
    if (why := missing_reason()) is not None:
        pytest.skip(why)
    server = TempPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: TempPostgres) -> str:
    """A store URL naming a new, empty experiment in the session's server."""
    return f"{postgres_server.url}?experiment=t{next(_names)}"
