"""Scenarios 1, 2, 7, 12, 15 and 20: faults in workers and in user code.

Faults fire at named crash points through one-shot marker files in ``FIREPBT_FAULT_DIR``, which
spawned worker processes inherit; the test-local task calls ``crash_point`` in its own methods
to model failures of user code. Nothing waits on a timer to trigger a fault.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from rel_helpers import assert_invariants, fingerprint, leftover_temp_dirs, write_task

from firepbt import PBT, resume, run
from firepbt.checkpoints import default_root
from firepbt.controller import Controller
from firepbt.faults import FAULT_DIR_ENV, arm
from firepbt.store import COMPLETED, open_store
from firepbt.tasks.toys import QuadraticToy

GRID = QuadraticToy.grid_hparams()

FAULTY_TASK = """
import os
import time
from pathlib import Path

from firepbt.faults import crash_point
from firepbt.tasks.toys import QuadraticToy


class Faulty(QuadraticToy):
    # User code with named fault points, armed by marker files in FIREPBT_FAULT_DIR.
    def train(self, steps):
        crash_point("user.train")
        marker = Path(os.environ["FIREPBT_FAULT_DIR"]) / "user.hang"
        try:
            marker.unlink()  # one-shot: this worker hangs, its retry does not
        except FileNotFoundError:
            pass
        else:
            while True:  # hung: only the segment timeout ends it
                time.sleep(1)
        if (Path(os.environ["FIREPBT_FAULT_DIR"]) / "persistent").exists() and (
            self.hparams["h0"] == 1.0
        ):
            raise RuntimeError("persistent failure in user code")
        super().train(steps)

    def evaluate(self):
        crash_point("user.evaluate")
        return super().evaluate()

    def save(self, path):
        crash_point("user.save")
        super().save(path)

    def load(self, path):
        crash_point("user.load")
        super().load(path)
"""


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "faults"
    d.mkdir()
    monkeypatch.setenv(FAULT_DIR_ENV, str(d))
    return d


@pytest.fixture
def task(tmp_path: Path) -> str:
    return f"{write_task(tmp_path, FAULTY_TASK)}:Faulty"


def faulty_run(task: str, store: Path, **kw: object):  # type: ignore[no-untyped-def]
    settings: dict[str, object] = {
        "algorithm": PBT(population=4), "steps": 40, "interval": 4, "initial": GRID,
        "store": str(store), "executor": "process", "workers": 2, "seed": 3,
    }
    settings.update(kw)
    return run(task, **settings)  # type: ignore[arg-type]


def failures(store_path: Path) -> list[str]:
    st = open_store(str(store_path), create=False)
    try:
        return [e.info["error"] for e in st.events("failure")]
    finally:
        st.close()


def assert_all_members_finished(res: object, steps: int = 40) -> None:
    store = res.store  # type: ignore[attr-defined]
    assert res.status() == "finished"  # type: ignore[attr-defined]
    assert all(w.step == steps and w.status == "done" for w in store.workers())


def test_worker_sigkilled_mid_step_reruns_segment_elsewhere(
    task: str, faults: Path, tmp_path: Path
) -> None:
    """#1: the segment re-runs from its committed start checkpoint; one failure counted."""
    arm(faults, "worker.mid_segment", "crash", after=9)
    res = faulty_run(task, tmp_path / "r.db")
    assert_all_members_finished(res)
    errors = failures(tmp_path / "r.db")
    assert len(errors) == 1 and "worker process died" in errors[0]
    retried = [s for s in res.store.segments() if s.attempts == 1]
    assert len(retried) == 1 and retried[0].status == COMPLETED
    # Everyone else ran every segment once.
    assert all(s.attempts == 0 for s in res.store.segments() if s.id != retried[0].id)
    assert_invariants(res.store)


@pytest.mark.parametrize("point", ["checkpoint.after_write", "checkpoint.before_rename"])
def test_worker_killed_while_writing_a_checkpoint_leaves_no_partial_one(
    point: str, task: str, faults: Path, tmp_path: Path
) -> None:
    """#2: no partial checkpoint visible, previous version stays current, orphans swept."""
    arm(faults, point, "crash", after=6)
    path = tmp_path / "r.db"
    res = faulty_run(task, path)
    assert_all_members_finished(res)
    assert len(failures(path)) == 1
    ckpt_root = default_root(path)
    # The killed writer left only a temporary directory, never a c<id> one without a record.
    recorded = {Path(c.path).name for c in res.store.checkpoints()}
    on_disk = {p.name for p in ckpt_root.iterdir() if p.name.startswith("c")}
    assert on_disk <= recorded
    # The executor removed the dead writer's temporary directory as soon as it found it dead.
    assert leftover_temp_dirs(ckpt_root) == []
    assert_invariants(res.store)
    res.store.close()
    resume(str(path), executor="inprocess")  # the next start sweeps the orphan
    assert leftover_temp_dirs(ckpt_root) == []
    assert_invariants(path)


