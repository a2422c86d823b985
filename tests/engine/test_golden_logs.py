"""The engine reproduces the committed golden event logs, event for event (see golden_runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_runs import HERE, NAMES, event_log  # noqa: E402


@pytest.mark.parametrize("name", NAMES)
def test_engine_reproduces_the_golden_event_log(name: str) -> None:
    golden = json.loads((HERE / f"{name}.json").read_text())
    log = json.loads(json.dumps(event_log(name)))
    assert len(log) == len(golden)
    for i, (got, want) in enumerate(zip(log, golden, strict=True)):
        assert got == want, f"event {i} differs"
