"""PB2: Population-Based Bandits (Parker-Holder et al., NeurIPS 2020) as pure decision logic.

PB2 is PBT whose explore step is a GP-UCB bandit instead of a random perturbation: the
improvement each member made over each interval is modelled by a Gaussian process over
(time, hyperparameters), and a member that exploits takes the hyperparameters that maximise
the upper confidence bound ``mu + kappa * sigma`` at the current time. Ray Tune ships it as
``PB2``; this is the same idea on firepbt's snapshots.

What the data are (Decision): the algorithm is pure and sees only the snapshot, whose curves
hold the points since each member's weights were last overwritten; a member's hyperparameters
are constant over that stretch (they change only at an exploit). So every complete interval
of ``interval // eval_every`` points in a member's current curve gives one observation:
``x`` = (end step / total steps, hyperparameters on the unit cube), ``y`` = last minus first
point of the interval. Older stretches are forgotten when a curve restarts, which plays the
role of Ray's data window.

Kernel (Decision): scikit-learn has no time-varying kernel like Ray's ``TV_SquaredExp``
(``(1 - eps)^(|t - t'| / 2)`` times a squared exponential), so time is one more input of an
anisotropic RBF kernel, ``C * RBF([l_t, l_1, ..., l_d]) + White``, all fitted by marginal
likelihood: a short fitted ``l_t`` lets old observations matter less, as Ray's ``eps`` does.

Only numeric hyperparameters (uniform, log-uniform, int) are chosen by the bandit; choices
follow PBT's explore. With fewer than ``min_data`` observations, or none that differ, the
step falls back to PBT's explore.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from firepbt.algorithms import register
from firepbt.algorithms.base import Decision, Exploit, Snapshot, WorkerView, require
from firepbt.algorithms.pbt import PBT, infer_eval_every
from firepbt.space import Int, LogUniform, Space, Uniform, explore

NUMERIC = (Uniform, LogUniform, Int)


def to_unit(dist: Uniform | LogUniform | Int, value: float) -> float:
    """The quantile of ``value`` on ``dist``'s own scale (the inverse of ``from_unit``)."""
    if isinstance(dist, Uniform):
        u = (value - dist.low) / (dist.high - dist.low)
    elif isinstance(dist, LogUniform):
        u = math.log(value / dist.low) / math.log(dist.high / dist.low)
    elif not dist.log:
        u = (value - dist.low + 0.5) / (dist.high - dist.low + 1)
    else:
        lo, hi = math.log(dist.low - 0.5), math.log(dist.high + 0.5)
        u = (math.log(value) - lo) / (hi - lo)
    return min(max(u, 0.0), 1.0)


def numeric_keys(space: Space) -> list[str]:
    """The hyperparameters the bandit chooses (sorted dotted keys)."""
    return [k for k, d in space.distributions().items() if isinstance(d, NUMERIC)]


