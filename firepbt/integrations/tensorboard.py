"""TensorBoard logging per member, read from the store (works with every executor).

Optional extras: ``pip install firepbt[torch,tensorboard]`` (torch's ``SummaryWriter``).
Each member (and FIRE evaluator) gets its own run folder under ``logdir``
(``member-3/``, ``evaluator-9/``) holding the scalar ``metric`` and one scalar per numeric
hyperparameter (``hparams/lr``) at every curve point, so TensorBoard overlays the population's
curves and shows each member's schedule, jumps at exploits included::

    tb = TensorBoardLogger("runs/tb", store="runs/fm.db")
    fp.run(task, space, algo, store="runs/fm.db", on_event=tb)   # live, after every result
    tb.close()
    # or, after the fact: export_tensorboard("runs/fm.db", "runs/tb")

The store is the only source: the logger never runs inside workers, so it sees exactly what
the controller committed (a point from a rejected stale segment is never logged).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from firepbt.store import Store, open_store
from firepbt.store.base import MEMBER


class TensorBoardLogger:
    """Writes the store's new curve points to TensorBoard each time it is called.

    Args:
        logdir: Folder for the per-member runs.
        store: The experiment's store (URL/path or Store). With ``on_event`` it may be omitted:
            the controller passed in carries one.
    """

    def __init__(self, logdir: str | Path, store: str | Store | None = None) -> None:
        self.logdir = Path(logdir)
        self.store = open_store(store) if isinstance(store, str) else store
        self._writers: dict[int, SummaryWriter] = {}
        self._seen: set[tuple[int, int, int]] = set()

    def __call__(self, controller: Any = None) -> None:
        """Log what is new (``on_event`` hook: called with the controller)."""
        if self.store is None and controller is not None:
            self.store = controller.store
        self.update()

    def update(self) -> int:
        """Write every curve point not yet written; return how many were written."""
        if self.store is None:
            raise ValueError("TensorBoardLogger has no store: pass store= or use on_event")
        st = self.store
        workers = {w.id: w for w in st.workers()}
        hparams = {s.id: s.hparams for s in st.segments()}
        written = 0
        for row in st.metrics():
            key = (row.worker, row.segment, row.step)
            if key in self._seen:
                continue
            self._seen.add(key)
            w = self._writer(row.worker, workers[row.worker].role if row.worker in workers
                             else MEMBER)
            if row.value is not None:
                w.add_scalar("metric", row.value, row.step)
            for name, value in sorted(hparams.get(row.segment, {}).items()):
                if isinstance(value, numbers.Real) and not isinstance(value, bool):
                    w.add_scalar(f"hparams/{name}", float(value), row.step)
            written += 1
        for w in self._writers.values():
            w.flush()
        return written

    def _writer(self, worker: int, role: str) -> SummaryWriter:
        if worker not in self._writers:
            name = f"{'member' if role == MEMBER else role}-{worker}"
            self._writers[worker] = SummaryWriter(log_dir=str(self.logdir / name))
        return self._writers[worker]

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def export_tensorboard(store: str | Store, logdir: str | Path) -> int:
    """Write a finished (or running) experiment's curves to ``logdir``; return the points."""
    logger = TensorBoardLogger(logdir, store)
    try:
        return logger.update()
    finally:
        logger.close()
