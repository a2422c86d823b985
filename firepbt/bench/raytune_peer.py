"""The overhead bench's peer: the same sleep workload through Ray Tune's PBT.

Each member is a Ray Tune trial of a function trainable. One Tune iteration is one of firepbt's
segments (``interval`` steps of ``step_s`` seconds of sleep, then a report with a checkpoint),
and ``PopulationBasedTraining`` perturbs every iteration (``perturbation_interval=1`` on
``training_iteration``), so both libraries do the same work: a ready point and a checkpoint
every ``interval`` steps, and a chance to exploit at each. The metric is SleepTask's
(``score += steps * lr``, maximised). Ray Tune keeps its default loggers and checkpoint
handling: this measures Ray Tune as users run it.

Needs ``pip install 'firepbt[raytune]'`` (``ray[tune]``); :func:`available` says whether it is
there and why not.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any


def available() -> str | None:
    """None when Ray Tune can run here, otherwise why not (for the bench's output)."""
    try:
        import ray.tune  # noqa: F401
    except ImportError as exc:
        return f"ray.tune is not importable ({exc}); pip install 'firepbt[raytune]'"
    return None


def _sleep_trial(config: dict[str, Any]) -> None:
    """One member: a Ray Tune function trainable that sleeps like firepbt's SleepTask."""
    from ray import tune

    score, iteration = 0.0, 0
    restored = tune.get_checkpoint()
    if restored is not None:  # an exploit: continue from the donor's weights
        with restored.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
        score, iteration = state["score"], state["iteration"]
    while iteration < config["iterations"]:
        time.sleep(config["interval"] * config["step_s"])
        score += config["interval"] * config["lr"]
        iteration += 1
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(
                json.dumps({"score": score, "iteration": iteration}))
            tune.report({"score": score},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def measure_raytune(members: int, steps: int, interval: int, step_s: float,
                    seed: int = 0, budget_s: float | None = None) -> dict[str, Any]:
    """Run the workload through Ray Tune PBT in a private Ray instance (its start not
    counted, as for firepbt on Ray) and return the wall time and efficiency.

    ``budget_s`` caps the run (Ray Tune's ``time_budget_s``): a run that hits it did not
    finish, and its efficiency is an upper bound (``finished`` is False).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from firepbt.executors.ray import init_private_ray

    ideal = steps * step_s
    random.seed(seed)  # Ray Tune's PBT draws from the global generator; it takes no seed
    t0 = time.perf_counter()
    init_private_ray(log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        cpus = ray.cluster_resources()["CPU"]
        # An equal share of the machine per member, as the Ray executor's bench asks for.
        share = min(1.0, math.floor(cpus / members * 1e4) / 1e4)
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=1,
            hyperparam_mutations={"lr": tune.loguniform(1e-3, 1.0)})
        with tempfile.TemporaryDirectory() as storage:
            tuner = tune.Tuner(
                tune.with_resources(_sleep_trial, {"cpu": share}),
                param_space={"lr": tune.loguniform(1e-3, 1.0), "iterations": steps // interval,
                             "interval": interval, "step_s": step_s},
                tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=members,
                                            metric="score", mode="max",
                                            max_concurrent_trials=members,
                                            reuse_actors=True, time_budget_s=budget_s),
                run_config=tune.RunConfig(storage_path=storage, name="overhead-peer",
                                          verbose=0),
            )
            t1 = time.perf_counter()
            results = tuner.fit()
            wall = time.perf_counter() - t1
            errors = len(results.errors)
            done = sum(int((results[i].metrics or {}).get("training_iteration", 0)
                           >= steps // interval) for i in range(len(results)))
    finally:
        ray.shutdown()
    return {
        "peer": "ray_tune_pbt", "ray_version": ray.__version__, "members": members,
        "steps": steps, "ideal_s": round(ideal, 3), "wall_s": round(wall, 3),
        "efficiency": round(ideal / wall, 3), "ray_start_s": round(started, 3),
        "trial_errors": errors, "finished": done == members,
    }
