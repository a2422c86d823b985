"""Tests for firepbt.executors.worker: one worker running segments of a real tiny task.

The task counts how often each of its methods ran (per class, made afresh for every test), so
the tests see when the in-memory cache spared a ``setup`` + ``load`` and when it must not have.
"""

from __future__ import annotations

import collections
import itertools
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.executors.worker import WorkerState, checkpoint_tags, resolve_task
from firepbt.storage import MANIFEST, open_storage
from firepbt.trainable import SegmentResult, SegmentSpec, Trainable


def tally_task() -> type[Trainable]:
    """A fresh task class with its own call counts: ``calls['setup']`` and so on.

    Its state is the number of steps it trained (times ``scale``); evaluate() returns it, so
    a curve point shows whether the state continued or started again.
    """
    calls: collections.Counter[str] = collections.Counter()

    class Tally(Trainable):
        def setup(self, hparams: Mapping[str, Any], seed: int) -> None:
            calls["setup"] += 1
            self.hparams, self.seed, self.total = dict(hparams), seed, 0

        def set_hparams(self, hparams: Mapping[str, Any]) -> None:
            calls["set_hparams"] += 1
            self.hparams = dict(hparams)

        def train(self, steps: int) -> None:
            calls["train"] += 1
            calls["steps"] += steps
            if self.hparams.get("fail"):
                raise RuntimeError(f"user code failed after {self.total} steps")
            self.total += steps

        def evaluate(self) -> Any:
            calls["evaluate"] += 1
            value = float(self.total * self.hparams.get("scale", 1))
            return {"steps": value, "half": value / 2} if self.hparams.get("dict") else value

        def save(self, path: Path) -> None:
            calls["save"] += 1
            (Path(path) / "total").write_text(str(self.total))

        def load(self, path: Path) -> None:
            calls["load"] += 1
            self.total = int((Path(path) / "total").read_text())

    Tally.calls = calls  # type: ignore[attr-defined]
    return Tally


def calls(task: type[Trainable]) -> collections.Counter[str]:
    return task.calls  # type: ignore[attr-defined, no-any-return]


def spec(root: Path, worker: int, save: int, *, start: int = 0, steps: int = 4,
         eval_every: int = 2, load: tuple[int, SegmentResult] | None = None,
         metric: str | None = None, **hparams: Any) -> SegmentSpec:
    """A segment of ``worker`` writing checkpoint ``save``; ``load`` = (id, the result that
    wrote it) to continue from."""
    return SegmentSpec(
        worker=worker, segment=save, epoch=0, hparams=hparams or {"scale": 1}, seed=7,
        start_step=start, steps=steps, eval_every=eval_every,
        load_checkpoint=None if load is None else load[0],
        load_path=None if load is None else load[1].checkpoint_path,
        load_checksum=None if load is None else load[1].checksum,
        save_checkpoint=save, checkpoint_root=str(root), metric=metric,
    )


def ok(result: SegmentResult) -> SegmentResult:
    assert result.error is None, result.error
    return result


# --- curve points ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 50), steps=st.integers(1, 40), eval_every=st.integers(1, 12))
def test_curve_points_fall_on_multiples_of_eval_every_and_at_the_segment_end(
    start: int, steps: int, eval_every: int
) -> None:
    task = tally_task()
    with tempfile.TemporaryDirectory() as tmp:
        res = ok(WorkerState(task).run(
            spec(Path(tmp), 0, 1, start=start, steps=steps, eval_every=eval_every)))
    end = start + steps
    expected = sorted({s for s in range(start + 1, end + 1) if s % eval_every == 0} | {end})
    assert [s for s, _ in res.points] == expected
    # Each point is the metric right after training up to its step (fresh state: from 0).
    assert [v for _, v in res.points] == [float(s - start) for s in expected]
    assert res.end_step == end and calls(task)["steps"] == steps
    assert calls(task)["evaluate"] == len(expected) == calls(task)["train"]


def test_the_metric_key_picks_the_fitness_out_of_a_dict(tmp_path: Path) -> None:
    res = ok(WorkerState(tally_task()).run(
        spec(tmp_path, 0, 1, metric="half", steps=4, eval_every=2, dict=True)))
    assert res.points == ((2, 1.0), (4, 2.0))


def test_a_nan_metric_becomes_a_point_without_a_value(tmp_path: Path) -> None:
    res = ok(WorkerState(tally_task()).run(spec(tmp_path, 0, 1, scale=float("nan"))))
    assert res.points == ((2, None), (4, None)) and res.checkpoint_path is not None


# --- the checkpoint a segment writes -----------------------------------------------------------


