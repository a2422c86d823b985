"""The invariant checker finds each broken invariant (so a passing check means something)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rel_helpers import assert_invariants

from firepbt import PBT, run
from firepbt.algorithms.fire import FirePBT
from firepbt.invariants import check_store
from firepbt.store import EventRecord, MetricRow, Store, WorkerRecord, open_store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    res = run("quadratic", algorithm=PBT(population=4), steps=40, interval=4,
              store=str(tmp_path / "s.db"), executor="inprocess", seed=1)
    assert res.events("exploit")
    return res.store


def one(problems: list[str], needle: str) -> None:
    assert any(needle in p for p in problems), problems


def test_clean_pbt_and_fire_stores_pass(store: Store) -> None:
    assert_invariants(store)
    fire = run("deceptive", algorithm=FirePBT(population=8, subpop_sizes=(3, 3),
                                              smoother="ema"),
               steps=400, store="memory://", executor="inprocess", workers=2, mode="sync",
               seed=1)
    assert fire.events("transfer")
    assert_invariants(fire.store)


def test_empty_store_passes_and_missing_file_is_an_error(tmp_path: Path) -> None:
    assert check_store(open_store("memory://")) == []
    with pytest.raises(Exception, match="nothing.db"):
        check_store(str(tmp_path / "nothing.db"))
    assert not (tmp_path / "nothing.db").exists()  # never created by a check


def test_1_missing_or_corrupted_current_checkpoint(store: Store) -> None:
    w = store.workers()[0]
    path = Path(store.checkpoint(w.checkpoint).path)  # type: ignore[arg-type]
    data = next(p for p in path.iterdir() if p.name != "manifest.json")
    data.write_bytes(data.read_bytes()[:-1])  # truncated
    one(check_store(store), "invariant 1")
    shutil.rmtree(path)
    one(check_store(store), "invariant 1")


def test_2_hparams_outside_the_space(store: Store) -> None:
    w = store.workers()[1]
    store.put_worker(dataclasses.replace(w, hparams={"h0": 1.5, "h1": 0.0}))
    problems = check_store(store)
    assert any("invariant 2" in p and "1.5" in p for p in problems)


def test_3_event_naming_a_missing_donor_checkpoint(store: Store) -> None:
    store.add_event(EventRecord(0, "exploit", 0, 4, 0.0, donor=1, donor_checkpoint=10_000,
                                new_hparams={"h0": 0.5, "h1": 0.5}))
    assert any("invariant 3" in p and "10000" in p for p in check_store(store))


def test_4_adopted_weights_without_their_event(store: Store) -> None:
    a, b = store.workers()[:2]
    # a takes b's checkpoint with unchanged hyperparameters, and nobody recorded it.
    store.put_worker(dataclasses.replace(a, checkpoint=b.checkpoint, step=b.step))
    assert any("invariant 4" in p and f"worker {a.id}" in p for p in check_store(store))


def test_4_checkpoint_tags_must_match_the_segment(store: Store) -> None:
    seg = next(s for s in store.segments() if s.status == "completed")
    store.put_segment(dataclasses.replace(seg, hparams={"h0": 0.123, "h1": 0.0}))
    assert any("invariant 4" in p and f"segment {seg.id}" in p for p in check_store(store))


def test_5_backward_metric_step_within_a_lineage_segment(store: Store) -> None:
    seg = next(s for s in store.segments() if s.status == "completed" and s.start_step >= 8)
    # A row inside the segment's range but behind the previous row of the same lineage.
    rows = [m for m in store.metrics(seg.worker) if m.segment == seg.id]
    store.add_metrics([MetricRow(seg.worker, seg.id + 10_000, rows[0].step, 0.0, 0.0)])
    assert any("invariant 5" in p for p in check_store(store))


def test_6_population_size_and_evaluator_writes(store: Store) -> None:
    w = store.workers()[-1]
    store.put_worker(WorkerRecord(w.id + 1, "member", 1, dict(w.hparams), 0, None))
    assert any("invariant 6" in p and "members per sub-population" in p
               for p in check_store(store))


def test_cli_check_exit_codes(store: Store, tmp_path: Path) -> None:
    path = store.url[len("sqlite:///"):]
    cmd = [sys.executable, "-m", "firepbt.cli", "check", path]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "all invariants hold" in ok.stdout, ok.stderr
    w = store.workers()[0]
    store.put_worker(dataclasses.replace(w, hparams={"h0": 9.0, "h1": 0.0}))
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "FAIL invariant 2" in bad.stdout
