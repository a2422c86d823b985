"""Tests for firepbt.executors.batched and firepbt.tasks.batched_teacher_student."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.batched_trainable import BatchedTrainable
from firepbt.checkpoints import CheckpointDir
from firepbt.errors import ConfigError
from firepbt.executors.batched import BatchedExecutor, _chunks
from firepbt.executors.inprocess import InProcessExecutor
from firepbt.trainable import SegmentResult, SegmentSpec, Trainable

# --- a tiny numpy task in both forms: one member, and K members batched ----------------------


class Walk(Trainable):
    """x moves towards 1 by lr * (1 - x) plus noise from the member's own generator."""

    loads = 0

    def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.hparams, self.seed = dict(hparams), seed
        self.rng = np.random.default_rng(seed)
        self.x = float(self.rng.standard_normal())

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self.x += self.hparams["lr"] * (1.0 - self.x) + 0.01 * self.rng.standard_normal()

    def evaluate(self) -> float:
        return -abs(1.0 - self.x)

    def save(self, path: Path) -> None:
        _write_walk(path, self.x, self.rng)

    def load(self, path: Path) -> None:
        Walk.loads += 1
        self.x, self.rng = _read_walk(path)


def _write_walk(path: Path, x: float, rng: np.random.Generator) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "walk.json").write_text(json.dumps({"x": x, "rng": rng.bit_generator.state}))


def _read_walk(path: Path) -> tuple[float, np.random.Generator]:
    data = json.loads((path / "walk.json").read_text())
    rng = np.random.default_rng()
    rng.bit_generator.state = data["rng"]
    return float(data["x"]), rng


