"""Issue #8 b and c: checkpoint folders belong to one store; files on disk equal live records.

b. Stores ``sweep.1`` and ``sweep.2`` used to share ``sweep.ckpt`` (the name without the
   suffix), and the second run's start-up sweep deleted the first one's checkpoints.
c. A controller killed between marking checkpoint records deleted and removing their files
   (retention) left those folders on disk forever; ``firepbt check`` did not notice.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from rel_helpers import assert_invariants, run_child

from firepbt import PBT, resume, run
from firepbt.api import checkpoint_root_for
from firepbt.checkpoints import OWNER_FILE, default_root
from firepbt.cli import main as cli
from firepbt.controller import Controller, RunConfig
from firepbt.errors import CheckpointError
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.invariants import check_store
from firepbt.store import open_store
from firepbt.tasks.toys import QuadraticToy


def quick(store: Path, seed: int = 5) -> None:
    run("quadratic", algorithm=PBT(population=4), steps=24, interval=4, store=str(store),
        executor="inprocess", workers=2, seed=seed)


def controller(store: Path, root: Path) -> Controller:
    return Controller(
        store=open_store(str(store)), executor=InProcessExecutor(QuadraticToy, capacity=2),
        checkpoint_root=root, task_ref="quadratic", space=QuadraticToy.SPACE,
        algorithm=PBT(population=4), config=RunConfig(steps=24, interval=4, seed=5),
    )


def file_problems(store: Path) -> list[str]:
    return [p for p in check_store(str(store)) if p.startswith("files:")]


# -- b ----------------------------------------------------------------------------------------


def test_stores_with_one_stem_keep_separate_checkpoint_folders(tmp_path: Path) -> None:
    """Before: both used sweep.ckpt, and sweep.2's start deleted sweep.1's checkpoints."""
    first, second = tmp_path / "sweep.1", tmp_path / "sweep.2"
    quick(first)
    quick(second, seed=6)  # other weights, under the same checkpoint ids
    assert default_root(first).name == "sweep.1.ckpt"
    for store in (first, second):
        assert_invariants(store)  # every current checkpoint is still there, no leak
        owner = json.loads((default_root(store) / OWNER_FILE).read_text())
        with open_store(str(store), create=False) as st:
            assert owner == {"store": str(store.resolve()),
                             "experiment": st.get_state("experiment_id")}


def test_a_folder_owned_by_another_store_is_refused_naming_both(tmp_path: Path) -> None:
    quick(tmp_path / "a.db")
    shared = default_root(tmp_path / "a.db")
    before = sorted(p.name for p in shared.iterdir())
    ctl = controller(tmp_path / "b.db", shared)
    with pytest.raises(CheckpointError) as err:
        ctl.run()
    msg = str(err.value)
    assert str((tmp_path / "a.db").resolve()) in msg and str(tmp_path / "b.db") in msg
    assert "exactly one store" in msg
    assert sorted(p.name for p in shared.iterdir()) == before  # nothing deleted
    assert_invariants(tmp_path / "a.db")


def test_store_file_created_anew_takes_over_its_own_folder(tmp_path: Path) -> None:
    """Deleting a store file and running again at the same path (the demo does) still works:
    the old experiment is gone with its file, so its folder is taken over and swept."""
    path = tmp_path / "x.db"
    quick(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    quick(path)
    assert_invariants(path)


def test_an_older_layout_is_read_while_its_records_point_there(tmp_path: Path) -> None:
    """A store from before: checkpoints in x.ckpt, no owner marker. Resume keeps using it."""
    path = tmp_path / "x.db"
    legacy = tmp_path / "x.ckpt"
    ctl = controller(path, legacy)
    for _ in range(6):
        ctl.step()
    ctl.close()
    (legacy / OWNER_FILE).unlink()  # older releases wrote no marker
    with open_store(str(path), create=False) as st:
        assert checkpoint_root_for(st) == legacy
    resume(str(path), executor="inprocess", workers=2)
    assert not default_root(path).exists()
    assert_invariants(path)


def test_an_older_shared_folder_is_refused_not_swept(tmp_path: Path) -> None:
    """Two older stores in one folder: the other store's checkpoints would be swept, so the
    folder is refused explicitly, and nothing in it is deleted."""
    legacy = tmp_path / "sweep.ckpt"
    ctl = controller(tmp_path / "sweep.1", legacy)
    ctl.run()
    (legacy / OWNER_FILE).unlink()
    before = sorted(p.name for p in legacy.iterdir())
    with pytest.raises(CheckpointError, match=r"no owner\.json .* does not know"):
        controller(tmp_path / "sweep.2", legacy).run()
    assert sorted(p.name for p in legacy.iterdir()) == before


# -- c ----------------------------------------------------------------------------------------


def test_killed_after_collecting_records_leaves_no_files_after_resume(tmp_path: Path) -> None:
    """Before: the collected checkpoints' folders stayed on disk forever."""
    path = tmp_path / "run.db"
    code = f"""
    from firepbt import PBT, run
    run("quadratic", algorithm=PBT(population=4), steps=60, interval=4, store={str(path)!r},
        executor="inprocess", workers=2, seed=7)
    """
    proc = run_child(code, env={"FIREPBT_CRASH_AT": "controller.after_gc_commit:2"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_invariants(path, files=False)
    leaked = file_problems(path)
    # The second collection's files were never removed; the first one's background deleter may
    # have been killed half-way through too (a .tmp-del-* folder of the dead controller).
    assert any("its record was collected" in p for p in leaked), leaked
    assert all("its record was collected" in p or ".tmp-del-" in p for p in leaked), leaked
    resume(str(path), executor="inprocess", workers=2)
    assert_invariants(path)  # files on disk == live records
    with open_store(str(path), create=False) as st:
        live = {Path(c.path).name for c in st.checkpoints()}
    assert {p.name for p in default_root(path).iterdir() if p.name.startswith("c")} == live


def test_check_reports_leaked_and_missing_checkpoint_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.db"
    quick(path)
    assert cli(["check", str(path)]) == 0
    root = default_root(path)
    with open_store(str(path), create=False) as st:
        live = st.checkpoints()
        kept = next(c for c in live if all(w.checkpoint != c.id for w in st.workers()))
    shutil.rmtree(kept.path)  # a live (retained) record loses its files
    stray = root / "c000009999"
    shutil.copytree(live[-1].path, stray)  # files with no record
    (root / ".tmp-7-999999999-abcd").mkdir()  # a dead writer's temporary folder
    capsys.readouterr()
    assert cli(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"checkpoint {kept.id} (worker {kept.worker}, step {kept.step}) is missing" in out
    assert f"leaked checkpoint folder {stray}: no record" in out
    assert "leaked temporary folder" in out and ".tmp-7-999999999-abcd" in out
