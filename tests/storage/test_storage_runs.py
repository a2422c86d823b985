"""Real runs with checkpoints on an fsspec URL: ``file://`` on process workers (every process
reads and writes the same files through fsspec) and ``memory://`` in-process (fsspec's memory
file system lives in one process). The invariant checker must find them clean."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from firepbt import PBT
from firepbt.controller import Controller, RunConfig
from firepbt.executors.base import Executor
from firepbt.executors.batched import BatchedExecutor
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.executors.local import LocalExecutor
from firepbt.executors.worker import WorkerState
from firepbt.invariants import check_store
from firepbt.storage import open_storage
from firepbt.storage.conformance import raw_access
from firepbt.store import open_store
from firepbt.tasks.batched_teacher_student import BatchedTeacherStudent
from firepbt.tasks.toys import QuadraticToy
from firepbt.trainable import SegmentResult, SegmentSpec

pytest.importorskip("fsspec", reason="fsspec is not installed (the fsspec extra)")


def pbt_run(store_url: str, root: str, executor: Executor) -> Controller:
    ctl = Controller(
        store=open_store(store_url), executor=executor, checkpoint_root=root,
        task_ref="quadratic", space=QuadraticToy.SPACE, algorithm=PBT(population=4),
        config=RunConfig(steps=40, interval=4, seed=3),
    )
    ctl.run()
    return ctl


def check_checkpoints_live_under(store_url: str, root: str) -> set[str]:
    """Every live checkpoint is on the URL storage and verifies; the kinds of events."""
    storage = open_storage(root)
    with open_store(store_url, create=False) as st:
        live = st.checkpoints()
        assert live and all(c.path.startswith(root + "/c") for c in live)
        for c in live:
            assert storage.verify(c.path, c.checksum)["step"] == c.step
        assert sorted(c.id for c in live) == storage.ids()
        events = st.events()
    return {e.kind for e in events}


def test_a_process_run_keeps_its_checkpoints_on_a_file_url(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'run.db'}"
    root = (tmp_path / "shared" / "ckpt").as_uri()
    pbt_run(store_url, root, LocalExecutor("quadratic", workers=2))
    assert check_store(store_url) == []
    check_checkpoints_live_under(store_url, root)


def test_an_in_process_run_keeps_its_checkpoints_in_memory(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'run.db'}"
    root = open_storage(f"memory://firepbt-run-{secrets.token_hex(6)}").url
    pbt_run(store_url, root, InProcessExecutor(QuadraticToy, capacity=2))
    assert check_store(store_url) == []
    check_checkpoints_live_under(store_url, root)


def test_exploits_adopt_donors_from_a_url(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'run.db'}"
    root = open_storage(f"memory://firepbt-run-{secrets.token_hex(6)}").url
    pbt_run(store_url, root, InProcessExecutor(QuadraticToy, capacity=2))
    kinds = check_checkpoints_live_under(store_url, root)
    assert "exploit" in kinds and "exploit_skipped" not in kinds, kinds


# -- the workers' side: restore from a URL checkpoint another worker wrote ---------------------


def segment(root: str, worker: int, save: int, start: int = 0,
            load: SegmentResult | None = None, load_id: int | None = None) -> SegmentSpec:
    return SegmentSpec(
        worker=worker, segment=save, epoch=0, hparams={"h0": 0.5, "h1": 0.5}, seed=7,
        start_step=start, steps=4, eval_every=2, load_checkpoint=load_id,
        load_path=None if load is None else load.checkpoint_path,
        load_checksum=None if load is None else load.checksum,
        save_checkpoint=save, checkpoint_root=root,
    )


def test_a_fresh_worker_restores_from_a_url_checkpoint_exactly(tmp_path: Path) -> None:
    root = (tmp_path / "ckpt").as_uri()
    writer = WorkerState(QuadraticToy)
    first = writer.run(segment(root, 0, 1))
    assert first.error is None and first.checkpoint_path == f"{root}/c000000001"
    # The writer continues from memory; a fresh worker (another process, another node) must
    # download, verify and load c1 and then train to the very same state.
    kept = writer.run(segment(root, 0, 2, start=4, load=first, load_id=1))
    restored = WorkerState(QuadraticToy).run(segment(root, 0, 3, start=4, load=first, load_id=1))
    assert restored.error is None, restored.error
    assert restored.points == kept.points and restored.checksum == kept.checksum

    storage = open_storage(root)
    raw = raw_access(storage)
    key = raw.data_key(1, next(iter(json.loads(raw.read(raw.manifest_key(1)))["files"])))
    raw.write(key, raw.read(key)[:-1] + bytes([raw.read(key)[-1] ^ 1]))
    damaged = WorkerState(QuadraticToy).run(segment(root, 0, 4, start=4, load=first, load_id=1))
    assert damaged.error is not None and "fails its checksum" in damaged.error
    assert not storage.exists(4)


def test_a_batched_run_keeps_its_checkpoints_in_memory(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'run.db'}"
    root = open_storage(f"memory://firepbt-batched-{secrets.token_hex(6)}").url
    ctl = Controller(
        store=open_store(store_url),
        executor=BatchedExecutor(BatchedTeacherStudent, capacity=4), checkpoint_root=root,
        task_ref="firepbt.tasks.batched_teacher_student:BatchedTeacherStudent",
        space=BatchedTeacherStudent.SPACE, algorithm=PBT(population=4),
        config=RunConfig(steps=40, interval=10, seed=3),
    )
    ctl.run()
    assert check_store(store_url) == []
    check_checkpoints_live_under(store_url, root)