class BatchedWalk(BatchedTrainable):
    """Walk with K slots; uses the ABC's generic (save/load) reslot."""

    loads = 0
    fail_train = False

    def setup(self, hparams_list: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> None:
        self.hparams, self.seeds = [dict(h) for h in hparams_list], list(seeds)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.x = np.array([float(r.standard_normal()) for r in self.rngs])

    def train(self, steps: int) -> None:
        if BatchedWalk.fail_train:
            raise RuntimeError("injected training failure")
        lr = np.array([h["lr"] for h in self.hparams])
        for _ in range(steps):
            noise = np.array([r.standard_normal() for r in self.rngs])
            self.x += lr * (1.0 - self.x) + 0.01 * noise

    def evaluate(self) -> np.ndarray:
        return -np.abs(1.0 - self.x)

    def save(self, i: int, path: Path) -> None:
        _write_walk(path, float(self.x[i]), self.rngs[i])

    def load(self, i: int, path: Path) -> None:
        BatchedWalk.loads += 1
        self.x[i], self.rngs[i] = _read_walk(path)


@pytest.fixture(autouse=True)
def _reset_counters() -> None:
    Walk.loads = BatchedWalk.loads = 0
    BatchedWalk.fail_train = False


def spec(
    root: Path,
    worker: int,
    save: int,
    *,
    lr: float = 0.1,
    start: int = 0,
    steps: int = 6,
    eval_every: int = 2,
    load: tuple[int, SegmentResult] | None = None,
    segment: int | None = None,
) -> SegmentSpec:
    return SegmentSpec(
        worker=worker, segment=save if segment is None else segment, epoch=0,
        hparams={"lr": lr}, seed=100 + worker, start_step=start, steps=steps,
        eval_every=eval_every, load_checkpoint=None if load is None else load[0],
        load_path=None if load is None else load[1].checkpoint_path,
        load_checksum=None if load is None else load[1].checksum,
        save_checkpoint=save, checkpoint_root=str(root),
    )


def run_all(executor: Any, specs: Sequence[SegmentSpec]) -> dict[int, SegmentResult]:
    """Submit ``specs`` and poll until every one has a result; results by segment id."""
    for s in specs:
        executor.submit(s)
    out: dict[int, SegmentResult] = {}
    while len(out) < len(specs):
        for r in executor.poll(0.0):
            out[r.segment] = r
    return out


def values(points: Sequence[tuple[int, float | None]]) -> np.ndarray:
    """The metrics of curve points, None as NaN."""
    return np.array([np.nan if v is None else v for _, v in points])


def tags(path: str | None) -> dict[str, Any]:
    assert path is not None
    return json.loads((Path(path) / "manifest.json").read_text())["tags"]


# --- executor ---------------------------------------------------------------------------------


def test_batched_results_equal_one_by_one_results_exactly(tmp_path: Path) -> None:
    def rounds(executor: Any, root: Path) -> list[dict[int, SegmentResult]]:
        first = run_all(executor, [spec(root, w, w, lr=0.1 * (w + 1)) for w in range(3)])
        # Round 2: worker 0 continues, worker 1 takes worker 2's checkpoint with a new lr,
        # worker 2 continues with a new lr.
        second = run_all(executor, [
            spec(root, 0, 10, start=6, load=(0, first[0])),
            spec(root, 1, 11, start=6, lr=0.5, load=(2, first[2])),
            spec(root, 2, 12, start=6, lr=0.05, load=(2, first[2])),
        ])
        return [first, second]

    batched = rounds(BatchedExecutor(BatchedWalk, capacity=3), tmp_path / "b")
    single = rounds(InProcessExecutor(Walk, capacity=3), tmp_path / "s")
    for b_round, s_round in zip(batched, single, strict=True):
        for sid, s in s_round.items():
            b = b_round[sid]
            assert b.error is None and s.error is None
            assert (b.worker, b.epoch, b.end_step, b.points) == (
                s.worker, s.epoch, s.end_step, s.points)
            assert b.checksum == s.checksum  # byte-identical checkpoint files
            assert tags(b.checkpoint_path) == tags(s.checkpoint_path)
    assert [p[0] for p in batched[0][0].points] == [2, 4, 6]
    assert tags(batched[1][11].checkpoint_path) == {
        "worker": 1, "segment": 11, "step": 12, "hparams": {"lr": 0.5}, "parent": 2}


def test_continuing_members_reuse_their_slots_and_others_restore(tmp_path: Path) -> None:
    ex = BatchedExecutor(BatchedWalk, capacity=4)
    first = run_all(ex, [spec(tmp_path, w, w) for w in range(3)])
    assert BatchedWalk.loads == 0
    # Same slots in the same order: nothing reloads, not even through reslot.
    second = run_all(ex, [spec(tmp_path, w, 10 + w, start=6, load=(w, first[w]))
                          for w in range(3)])
    assert BatchedWalk.loads == 0
    # Worker 1 adopts worker 0's checkpoint, worker 2 drops out: one verified restore, plus
    # the generic reslot round-tripping the kept slot 0 through save/load.
    run_all(ex, [spec(tmp_path, 0, 20, start=12, load=(10, second[10])),
                 spec(tmp_path, 1, 21, start=12, load=(10, second[10]))])
    assert BatchedWalk.loads == 2
    assert ex.batch_sizes == [3, 3, 2]


def test_cancel_forgets_the_slot(tmp_path: Path) -> None:
    ex = BatchedExecutor(BatchedWalk, capacity=2)
    first = run_all(ex, [spec(tmp_path, 0, 0), spec(tmp_path, 1, 1)])
    ex.cancel(1)
    run_all(ex, [spec(tmp_path, 0, 10, start=6, load=(0, first[0])),
                 spec(tmp_path, 1, 11, start=6, load=(1, first[1]))])
    assert BatchedWalk.loads == 2  # worker 1 restored; worker 0's slot moved via save/load


def test_segments_batch_by_length_and_curve_phase(tmp_path: Path) -> None:
    ex = BatchedExecutor(BatchedWalk, capacity=5)
    specs = [
        spec(tmp_path, 0, 0, steps=6),
        spec(tmp_path, 1, 1, steps=4),
        spec(tmp_path, 2, 2, steps=6),
        spec(tmp_path, 3, 3, steps=6, start=1),  # same length, other eval phase
        spec(tmp_path, 4, 4, steps=6, start=2),  # same phase as step 0
    ]
    for s in specs:
        ex.submit(s)
    assert sorted(r.segment for r in ex.poll(0.0)) == [0, 2, 4]
    assert [r.segment for r in ex.poll(0.0)] == [1]
    (late,) = ex.poll(0.0)
    assert late.segment == 3 and [p[0] for p in late.points] == [2, 4, 6, 7]
    assert ex.poll(0.0) == []
    assert ex.batch_sizes == [3, 1, 1]


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 30), steps=st.integers(1, 30), every=st.integers(1, 10))
def test_chunks_are_the_worker_curve_points(start: int, steps: int, every: int) -> None:
    points = _chunks(start, steps, every)
    assert points[-1] == start + steps
    assert all(a < b for a, b in zip([start, *points], points, strict=False))
    assert all(p % every == 0 for p in points[:-1])
    assert len(points) == len({*range(start + 1, start + steps)} & {*range(0, 100, every)}) + 1


