"""TensorBoard logging per member, read back with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import firepbt as fp  # noqa: E402
from firepbt.integrations.tensorboard import TensorBoardLogger, export_tensorboard  # noqa: E402
from firepbt.result import Result  # noqa: E402


def test_live_logging_writes_every_members_curve_and_schedule(tmp_path: Path) -> None:
    tb = TensorBoardLogger(tmp_path / "tb")
    res = fp.run("nqm", algorithm=fp.PBT(population=4), steps=300, interval=100, eval_every=50,
                 store="memory://", executor="inprocess", seed=0, on_event=tb)
    tb.close()
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [
        "member-0", "member-1", "member-2", "member-3"]
    curves = res.curves()
    for wid in range(4):
        acc = EventAccumulator(str(tmp_path / "tb" / f"member-{wid}"))
        acc.Reload()
        assert set(acc.Tags()["scalars"]) == {"metric", "hparams/lr", "hparams/c"}
        logged = [(e.step, e.value) for e in acc.Scalars("metric")]
        assert [s for s, _ in logged] == [s for s, _ in curves[wid]]
        assert [v for _, v in logged] == pytest.approx([v for _, v in curves[wid]], rel=1e-6)


def test_export_after_the_fact_and_no_duplicates(tmp_path: Path) -> None:
    store = str(tmp_path / "r.db")
    fp.run("nqm", algorithm=fp.PBT(population=2), steps=200, interval=100, eval_every=50,
           store=store, executor="inprocess", seed=1)
    n = sum(len(c) for c in Result(fp.store.open_store(store)).curves().values())
    assert export_tensorboard(store, tmp_path / "tb") == n
    logger = TensorBoardLogger(tmp_path / "tb2", store)
    assert logger.update() == n
    assert logger.update() == 0  # nothing new: nothing written twice
    logger.close()