def observations(
    snapshot: Snapshot, k: int, keys: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of sub-population ``k``: one row per complete interval of every member's curve.

    ``X[:, 0]`` is the interval's end step over ``total_steps``, ``X[:, 1:]`` the member's
    hyperparameters on the unit cube (``keys`` order); ``y`` is the interval's last minus
    first valid point. Intervals with fewer than 2 valid points are skipped.
    """
    e = infer_eval_every(snapshot)
    xs: list[list[float]] = []
    ys: list[float] = []
    if e is None:
        return np.zeros((0, 1 + len(keys))), np.zeros(0)
    per = max(1, snapshot.interval // e)
    dists = snapshot.space.distributions()
    for w in snapshot.subpop(k):
        if w.status not in ("active", "done"):
            continue
        flat = snapshot.space.flatten(w.hparams)
        unit = [to_unit(dists[key], float(flat[key])) for key in keys]  # type: ignore[arg-type]
        n = len(w.curve)
        for end in range(n, per - 1, -per):  # chunks ending at the newest point
            chunk = [v for v in w.curve[end - per : end] if v is not None and math.isfinite(v)]
            if len(chunk) < 2:
                continue
            step = w.step - (n - end) * e
            xs.append([step / snapshot.total_steps, *unit])
            ys.append(chunk[-1] - chunk[0])
    return np.array(xs, dtype=float).reshape(-1, 1 + len(keys)), np.array(ys, dtype=float)


@register
@dataclass(frozen=True)
class PB2(PBT):
    """PBT with a GP-UCB explore step (see the module docstring).

    Args (beyond :class:`PBT`'s):
        kappa: exploration weight of the upper confidence bound ``mu + kappa * sigma``.
        candidates: random points of the unit cube scored per explore (plus the donor's).
        min_data: observations needed before the bandit is used (PBT's explore before).
        max_data: the newest observations kept for the fit (a GP costs O(n^3)).
    """

    name: ClassVar[str] = "pb2"
    kappa: float = 1.0
    candidates: int = 256
    min_data: int = 4
    max_data: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            isinstance(self.kappa, int | float) and math.isfinite(self.kappa)
            and self.kappa >= 0,
            f"kappa={self.kappa!r}: must be a number >= 0",
        )
        for name in ("candidates", "min_data", "max_data"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{name}={value!r}: must be an integer >= 1")
        require(self.max_data >= self.min_data,
                f"max_data={self.max_data}: must be >= min_data={self.min_data}")

    def decide_member(
        self,
        snapshot: Snapshot,
        member: WorkerView,
        rng: np.random.Generator,
        k: int,
        fitness: dict[int, float | None] | None = None,
    ) -> Decision:
        decision = super().decide_member(snapshot, member, rng, k, fitness)
        if not isinstance(decision, Exploit):
            return decision
        suggested = self.suggest(snapshot, k, snapshot.workers[decision.donor], member, rng)
        if suggested is None:
            return decision  # too little data: PBT's explore stands
        new_hparams, ops = suggested
        return Exploit(decision.worker, decision.donor, decision.donor_checkpoint, new_hparams,
                       ops, decision.fitness, decision.donor_fitness)

    def suggest(
        self, snapshot: Snapshot, k: int, donor: WorkerView, member: WorkerView,
        rng: np.random.Generator,
    ) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The UCB-maximising hyperparameters for ``member`` continuing from ``donor``, or None
        when the data are too few or all equal."""
        space = snapshot.space
        keys = numeric_keys(space)
        if not keys:
            return None
        x, y = observations(snapshot, k, keys)
        if len(y) > self.max_data:
            newest = np.argsort(-x[:, 0], kind="stable")[: self.max_data]
            x, y = x[newest], y[newest]
        if len(y) < self.min_data or np.ptp(y) == 0.0:
            return None
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(
            np.ones(x.shape[1]), (1e-2, 1e2)
        ) + WhiteKernel(0.1, (1e-6, 1e1))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bound warnings on tiny data sets
            gp.fit(x, y)
        dists = space.distributions()
        donor_flat = space.flatten(donor.hparams)
        donor_unit = [to_unit(dists[key], float(donor_flat[key])) for key in keys]  # type: ignore[arg-type]
        cand = np.vstack([donor_unit, rng.random((self.candidates, len(keys)))])
        now = member.step / snapshot.total_steps
        mu, sigma = gp.predict(np.column_stack([np.full(len(cand), now), cand]),
                               return_std=True)
        best = cand[int(np.argmax(mu + self.kappa * sigma))]
        # Choices follow PBT's explore from the donor; the bandit sets the numeric keys.
        base, ops = explore(space, donor.hparams, rng, self.explore)
        flat = space.flatten(base)
        for key, u in zip(keys, best, strict=True):
            flat[key] = dists[key].from_unit(float(min(u, np.nextafter(1.0, 0.0))))
            ops[key] = "pb2"
        return space.unflatten(flat), ops


__all__ = ["PB2", "numeric_keys", "observations", "to_unit"]
