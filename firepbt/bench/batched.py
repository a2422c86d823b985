"""Batched vs one-by-one training: member-steps per second for 22 teacher-student members.

Every method runs the same work through an executor: one segment of ``steps`` steps per member
from a fresh start, a curve point every ``eval_every`` steps (-FVU on 20,000 inputs) and a
checkpoint at the end. Methods:

* ``batched`` - :class:`~firepbt.executors.batched.BatchedExecutor` with
  :class:`~firepbt.tasks.batched_teacher_student.BatchedTeacherStudent`: all 22 members in one
  process, one torch thread (one core).
* ``sequential`` - the single-member task in-process, one member after another (one core).
* ``processes`` - the single-member task in two worker processes
  (:class:`~firepbt.executors.local.LocalExecutor`, one torch thread each: two cores).

Each method's executor is started and warmed up once (processes spawned, torch imported, the
teacher and evaluation set built), so the figures are steady-state throughput. Two workloads:
``train+eval`` with the task's curve-point spacing (50 steps), where the 20,000-input
evaluation costs about as much as batched training, and ``train`` with a single evaluation at
the end, which isolates the training speed. Other processes competing for the cores inflate
every figure; compare methods from one invocation only.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from firepbt.errors import ConfigError
from firepbt.executors.base import Executor
from firepbt.trainable import SegmentSpec

MEMBERS = 22
TASK_REF = "firepbt.tasks.teacher_student:TeacherStudent"
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"steps": 200, "repeats": 1},
    "full": {"steps": 4000, "repeats": 1},
}
METHODS = ("batched", "sequential", "processes")


def _specs(root: Path, steps: int, eval_every: int, first_id: int) -> list[SegmentSpec]:
    return [
        SegmentSpec(
            worker=w, segment=first_id + w, epoch=0, hparams={"lr": 0.03}, seed=1000 + w,
            start_step=0, steps=steps, eval_every=eval_every, load_checkpoint=None,
            load_path=None, load_checksum=None, save_checkpoint=first_id + w,
            checkpoint_root=str(root),
        )
        for w in range(MEMBERS)
    ]


def _drain(executor: Executor, specs: list[SegmentSpec]) -> None:
    """Run ``specs`` keeping at most ``capacity`` in flight, as the controller does."""
    queue, inflight = list(specs), 0
    while queue or inflight:
        while queue and inflight < executor.capacity:
            executor.submit(queue.pop(0))
            inflight += 1
        for r in executor.poll(1.0):
            if r.error is not None:
                raise RuntimeError(f"bench segment {r.segment} failed:\n{r.error}")
            inflight -= 1


def _executor(method: str) -> Executor:
    if method == "batched":
        from firepbt.executors.batched import BatchedExecutor
        from firepbt.tasks.batched_teacher_student import BatchedTeacherStudent

        return BatchedExecutor(BatchedTeacherStudent, capacity=MEMBERS)
    if method == "sequential":
        from firepbt.executors.inprocess import InProcessExecutor
        from firepbt.tasks.teacher_student import TeacherStudent

        return InProcessExecutor(TeacherStudent, capacity=1)
    from firepbt.executors.local import LocalExecutor

    return LocalExecutor(TASK_REF, workers=2, threads=1)


def measure(method: str, steps: int, workloads: dict[str, int], repeats: int
            ) -> dict[str, float]:
    """Median seconds for ``MEMBERS`` fresh segments of ``steps`` steps, by workload.

    One executor serves every workload and repeat, warmed up once, so worker start-up is paid
    once and left out of the figures.
    """
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="firepbt-bench-") as tmp:
        root = Path(tmp)
        executor = _executor(method)
        executor.start()
        try:
            # Warm-up: spawns the workers and builds the teacher and evaluation set in each.
            _drain(executor, _specs(root, 1, 1, first_id=0)[:2])
            walls: dict[str, float] = {}
            next_id = MEMBERS
            for workload, eval_every in workloads.items():
                times = []
                for _ in range(repeats):
                    specs = _specs(root, steps, eval_every, first_id=next_id)
                    next_id += MEMBERS
                    t0 = time.perf_counter()
                    _drain(executor, specs)
                    times.append(time.perf_counter() - t0)
                walls[workload] = statistics.median(times)
            return walls
        finally:
            executor.close()


def main(name: str = "batched", preset: str = "quick", seeds: int | None = None
         ) -> dict[str, Any]:
    """Measure and print member-steps per second for each method and workload.

    Args:
        name: the bench name (registry key).
        preset: "quick" (200 steps per member, under 2 minutes) or "full" (a whole run's 4,000).
        seeds: repeats per measurement (median reported); default from the preset.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r}: must be one of {', '.join(PRESETS)}")
    steps = PRESETS[preset]["steps"]
    repeats = seeds or PRESETS[preset]["repeats"]
    from firepbt.tasks.teacher_student import TeacherStudent

    workloads = {"train+eval": TeacherStudent.DEFAULTS["eval_every"], "train": steps}
    print(f"{MEMBERS} teacher-student members x {steps} steps, median of {repeats}")
    walls = {method: measure(method, steps, workloads, repeats) for method in METHODS}
    out: dict[str, Any] = {
        "bench": name, "preset": preset, "members": MEMBERS, "steps_per_member": steps,
        "repeats": repeats, "workloads": {},
    }
    for workload, eval_every in workloads.items():
        rates: dict[str, dict[str, float]] = {}
        for method in METHODS:
            wall = walls[method][workload]
            rate = MEMBERS * steps / wall
            rates[method] = {"wall_s": wall, "member_steps_per_s": rate}
            cores = 2 if method == "processes" else 1
            print(f"  {workload:<10} {method:<10} ({cores} core{'s' if cores > 1 else ''}): "
                  f"{wall:7.2f} s, {rate:8.0f} member-steps/s")
        speedup = {
            f"batched_vs_{m}": rates["batched"]["member_steps_per_s"]
            / rates[m]["member_steps_per_s"]
            for m in METHODS[1:]
        }
        print(f"  {workload:<10} speed-up of batched: "
              + ", ".join(f"x{v:.2f} vs {k.removeprefix('batched_vs_')}"
                          for k, v in speedup.items()))
        out["workloads"][workload] = {"eval_every": eval_every, "methods": rates,
                                      "speedup": speedup}
    return out