def test_corrupt_checkpoint_fails_only_its_member(tmp_path: Path) -> None:
    ex = BatchedExecutor(BatchedWalk, capacity=2)
    first = run_all(ex, [spec(tmp_path, 0, 0), spec(tmp_path, 1, 1)])
    ex.cancel(0)
    ex.cancel(1)
    assert first[1].checkpoint_path is not None
    (Path(first[1].checkpoint_path) / "walk.json").write_text("{}")
    second = run_all(ex, [spec(tmp_path, 0, 10, start=6, load=(0, first[0])),
                          spec(tmp_path, 1, 11, start=6, load=(1, first[1]))])
    assert second[10].error is None and second[10].checkpoint_path is not None
    err = second[11].error
    assert err is not None and "fails its checksum" in err
    assert second[11].checkpoint_path is None and second[11].points == ()
    assert not CheckpointDir(tmp_path).path_for(11).exists()


def test_training_failure_fails_the_batch_and_recovers(tmp_path: Path) -> None:
    ex = BatchedExecutor(BatchedWalk, capacity=2)
    first = run_all(ex, [spec(tmp_path, 0, 0), spec(tmp_path, 1, 1)])
    BatchedWalk.fail_train = True
    failed = run_all(ex, [spec(tmp_path, w, 10 + w, start=6, load=(w, first[w]))
                          for w in range(2)])
    assert all(r.error is not None and "injected training failure" in r.error
               for r in failed.values())
    assert all(r.end_step == 6 and r.checkpoint_path is None for r in failed.values())
    BatchedWalk.fail_train = False
    loads = BatchedWalk.loads
    again = run_all(ex, [spec(tmp_path, w, 20 + w, start=6, load=(w, first[w]),
                              segment=30 + w) for w in range(2)])
    assert all(r.error is None for r in again.values())
    assert BatchedWalk.loads == loads + 2  # slots of the failed batch are never trusted


def test_executor_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match="capacity=0"):
        BatchedExecutor(BatchedWalk, capacity=0)
    with pytest.raises(ConfigError, match="BatchedTrainable"):
        BatchedExecutor(Walk, capacity=2)  # type: ignore[arg-type]
    ex = BatchedExecutor("firepbt.tasks.batched_teacher_student:BatchedTeacherStudent", 3)
    assert ex.task_cls.__name__ == "BatchedTeacherStudent" and ex.capacity == 3


def test_generic_reslot_keeps_moves_and_rebuilds_slots(tmp_path: Path) -> None:
    task = BatchedWalk()
    task.setup([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}], [1, 2, 3])
    task.train(3)
    before = task.x.copy()
    task.reslot([{"lr": 0.9}, {"lr": 0.4}], [3, 7], [2, None])
    fresh = BatchedWalk()
    fresh.setup([{"lr": 0.4}], [7])
    assert task.size == 2 and task.hparams == [{"lr": 0.9}, {"lr": 0.4}]
    assert task.x[0] == before[2] and task.x[1] == fresh.x[0]
    with pytest.raises(ConfigError, match="distinct slots"):
        task.reslot([{"lr": 0.1}] * 2, [1, 2], [0, 0])
    with pytest.raises(ConfigError, match="same length"):
        task.reslot([{"lr": 0.1}], [1, 2], [0])


# --- the batched teacher-student task ----------------------------------------------------------

torch = pytest.importorskip("torch")

from firepbt.tasks.batched_teacher_student import BatchedTeacherStudent  # noqa: E402
from firepbt.tasks.teacher_student import TeacherStudent  # noqa: E402

torch.set_num_threads(1)

HPARAMS = [{"lr": 0.03}, {"lr": 0.001}, {"lr": 0.1}]
SEEDS = [11, 12, 13]


