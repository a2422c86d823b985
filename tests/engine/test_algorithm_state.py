"""An algorithm's state is committed with its decisions and survives a SIGKILL and a resume."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from rel_helpers import run_child  # noqa: E402
from tally import Tally  # noqa: E402

from firepbt import resume  # noqa: E402
from firepbt.store import open_store  # noqa: E402

HERE = Path(__file__).resolve().parent
RUN = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from tally import Tally
from firepbt import run
run("quadratic", algorithm=Tally(population=3), steps=40, interval=4, store=STORE,
    executor="inprocess", workers=2, mode="sync", seed=3)
"""


def final_state(path: Path) -> tuple[object, list[tuple[int, object]]]:
    store = open_store(str(path), create=False)
    try:
        return (store.get_state("algorithm_state"),
                [(w.id, w.info.get("tally")) for w in store.workers()])
    finally:
        store.close()


def test_the_state_continues_after_a_kill_and_a_resume(tmp_path: Path) -> None:
    whole = tmp_path / "whole.db"
    done = run_child(RUN.replace("STORE", repr(str(whole))))
    assert done.returncode == 0, done.stderr
    expected = final_state(whole)
    # No decision at the last step: 40 / 4 - 1 rounds.
    assert expected[0] == {"rounds": 9, "ready": {"0": 9, "1": 9, "2": 9}}

    path = tmp_path / "killed.db"
    killed = run_child(RUN.replace("STORE", repr(str(path))),
                       env={"FIREPBT_CRASH_AT": "controller.after_commit:14"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(str(path), create=False)
    saved, tick = store.get_state("algorithm_state"), store.get_state("tick")
    store.close()
    # Committed with the decisions: the state counts exactly the rounds the store holds.
    assert 0 < saved["rounds"] == tick < 9

    assert Tally.name == "tally"  # registered: the resume rebuilds it from the stored config
    resume(str(path), executor="inprocess", workers=2)
    assert final_state(path) == expected  # continued from the saved rounds, not from zero


def test_a_store_without_saved_state_starts_it_from_init_state(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    killed = run_child(RUN.replace("STORE", repr(str(path))),
                       env={"FIREPBT_CRASH_AT": "controller.after_commit:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(str(path), create=False)
    store.put_state("algorithm_state", None)  # as a store from before explicit state
    store.close()
    resume(str(path), executor="inprocess", workers=2)
    state, _ = final_state(path)
    assert isinstance(state, dict) and 0 < state["rounds"] < 9