def test_a_segment_writes_a_verified_checkpoint_tagged_with_its_lineage(tmp_path: Path) -> None:
    first = ok(WorkerState(tally_task()).run(spec(tmp_path, 3, 1)))
    second_spec = spec(tmp_path, 3, 2, start=4, load=(1, first), scale=2)
    second = ok(WorkerState(tally_task()).run(second_spec))
    storage = open_storage(tmp_path)
    assert second.checkpoint_path == str(storage.path_for(2)) and second.checksum is not None
    tags = storage.verify(second.checkpoint_path, second.checksum)
    assert tags == checkpoint_tags(second_spec) == {
        "worker": 3, "segment": 2, "step": 8, "hparams": {"scale": 2}, "parent": 1}


# --- the in-memory cache -----------------------------------------------------------------------


def test_a_member_that_continues_from_its_cached_checkpoint_is_not_rebuilt(
    tmp_path: Path,
) -> None:
    task = tally_task()
    worker = WorkerState(task)
    first = ok(worker.run(spec(tmp_path, 0, 1)))
    second = ok(worker.run(spec(tmp_path, 0, 2, start=4, load=(1, first))))
    assert (calls(task)["setup"], calls(task)["load"]) == (1, 0)
    assert second.points == ((6, 6.0), (8, 8.0))  # the state went on from memory
    # New hyperparameters (an explore without exploit) are applied in place.
    ok(worker.run(spec(tmp_path, 0, 3, start=8, load=(2, second), scale=10)))
    assert (calls(task)["setup"], calls(task)["load"], calls(task)["set_hparams"]) == (1, 0, 1)


def test_a_member_that_continues_from_another_checkpoint_restores_it(tmp_path: Path) -> None:
    """An exploit (or a retry) continues from a checkpoint other than the one in memory."""
    task = tally_task()
    worker = WorkerState(task)
    first = ok(worker.run(spec(tmp_path, 0, 1)))
    ok(worker.run(spec(tmp_path, 0, 2, start=4, load=(1, first))))
    # Worker 0 now holds checkpoint 2 in memory; continuing from 1 must restore 1 from disk.
    again = ok(worker.run(spec(tmp_path, 0, 3, start=4, load=(1, first))))
    assert (calls(task)["setup"], calls(task)["load"]) == (2, 1)
    assert again.points == ((6, 6.0), (8, 8.0))  # 4 restored steps, not 8 from memory


def test_the_cache_is_per_member_not_per_checkpoint(tmp_path: Path) -> None:
    """Another member adopting the same checkpoint (an exploit) never shares the object."""
    task = tally_task()
    worker = WorkerState(task)
    donor = ok(worker.run(spec(tmp_path, 0, 1)))
    ok(worker.run(spec(tmp_path, 1, 2, start=4, load=(1, donor))))
    assert (calls(task)["setup"], calls(task)["load"]) == (2, 1)
    ok(worker.run(spec(tmp_path, 0, 3, start=4, load=(1, donor))))
    assert (calls(task)["setup"], calls(task)["load"]) == (2, 1)  # worker 0 still cached


def test_a_fresh_start_never_uses_the_cache(tmp_path: Path) -> None:
    task = tally_task()
    worker = WorkerState(task)
    ok(worker.run(spec(tmp_path, 0, 1)))
    res = ok(worker.run(spec(tmp_path, 0, 2)))  # a replaced member starts again from setup
    assert calls(task)["setup"] == 2 and res.points == ((2, 2.0), (4, 4.0))


def test_forget_makes_the_next_segment_restore_from_its_checkpoint(tmp_path: Path) -> None:
    task = tally_task()
    worker = WorkerState(task)
    first = ok(worker.run(spec(tmp_path, 0, 1)))
    worker.forget(0)
    worker.forget(99)  # a member it never trained: nothing to forget, no error
    ok(worker.run(spec(tmp_path, 0, 2, start=4, load=(1, first))))
    assert (calls(task)["setup"], calls(task)["load"]) == (2, 1)


# --- failures in user code and in checkpoints --------------------------------------------------


def test_an_exception_in_user_code_is_a_result_with_its_traceback(tmp_path: Path) -> None:
    task = tally_task()
    worker = WorkerState(task)
    first = ok(worker.run(spec(tmp_path, 0, 1)))
    failed = worker.run(spec(tmp_path, 0, 2, start=4, load=(1, first), fail=True))
    assert failed.error is not None
    assert failed.error.startswith("Traceback (most recent call last):")
    assert "in train" in failed.error
    assert failed.error.rstrip().endswith("RuntimeError: user code failed after 4 steps")
    assert (failed.worker, failed.segment, failed.end_step) == (0, 2, 4)
    assert failed.points == () and failed.checkpoint_path is None and failed.checksum is None
    assert not open_storage(tmp_path).exists(2)  # nothing written for the failed segment
    assert 0 not in worker.cache
    # The retry from checkpoint 1 restores it: the failed object's state is never reused.
    retry = ok(worker.run(spec(tmp_path, 0, 3, start=4, load=(1, first))))
    assert (calls(task)["setup"], calls(task)["load"]) == (2, 1)
    assert retry.points == ((6, 6.0), (8, 8.0))