def singles(steps: int, hparams: Sequence[Mapping[str, Any]] = HPARAMS) -> list[TeacherStudent]:
    out = []
    for hp, seed in zip(hparams, SEEDS, strict=True):
        t = TeacherStudent()
        t.setup(hp, seed)
        t.train(steps)
        out.append(t)
    return out


def assert_slot_equals(batched: BatchedTeacherStudent, i: int, single: TeacherStudent,
                       tmp: Path) -> None:
    """Slot i and the single member hold the same weights and momentum (up to rounding)."""
    batched.save(i, tmp / f"slot{i}")
    state = torch.load(tmp / f"slot{i}" / "state.pt", weights_only=True)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(state["model"][name], value, rtol=1e-5, atol=1e-6)
    ours, theirs = state["optimizer"]["state"], single.optimizer.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for k in theirs:
        torch.testing.assert_close(ours[k]["momentum_buffer"], theirs[k]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)
    assert state["extra"] == {"step": single.step}
    assert torch.equal(state["generator"], single.generator.get_state())  # type: ignore[union-attr]


def test_batched_members_match_single_members(tmp_path: Path) -> None:
    task = BatchedTeacherStudent()
    task.setup(HPARAMS, SEEDS)
    fresh = singles(0)
    np.testing.assert_allclose(task.evaluate(), [t.evaluate() for t in fresh], rtol=1e-6)
    task.train(7)
    trained = singles(7)
    np.testing.assert_allclose(task.evaluate(), [t.evaluate() for t in trained], rtol=1e-5)
    for i, t in enumerate(trained):
        assert_slot_equals(task, i, t, tmp_path)
    assert task.evaluate().shape == (3,) and task.size == 3


def test_per_member_lr_and_set_hparams(tmp_path: Path) -> None:
    task = BatchedTeacherStudent()
    task.setup(HPARAMS, SEEDS)
    task.train(3)
    task.set_hparams(1, {"lr": 0.05})
    task.train(3)
    ref = singles(3)
    ref[1].set_hparams({"lr": 0.05})
    for t in ref:
        t.train(3)
    np.testing.assert_allclose(task.evaluate(), [t.evaluate() for t in ref], rtol=1e-5)
    with pytest.raises(ConfigError, match="needs 'lr'"):
        task.set_hparams(0, {"learning_rate": 0.1})


def test_a_diverging_member_leaves_the_others_untouched() -> None:
    hps = [{"lr": 0.03}, {"lr": 1e6}, {"lr": 0.1}]
    task = BatchedTeacherStudent()
    task.setup(hps, SEEDS)
    task.train(6)
    got = task.evaluate()
    ref = singles(6, hps)
    assert not np.isfinite(got[1])
    np.testing.assert_allclose(got[[0, 2]], [ref[0].evaluate(), ref[2].evaluate()], rtol=1e-5)


def test_checkpoints_are_interchangeable_with_the_single_task(tmp_path: Path) -> None:
    task = BatchedTeacherStudent()
    task.setup(HPARAMS, SEEDS)
    task.train(4)
    # Batched slot -> single member.
    task.save(2, tmp_path / "b2")
    single = TeacherStudent()
    single.setup({"lr": 0.02}, 99)
    single.load(tmp_path / "b2")
    assert single.step == 4 and single.optimizer.param_groups[0]["lr"] == 0.02
    # Single member -> batched slot 0 (its own lr wins over the checkpoint's, as in the
    # single task).
    donor = singles(4)[1]
    donor.save(tmp_path / "s1")
    task.load(0, tmp_path / "s1")
    assert task.steps[0] == 4 and float(task._lr[0]) == pytest.approx(0.03)
    ref0 = singles(4)[1]
    ref0.set_hparams({"lr": 0.03})
    task.train(3)
    ref0.train(3)
    got = task.evaluate()
    assert got[0] == pytest.approx(ref0.evaluate(), rel=1e-5)
    # With slot 2's lr, a single member restored from slot 2 continues exactly like it.
    other = TeacherStudent()
    other.setup({"lr": 0.1}, 99)
    other.load(tmp_path / "b2")
    other.train(3)
    assert got[2] == pytest.approx(other.evaluate(), rel=1e-5)


