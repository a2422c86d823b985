"""Shared helpers of the reliability suite: invariant assertions, comparisons, child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from firepbt.invariants import check_store
from firepbt.result import Result
from firepbt.store import Store, open_store

REPO = Path(__file__).resolve().parents[2]


def assert_invariants(store: Store | str | Path, files: bool = True) -> None:
    """Run the invariant checker (what ``firepbt check`` runs) and fail with its problems.

    ``files=False`` skips comparing the checkpoint files with the records: right after a
    controller is killed, its uncommitted checkpoints are still on disk until the next start.
    """
    problems = check_store(store if isinstance(store, Store) else str(store), files=files)
    assert problems == [], "\n".join(problems)


def checkpoint_names(store: Store) -> dict[int, str]:
    """Each checkpoint id -> what it is (writer, step, hyperparameters, parent's name).

    Ids are allocated in order, so a resume (which gives re-issued segments new checkpoint ids)
    shifts the later ones; names compare lineage across runs without depending on them.
    """
    recs = {c.id: c for c in store.checkpoints(include_deleted=True)}
    names: dict[int, str] = {}
    for cid in sorted(recs):  # a parent always has a smaller id than its child
        c = recs[cid]
        parent = names.get(c.parent, str(c.parent)) if c.parent is not None else "-"
        names[cid] = (f"w{c.worker}@{c.step} {json.dumps(c.hparams, sort_keys=True)} "
                      f"<- [{parent}]")
    return names


def without_times(store: Store) -> list[tuple[Any, ...]]:
    """Events with wall-clock times dropped (checkpoints by name), for exact comparisons."""
    names = checkpoint_names(store)
    return [
        (e.kind, e.worker, e.step, e.donor,
         None if e.donor_checkpoint is None else names.get(e.donor_checkpoint,
                                                           str(e.donor_checkpoint)),
         json.dumps(e.old_hparams, sort_keys=True), json.dumps(e.new_hparams, sort_keys=True),
         json.dumps(dict(e.info), sort_keys=True, default=str))
        for e in store.events()
    ]


def fingerprint(path: str | Path, checkpoint_ids: bool = True) -> dict[str, Any]:
    """What must be equal between an uninterrupted and a killed-then-resumed run.

    Donor checkpoints are compared by what they are (:func:`checkpoint_names`), not by id: a
    retried or resumed segment writes under a new id (so that a late write under the old lease
    can never collide), shifting later ids. ``checkpoint_ids=False`` blanks them altogether.
    """
    store = open_store(str(path), create=False)
    try:
        res = Result(store)
        return {
            "events": [e if checkpoint_ids else (*e[:4], None, *e[5:])
                       for e in without_times(store) if e[0] != "failure"],
            "schedules": {w.id: res.schedule(w.id) for w in store.workers()},
            "workers": [(w.id, w.step, json.dumps(w.hparams, sort_keys=True), w.status)
                        for w in store.workers()],
            "metrics": [(m.worker, m.step, m.value) for m in store.metrics()],
            "status": res.status(),
        }
    finally:
        store.close()


def run_child(code: str, env: dict[str, str] | None = None, timeout: float = 120
              ) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process (a controller we may kill), capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=str(REPO),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def write_task(tmp_path: Path, body: str, name: str = "task_file.py") -> Path:
    """Write a test-local task module that worker processes import as ``file.py:Name``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def leftover_temp_dirs(ckpt_root: Path) -> list[str]:
    """Temporary (partial) checkpoint directories left in a checkpoint folder."""
    if not ckpt_root.exists():
        return []
    return sorted(p.name for p in ckpt_root.iterdir() if p.name.startswith(".tmp-"))
