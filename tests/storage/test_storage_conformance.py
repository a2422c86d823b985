"""Run the shipped checkpoint-storage conformance suite against every backend."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from firepbt.storage import LocalCheckpointStorage, open_storage
from firepbt.storage.conformance import *  # noqa: F403
from firepbt.storage.conformance import StorageFactory

pytest.importorskip("fsspec", reason="fsspec is not installed (the fsspec extra)")


@pytest.fixture(params=["local", "file-url", "memory-url"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    if request.param == "local":
        return StorageFactory(lambda: LocalCheckpointStorage(tmp_path / "ckpt"),
                              cross_process=True)
    if request.param == "file-url":
        url = (tmp_path / "ckpt").as_uri()
        return StorageFactory(lambda: open_storage(url), cross_process=True)
    # fsspec's memory file system is one per process: a fresh name per test.
    url = f"memory://firepbt-test-{secrets.token_hex(6)}"
    return StorageFactory(lambda: open_storage(url), cross_process=False)
