"""A short real Fashion-MNIST population with PyTorch through worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from firepbt import PBT, LogUniform, Space, run  # noqa: E402
from firepbt.checkpoints import CheckpointDir  # noqa: E402


def test_fmnist_pbt_short_run_learns_and_checkpoints_verify(tmp_path: Path) -> None:
    space = Space(lr=LogUniform(0.01, 0.1), momentum=0.9, weight_decay=1e-5, eval_size=500)
    res = run("fmnist", space, PBT(population=2), steps=120, interval=40, eval_every=20,
              store=str(tmp_path / "fm.db"), workers=2, executor="process", seed=0)
    assert res.best_metric is not None and res.best_metric > 0.6  # chance is 0.1
    ckpts = CheckpointDir(tmp_path / "fm.ckpt")
    for w in res.store.workers():
        rec = res.store.checkpoint(w.checkpoint)  # type: ignore[arg-type]
        tags = ckpts.verify(rec.path, rec.checksum)
        assert tags["step"] == 120
    # Every exploit's donor checkpoint was a real, verified version when it was recorded.
    for e in res.events("exploit"):
        assert res.store.checkpoint(e.donor_checkpoint).worker == e.donor  # type: ignore[arg-type]