def test_a_missing_metric_key_is_a_failed_segment_naming_it(tmp_path: Path) -> None:
    res = WorkerState(tally_task()).run(spec(tmp_path, 0, 1, metric="top5", dict=True))
    assert res.error is not None and "but not 'top5'" in res.error


def test_resolve_task_takes_a_class_or_a_reference_a_worker_process_can_import() -> None:
    task = tally_task()
    assert resolve_task(task) is task
    assert resolve_task("quadratic").__name__ == "QuadraticToy"
    assert resolve_task("firepbt.tasks.toys:QuadraticToy").__name__ == "QuadraticToy"


def _flip_a_byte(checkpoint: Path) -> None:
    data = next(p for p in checkpoint.iterdir() if p.name != MANIFEST)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))


def test_a_corrupted_checkpoint_is_refused_before_load(tmp_path: Path) -> None:
    first = ok(WorkerState(tally_task()).run(spec(tmp_path, 0, 1)))
    assert first.checkpoint_path is not None
    _flip_a_byte(Path(first.checkpoint_path))
    task = tally_task()
    res = WorkerState(task).run(spec(tmp_path, 0, 2, start=4, load=(1, first)))
    assert res.error is not None and "fails its checksum" in res.error
    assert calls(task)["load"] == 0 and calls(task)["train"] == 0
    assert not open_storage(tmp_path).exists(2)


def test_a_checkpoint_with_another_checksum_than_recorded_is_refused(tmp_path: Path) -> None:
    worker = WorkerState(tally_task())
    first = ok(worker.run(spec(tmp_path, 0, 1)))
    other = ok(worker.run(spec(tmp_path, 1, 2, steps=6)))  # other bytes, other checksum
    assert other.checksum != first.checksum
    task = tally_task()
    # The store recorded checkpoint 1 with another checksum (e.g. a replaced folder).
    forged = SegmentResult(0, 1, 0, (), 4, first.checkpoint_path, other.checksum)
    res = WorkerState(task).run(spec(tmp_path, 0, 3, start=4, load=(1, forged)))
    assert res.error is not None and f"!= expected {other.checksum}" in res.error
    assert calls(task)["load"] == 0


def test_a_missing_checkpoint_folder_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    first = ok(WorkerState(tally_task()).run(spec(tmp_path / "a", 0, 1)))
    moved = SegmentResult(0, 1, 0, (), 4, str(tmp_path / "gone" / "c000000001"), first.checksum)
    res = WorkerState(tally_task()).run(spec(tmp_path / "a", 0, 2, start=4, load=(1, moved)))
    assert res.error is not None and not (tmp_path / "gone").exists()


# --- the LRU bound -----------------------------------------------------------------------------


def test_the_cache_keeps_the_most_recently_trained_members(tmp_path: Path) -> None:
    task = tally_task()
    worker = WorkerState(task, max_cached=2)
    ids = itertools.count(1)
    last = {w: (c, ok(worker.run(spec(tmp_path, w, c)))) for w in (0, 1) for c in [next(ids)]}
    c = next(ids)
    last[0] = (c, ok(worker.run(spec(tmp_path, 0, c, start=4, load=last[0]))))  # 0 is newest
    ok(worker.run(spec(tmp_path, 2, next(ids))))  # evicts 1, the least recently trained
    assert list(worker.cache) == [0, 2]
    before = calls(task)["load"]
    ok(worker.run(spec(tmp_path, 1, next(ids), start=4, load=last[1])))
    assert calls(task)["load"] == before + 1


@settings(max_examples=40, deadline=None)
@given(max_cached=st.integers(1, 4),
       plan=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=25))
def test_the_cache_behaves_as_a_bounded_lru_over_any_sequence_of_segments(
    max_cached: int, plan: list[tuple[int, bool]]
) -> None:
    """Each step: member w continues from its last checkpoint (or starts), and fails or not.
    A model LRU predicts every setup: the cache is hit exactly when the model holds w."""
    task = tally_task()
    worker = WorkerState(task, max_cached=max_cached)
    model: OrderedDict[int, None] = OrderedDict()
    last: dict[int, tuple[int, SegmentResult]] = {}
    setups = 0
    with tempfile.TemporaryDirectory() as tmp:
        for cid, (w, fail) in enumerate(plan, start=1):
            hit = w in model
            setups += not hit
            start = 0 if w not in last else last[w][1].end_step
            res = worker.run(spec(Path(tmp), w, cid, start=start, load=last.get(w),
                                  fail=fail, scale=1))
            model.pop(w, None)
            if fail:
                assert res.error is not None
            else:
                last[w] = (cid, ok(res))
                model[w] = None
                while len(model) > max_cached:
                    model.popitem(last=False)
            assert list(worker.cache) == list(model)
            assert calls(task)["setup"] == setups
            assert len(worker.cache) <= max_cached