def test_a_fresh_checkpoint_has_no_momentum_like_the_single_task(tmp_path: Path) -> None:
    task = BatchedTeacherStudent()
    task.setup(HPARAMS[:1], SEEDS[:1])
    task.save(0, tmp_path / "fresh")
    state = torch.load(tmp_path / "fresh" / "state.pt", weights_only=True)
    assert state["optimizer"]["state"] == {}
    task.train(1)
    task.load(0, tmp_path / "fresh")
    assert_slot_equals(task, 0, singles(0, HPARAMS)[0], tmp_path)


def test_reslot_in_memory_matches_setup(tmp_path: Path) -> None:
    task = BatchedTeacherStudent()
    task.setup(HPARAMS, SEEDS)
    task.train(2)
    task.reslot([{"lr": 0.1}, {"lr": 0.001}], [13, 12], [None, 1])
    assert task.size == 2 and task.seeds == [13, 12]
    assert_slot_equals(task, 0, singles(0, HPARAMS)[2], tmp_path)
    ref = singles(2)[1]
    assert_slot_equals(task, 1, ref, tmp_path)
    with pytest.raises(ConfigError, match="at least one member"):
        task.setup([], [])


def test_executor_matches_inprocess_single_task(tmp_path: Path) -> None:
    def specs(root: Path) -> list[SegmentSpec]:
        return [spec(root, w, w, lr=HPARAMS[w]["lr"], steps=5, eval_every=2) for w in range(3)]

    batched = run_all(BatchedExecutor(BatchedTeacherStudent, 3), specs(tmp_path / "b"))
    single = run_all(InProcessExecutor(TeacherStudent, 3), specs(tmp_path / "s"))
    for sid, s in single.items():
        b = batched[sid]
        assert b.error is None and s.error is None
        assert [p[0] for p in b.points] == [p[0] for p in s.points] == [2, 4, 5]
        np.testing.assert_allclose(values(b.points), values(s.points), rtol=1e-5)
        assert tags(b.checkpoint_path) == tags(s.checkpoint_path)


@pytest.mark.slow
def test_sync_pbt_run_end_to_end_matches_the_single_task() -> None:
    from firepbt import PBT, run

    def go(executor: Any, task: Any) -> Any:
        return run(task, algorithm=PBT(population=6), steps=200, interval=50, eval_every=25,
                   store="memory://", executor=executor, seed=4, mode="sync")

    ex = BatchedExecutor(BatchedTeacherStudent, capacity=6)
    batched = go(ex, BatchedTeacherStudent)
    single = go("inprocess", TeacherStudent)
    assert ex.batch_sizes == [6, 6, 6, 6]  # whole-population batches, one per round
    assert batched.status() == "finished"
    assert batched.events("exploit")
    b_curves, s_curves = batched.curves(), single.curves()
    assert b_curves.keys() == s_curves.keys() == set(range(6))
    for w, curve in s_curves.items():
        assert [p[0] for p in b_curves[w]] == [p[0] for p in curve] == list(range(25, 201, 25))
        np.testing.assert_allclose(values(b_curves[w]), values(curve), rtol=1e-4)
    assert [(e.kind, e.worker, e.donor) for e in batched.events()] == [
        (e.kind, e.worker, e.donor) for e in single.events()]


# --- the benchmark -------------------------------------------------------------------------------


def test_bench_reports_rates_and_speedups(monkeypatch: pytest.MonkeyPatch) -> None:
    from firepbt.bench import batched as bench

    monkeypatch.setattr(bench, "MEMBERS", 3)
    monkeypatch.setattr(bench, "METHODS", ("batched", "sequential"))  # no process spawning
    monkeypatch.setitem(bench.PRESETS, "quick", {"steps": 4, "repeats": 1})
    out = bench.main(preset="quick")
    assert out["members"] == 3 and out["steps_per_member"] == 4
    assert out["workloads"].keys() == {"train+eval", "train"}
    for workload in out["workloads"].values():
        rates = workload["methods"]
        for r in rates.values():
            assert r["member_steps_per_s"] == pytest.approx(3 * 4 / r["wall_s"])
        assert workload["speedup"]["batched_vs_sequential"] == pytest.approx(
            rates["batched"]["member_steps_per_s"] / rates["sequential"]["member_steps_per_s"])
    with pytest.raises(ConfigError, match="preset='huge'"):
        bench.main(preset="huge")