@pytest.mark.parametrize("point", ["user.train", "user.evaluate", "user.save", "user.load",
                                   "worker.before_save"])
def test_transient_user_code_exception_is_retried_from_last_checkpoint(
    point: str, task: str, faults: Path, tmp_path: Path
) -> None:
    """#12 (transient): one exception, one retry, the run is unaffected otherwise."""
    arm(faults, point, "raise", after=5)
    path = tmp_path / "r.db"
    res = faulty_run(task, path, executor="inprocess", workers=1)
    assert_all_members_finished(res)
    errors = failures(path)
    assert len(errors) == 1 and "InjectedFault" in errors[0] and point in errors[0]
    assert res.events("replace") == [] and res.events("failed") == []
    assert_invariants(res.store)
    # The retry is the same segment (same start checkpoint and steps) under a new lease.
    retried = [s for s in res.store.segments() if s.attempts == 1]
    assert len(retried) == 1 and retried[0].status == COMPLETED and retried[0].epoch == 1


def test_persistent_user_code_exception_replaces_member_from_donor(
    task: str, faults: Path, tmp_path: Path
) -> None:
    """#12 (persistent): after max_failures the member is marked failed and replaced."""
    (faults / "persistent").touch()  # every member with h0 == 1.0 fails in train()
    path = tmp_path / "r.db"
    res = faulty_run(task, path, executor="inprocess", workers=1, max_failures=2,
                     algorithm=PBT(population=2))
    errors = failures(path)
    assert len(errors) == 2 and all("persistent failure in user code" in e for e in errors)
    replaced = res.events("replace")
    assert len(replaced) == 1 and replaced[0].worker == 0 and replaced[0].donor == 1
    assert "persistent failure in user code" in replaced[0].info["error"]  # the traceback
    assert_all_members_finished(res)
    assert_invariants(res.store)


def test_corrupted_checkpoint_is_detected_before_load_and_member_re_exploits(
    tmp_path: Path,
) -> None:
    """#7: a flipped byte fails the checksum; the checkpoint is never loaded."""
    corrupted: list[str] = []

    def corrupt_once(ctl: Controller) -> None:
        w = ctl.population.workers[0]
        if corrupted or w.step != 8:
            return
        rec = ctl.store.checkpoint(w.checkpoint)  # type: ignore[arg-type]
        data = next(p for p in Path(rec.path).iterdir() if p.name != "manifest.json")
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        corrupted.append(rec.path)
        ctl.executor.cancel(0)  # drop the in-memory copy so the next segment must load

    path = tmp_path / "r.db"
    res = run("quadratic", algorithm=PBT(population=2, quantile=0.0), steps=40, interval=4,
              initial=GRID, store=str(path), executor="inprocess", seed=3, max_failures=2,
              on_event=corrupt_once)
    errors = failures(path)
    assert corrupted and len(errors) == 2
    assert all("fails its checksum" in e and corrupted[0] in e for e in errors)
    assert [e.worker for e in res.events("replace")] == [0]
    assert_all_members_finished(res)
    assert_invariants(res.store)


def test_disk_full_stops_resumably_without_temp_files(tmp_path: Path,
                                                      faults: Path) -> None:
    """#15: ENOSPC on the Nth write: no temp file, previous version kept, no retry loop."""
    arm(faults, "checkpoint.after_write", "enospc", after=7)
    path = tmp_path / "r.db"
    kw = {"algorithm": PBT(population=4), "steps": 40, "interval": 4, "initial": GRID,
          "executor": "inprocess", "workers": 2, "seed": 3}
    with pytest.raises(OSError) as err:
        run("quadratic", store=str(path), **kw)  # type: ignore[arg-type]
    assert err.value.errno == errno.ENOSPC and "resume" in str(err.value)
    assert leftover_temp_dirs(default_root(path)) == []
    assert len(failures(path)) == 1  # failed once, not retried in a loop
    st = open_store(str(path), create=False)
    assert st.get_state("status") == "stopped"
    st.close()
    assert_invariants(path)
    # Space freed (the marker fired once): resume finishes as if nothing had happened.
    resume(str(path), executor="inprocess", workers=2)
    assert_invariants(path)
    run("quadratic", store=str(tmp_path / "clean.db"), **kw)  # type: ignore[arg-type]
    assert fingerprint(path, checkpoint_ids=False) == fingerprint(
        tmp_path / "clean.db", checkpoint_ids=False
    )


@pytest.mark.slow
def test_hung_worker_times_out_and_fails_the_step_like_a_kill(
    task: str, faults: Path, tmp_path: Path
) -> None:
    """#20: a per-step timeout kills the hung worker; its segment re-runs."""
    (faults / "user.hang").touch()
    res = faulty_run(task, tmp_path / "r.db", segment_timeout_s=4.0, steps=16)
    assert_all_members_finished(res, steps=16)
    errors = failures(tmp_path / "r.db")
    assert len(errors) == 1 and "timed out after 4 s" in errors[0]
    assert_invariants(res.store)
