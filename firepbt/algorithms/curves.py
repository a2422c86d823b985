"""FIRE PBT's learning-curve mathematics (spec ``fire-pbt.md`` sections 4 and 6-8).

Everything here is a pure function of its inputs. A *curve* is a sequence of raw metric values
in step order, recorded every ``eval_every`` steps; higher is better. Invalid points (``None``,
NaN, +-inf, non-numeric) are dropped before any use, so the index of a point is its position
among the *valid* points.

Conventions used throughout:

* Smoothed curves (``Ã``, ``B̃``) are used **only** to find where two curves overlap in
  performance; every score and test uses the **raw** values.
* An :class:`Overlap` ``(i, j, length)`` aligns ``A[i + t]`` with ``B[j + t]`` for
  ``t in range(length)``: the two windows start at the same performance level and cover the
  same number of recorded points (hence the same number of steps).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from firepbt.errors import ConfigError

__all__ = [
    "CONTINUE",
    "STOP_NO_OVERLAP",
    "STOP_P_VALUE",
    "SUCCESS",
    "CachedSmoother",
    "EMASmoother",
    "GPSmoother",
    "Judgement",
    "Overlap",
    "ScoreName",
    "Smoother",
    "fire_fitness",
    "improvement",
    "judge",
    "min_points_to_pass",
    "overlap",
    "score_curves",
    "sign_test",
    "stop_threshold",
    "time_to_climb",
    "valid_points",
]

CONTINUE = "continue"
STOP_NO_OVERLAP = "stop_no_overlap"
STOP_P_VALUE = "stop_p_value"
SUCCESS = "success"

ScoreName = Literal["improvement", "time_to_climb"]
_SCORES: tuple[str, ...] = ("improvement", "time_to_climb")

CurveLike = Sequence[float | None] | np.ndarray


# --------------------------------------------------------------------------------------------
# Smoothers
# --------------------------------------------------------------------------------------------


class Smoother(Protocol):
    """Maps a 1-D array of finite values to an array of the same shape."""

    def __call__(self, values: np.ndarray) -> np.ndarray: ...


def _as_finite_1d(values: np.ndarray, who: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{who}: values must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{who}: values must be finite (drop invalid points with valid_points)")
    return array


@functools.cache
def _blas_threads() -> Any:
    """One thread-pool controller per process: building one scans the loaded libraries (ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


GP_FITS = ("grid", "sklearn")
# Grid of the closed-form fit: the RBF length scale over scikit-learn's bounds [1e-2, 1e3]
# (12 per decade) and the white-noise level over [1e-8, 1e1] (10 per decade).
GRID_LENGTH_SCALES = np.logspace(-2.0, 3.0, 61)
GRID_NOISE_LEVELS = np.logspace(-8.0, 1.0, 91)


def _rbf_eig(n: int, li: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues above 1e-11 and their eigenvectors (columns) of the RBF kernel matrix of
    ``n`` points in ``[0, 1)`` at grid length scale ``li``."""
    x = np.arange(n, dtype=float) / n
    with _blas_threads().limit(limits=1):
        lam, vec = np.linalg.eigh(
            np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / GRID_LENGTH_SCALES[li] ** 2)
        )
    keep = lam > 1e-11
    return lam[keep], np.ascontiguousarray(vec[:, keep])


class GPSmoother:
    """Gaussian-process posterior mean of a curve over its point index scaled to ``[0, 1)``.

    Kernel: ``RBF + WhiteKernel`` on the normalised curve (zero mean, unit variance); both
    hyperparameters are fitted by maximum marginal likelihood. Curves with fewer than 2 points
    or no variation are returned unchanged, since there is nothing to fit.

    ``fit="grid"`` (default; Decision, docs/design.md) maximises the log marginal likelihood
    in closed form over a grid (:data:`GRID_LENGTH_SCALES` x :data:`GRID_NOISE_LEVELS`): with
    ``K = U diag(lam) U^T`` for one length scale, ``log p(y) = -1/2 sum z_i^2 / (lam_i + s)
    - 1/2 sum log(lam_i + s) - n/2 log 2 pi`` with ``z = U^T y``, for every noise level ``s``
    at once; the posterior mean is ``U diag(lam / (lam + s)) z``. The eigendecompositions
    depend only on the number of points and the length scale, so they are computed once per
    curve length and kept (a pure memo, at most ``eig_cache_mb`` MiB): a new curve then costs
    a few matrix-vector products instead of a scikit-learn optimisation (about 4 ms).
    ``fit="sklearn"`` runs ``GaussianProcessRegressor`` (``normalize_y=True``, L-BFGS from the
    initial values, no restarts).

    Fitting the hyperparameters costs 10-100 ms and an evaluator's curve grows by a point or
    so between two looks, so ``refit_growth > 1`` fits them only on prefixes whose lengths
    follow a geometric ladder (``LADDER_START`` x refit_growth^k) and reuses them, with the
    length scale rescaled, for the longer curve; the posterior mean itself is still computed
    on every point (about 3 ms). The output stays a pure function of the input.
    ``refit_growth = 1`` refits on every call.

    Args:
        length_scale: initial RBF length scale (in units of the whole curve; sklearn fit).
        noise_level: initial white-noise level (in units of the normalised variance; sklearn).
        refit_growth: factor by which a curve must grow before its hyperparameters are refit
            (sklearn fit only; the grid fit is cheap on every call).
        fit: "grid" or "sklearn" (see above).
        eig_cache_mb: memory bound of the grid fit's eigendecompositions.
    """

    LADDER_START = 8
    COARSE = 3  # the grid fit's coarse pass takes every COARSE-th noise level

    def __init__(
        self, length_scale: float = 0.3, noise_level: float = 0.1, refit_growth: float = 1.0,
        fit: str = "grid", eig_cache_mb: float = 64.0,
    ) -> None:
        if fit not in GP_FITS:
            raise ConfigError(f"fit={fit!r}: must be one of {', '.join(GP_FITS)}")
        self.fit = fit
        self.eig_cache_mb = eig_cache_mb
        # (n, length-scale index) -> (eigenvalues, eigenvectors); (n, -1) -> the coarse pass's
        # side-by-side arrays (see _coarse).
        self._eigs: OrderedDict[tuple[int, int], tuple[np.ndarray, ...]] = OrderedDict()
        self._eig_bytes = 0
        if not (math.isfinite(length_scale) and length_scale > 0):
            raise ConfigError(f"length_scale={length_scale!r}: must be a positive number")
        if not (math.isfinite(noise_level) and noise_level > 0):
            raise ConfigError(f"noise_level={noise_level!r}: must be a positive number")
        if not (math.isfinite(refit_growth) and refit_growth >= 1.0):
            raise ConfigError(f"refit_growth={refit_growth!r}: must be a number >= 1")
        self.length_scale = length_scale
        self.noise_level = noise_level
        self.refit_growth = refit_growth
        self._kernels: OrderedDict[bytes, Any] = OrderedDict()

    def __repr__(self) -> str:
        return (f"GPSmoother(length_scale={self.length_scale}, noise_level={self.noise_level}, "
                f"refit_growth={self.refit_growth}, fit={self.fit!r})")

    def _eig(self, n: int, li: int) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and eigenvectors (columns) of the RBF kernel matrix of ``n`` points
        for grid length scale ``li``, without the eigenvalues below 1e-11 (memoised).

        A dropped eigenvalue is treated as exactly 0: next to a noise level of at least 1e-8
        that changes no denominator by more than 0.1 %, and it keeps smooth kernels (long
        length scales) at a small rank, so the memo stays small.
        """
        key = (n, li)
        got = self._eigs.get(key)
        if got is not None:
            self._eigs.move_to_end(key)
            return got[0], got[1]
        if li % 2 == 0:
            # A coarse-pass length scale: copied out of the side-by-side arrays (no second
            # eigendecomposition). A contiguous copy, not a view: matrix products on a strided
            # view may round differently, and the smoothed values feed Δ's offsets.
            vec_all, lam_all, starts = self._coarse(n)
            first = int(starts[li // 2])
            last = int(starts[li // 2 + 1]) if li // 2 + 1 < starts.size else lam_all.size
            got = (lam_all[first:last].copy(), np.ascontiguousarray(vec_all[:, first:last]))
        else:
            got = _rbf_eig(n, li)
        self._remember(key, got)
        return got

    def _lml(self, yn: np.ndarray, li: int, noises: np.ndarray) -> np.ndarray:
        """Log marginal likelihood (up to a constant) of ``yn`` at length scale ``li`` for
        every noise level in ``noises``."""
        lam, vec = self._eig(yn.size, li)
        z2 = (yn @ vec) ** 2
        denom = lam[:, None] + noises[None, :]
        rest = float(yn @ yn) - float(z2.sum())  # y's energy in the dropped directions
        out = np.sum(z2[:, None] / denom + np.log(denom), axis=0)
        out += max(rest, 0.0) / noises + (yn.size - lam.size) * np.log(noises)
        return -0.5 * out

    def _coarse(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coarse pass's eigendecompositions for ``n`` points, side by side (memoised).

        ``(vectors, values, starts)``: the kept eigenvectors of every other grid length scale
        as the columns of one ``n x R`` matrix, their eigenvalues, and the first column of
        each length scale, so that one matrix product and one ``np.add.reduceat`` give the
        whole coarse table instead of a Python loop over the length scales.
        """
        key = (n, -1)
        got = self._eigs.get(key)
        if got is not None:
            self._eigs.move_to_end(key)
            return got[0], got[1], got[2]
        parts = [_rbf_eig(n, li) for li in range(0, len(GRID_LENGTH_SCALES), 2)]
        starts = np.cumsum([0] + [lam.size for lam, _ in parts[:-1]]).astype(np.intp)
        lam_all = np.concatenate([lam for lam, _ in parts])
        vec_all = np.ascontiguousarray(np.hstack([vec for _, vec in parts]))
        self._remember(key, (vec_all, lam_all, starts))
        return vec_all, lam_all, starts

    def _remember(self, key: tuple[int, int], arrays: tuple[np.ndarray, ...]) -> None:
        """Keep ``arrays`` in the memo, dropping the least recently used beyond the bound."""
        self._eigs[key] = arrays
        self._eig_bytes += sum(a.nbytes for a in arrays)
        while self._eig_bytes > self.eig_cache_mb * 2**20 and len(self._eigs) > 1:
            _, old = self._eigs.popitem(last=False)
            self._eig_bytes -= sum(a.nbytes for a in old)

    def _coarse_lml(self, yn: np.ndarray, noises: np.ndarray) -> np.ndarray:
        """:meth:`_lml` for every other grid length scale (rows) at once."""
        vec_all, lam_all, starts = self._coarse(yn.size)
        z2 = (yn @ vec_all) ** 2
        denom = lam_all[:, None] + noises[None, :]
        terms = np.add.reduceat(z2[:, None] / denom + np.log(denom), starts, axis=0)
        kept = np.diff(np.append(starts, lam_all.size))
        rest = np.maximum(float(yn @ yn) - np.add.reduceat(z2, starts), 0.0)
        terms += rest[:, None] / noises[None, :]
        terms += (yn.size - kept)[:, None] * np.log(noises)[None, :]
        return -0.5 * terms

    def grid_fit(self, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(length scale, noise level, posterior mean) of the closed-form grid fit of ``y``.

        A coarse pass (every other length scale, every ``COARSE``-th noise level), then a fine
        pass around its best (the neighbouring length scales, every noise level up to
        ``COARSE`` steps away).
        """
        mean, std = float(np.mean(y)), float(np.std(y))
        yn = (y - mean) / std
        c, n_ls = self.COARSE, len(GRID_LENGTH_SCALES)
        coarse = GRID_NOISE_LEVELS[::c]
        rows = range(0, n_ls, 2)
        table = self._coarse_lml(yn, coarse)
        ri, si = np.unravel_index(int(np.argmax(table)), table.shape)
        li0 = rows[ri]
        fine = GRID_NOISE_LEVELS[max(c * si - c, 0) : c * si + c + 1]
        rows = range(max(li0 - 1, 0), min(li0 + 2, n_ls))
        table = np.array([self._lml(yn, li, fine) for li in rows])
        ri, sj = np.unravel_index(int(np.argmax(table)), table.shape)
        li, noise = rows[ri], float(fine[sj])
        lam, vec = self._eig(y.size, li)
        smooth = vec @ (lam / (lam + noise) * (yn @ vec))
        return float(GRID_LENGTH_SCALES[li]), noise, smooth * std + mean

    def _fit_length(self, n: int) -> int:
        """The ladder length whose prefix provides the hyperparameters for ``n`` points."""
        if self.refit_growth == 1.0 or n <= self.LADDER_START:
            return n
        m = self.LADDER_START
        while True:
            nxt = max(m + 1, math.ceil(m * self.refit_growth))
            if nxt > n:
                return m
            m = nxt

    def _fit(self, y: np.ndarray, kernel: Any, optimize: bool) -> Any:
        # Imported here: readers of FIRE's records (report, dashboard) need no scikit-learn.
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        x = (np.arange(y.size, dtype=float) / y.size)[:, None]
        model = GaussianProcessRegressor(
            kernel, normalize_y=True, random_state=0,
            optimizer="fmin_l_bfgs_b" if optimize else None,
        )
        # Tiny matrices: BLAS threads only contend with each other (10-30x slower on 2 cores).
        with warnings.catch_warnings(), _blas_threads().limit(limits=1):
            # Noiseless curves (toy tasks) push the noise level to its lower bound; that is the
            # right answer, not a failure, so the bound warning would only be noise in logs.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        return model

    def __call__(self, values: np.ndarray) -> np.ndarray:
        y = _as_finite_1d(values, "GPSmoother")
        if y.size < 2 or np.ptp(y) == 0.0:
            return y.copy()
        if self.fit == "grid":
            return self.grid_fit(y)[2]
        from sklearn.gaussian_process.kernels import RBF, WhiteKernel

        # Bounds are wide (length scales below the point spacing up to ~constant curves).
        start = RBF(self.length_scale, (1e-2, 1e3)) + WhiteKernel(self.noise_level, (1e-8, 1e1))
        m = self._fit_length(y.size)
        x = (np.arange(y.size, dtype=float) / y.size)[:, None]
        if m == y.size or np.ptp(y[:m]) == 0.0:
            return np.asarray(self._fit(y, start, optimize=True).predict(x), dtype=float)
        key = y[:m].tobytes()
        fitted = self._kernels.get(key)
        if fitted is None:
            fitted = self._fit(y[:m], start, optimize=True).kernel_
            self._kernels[key] = fitted
            if len(self._kernels) > 4096:
                self._kernels.popitem(last=False)
        # The prefix's x axis spans m points; on the whole curve the same length in points
        # is a fraction m / n as long.
        params = fitted.get_params()
        kernel = RBF(params["k1__length_scale"] * m / y.size) + WhiteKernel(
            params["k2__noise_level"]
        )
        return np.asarray(self._fit(y, kernel, optimize=False).predict(x), dtype=float)


class EMASmoother:
    """Exponential moving average: ``s[0] = x[0]``, ``s[t] = alpha x[t] + (1 - alpha) s[t-1]``.

    Cheap and dependency-free, but it lags behind a rising curve.

    Args:
        alpha: weight of the newest point, in ``(0, 1]`` (1 means no smoothing).
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
            raise ConfigError(f"alpha={alpha!r}: must be in (0, 1]")
        self.alpha = alpha

    def __repr__(self) -> str:
        return f"EMASmoother(alpha={self.alpha})"

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = _as_finite_1d(values, "EMASmoother")
        out = np.empty_like(x)
        level = 0.0
        for t, value in enumerate(x):
            level = value if t == 0 else self.alpha * value + (1.0 - self.alpha) * level
            out[t] = level
        return out


class CachedSmoother:
    """Memoises another smoother by the exact bytes of its (float64) input.

    FIRE re-scores every active curve at every event while most curves have not changed, so
    caching avoids refitting a GP each time. From the outside it is pure: the same input always
    yields an equal output, and callers receive copies, so they cannot corrupt the cache.
    The cache is least-recently-used with at most ``maxsize`` entries.

    Attributes:
        hits: number of calls answered from the cache.
        misses: number of calls that ran the base smoother.
    """

    def __init__(self, base: Smoother, maxsize: int = 4096) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError(f"maxsize={maxsize!r}: must be an integer >= 1")
        self.base = base
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return f"CachedSmoother({self.base!r}, maxsize={self.maxsize})"

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(values, dtype=np.float64)
        # The shape is part of the key so that e.g. 1-D and 2-D views never collide.
        key = repr(x.shape).encode() + b"|" + x.tobytes()
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return cached.copy()
        self.misses += 1
        result = np.array(self.base(x), dtype=float)
        self._cache[key] = result
        if len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return result.copy()


# --------------------------------------------------------------------------------------------
# Points and overlap
# --------------------------------------------------------------------------------------------


def _as_float(value: object) -> float:
    if value is None or isinstance(value, bool | str | bytes):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def valid_points(values: CurveLike) -> np.ndarray:
    """Return the valid points of a raw curve as a float64 array, in order.

    A point is invalid when it is ``None``, NaN, +-inf, or not a number (a diverged or failed
    observation, spec ``reliability.md`` item 11); invalid points are dropped, not imputed.

    Args:
        values: raw metric values in step order.

    Returns:
        A new 1-D float array holding only the finite values.
    """
    if not isinstance(values, np.ndarray):
        values = list(values)
        # Fast path: the usual curve is plain floats (a check per point, not a conversion);
        # anything else (None, bools, strings, nested lists) takes the checked path below.
        if all(type(v) is float for v in values):
            floats = np.array(values, dtype=float)
            return floats[np.isfinite(floats)]
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"a curve must be 1-D, got shape {array.shape}")
    if array.dtype.kind in "fiu":
        floats = array.astype(float)
    else:
        floats = np.array([_as_float(v) for v in array], dtype=float)
    return floats[np.isfinite(floats)]


@dataclass(frozen=True)
class Overlap:
    """Where two curves overlap in performance.

    Aligned points are ``A[i + t]`` and ``B[j + t]`` for ``t in range(length)``.

    Attributes:
        i: first index of A's window.
        j: first index of B's window.
        length: number of aligned points (``>= 1``).
    """

    i: int
    j: int
    length: int


def _first_at_least(values: np.ndarray, level: float, start: int) -> int | None:
    hits = np.flatnonzero(values[start:] >= level)
    return int(hits[0]) + start if hits.size else None


def overlap(a_smooth: np.ndarray, b_smooth: np.ndarray) -> Overlap | None:
    """Align two *smoothed* curves by performance (spec section 6).

    If ``Ã`` starts below ``B̃``, the first ``i >= 1`` with ``Ã[i] >= B̃[0]`` is taken and
    ``j = 0``; otherwise the first ``j >= 0`` with ``B̃[j] >= Ã[0]`` and ``i = 0``. The
    windows then have ``L = min(len(A) - i, len(B) - j)`` points.

    Args:
        a_smooth: smoothed curve A.
        b_smooth: smoothed curve B.

    Returns:
        The overlap, or None when no such index exists (one curve never reaches the other's
        starting level) or a curve is empty.
    """
    a = np.asarray(a_smooth, dtype=float).ravel()
    b = np.asarray(b_smooth, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        return None
    i: int | None = 0
    j: int | None = 0
    if a[0] < b[0]:
        i = _first_at_least(a, float(b[0]), 1)
    else:
        j = _first_at_least(b, float(a[0]), 0)
    if i is None or j is None:
        return None
    return Overlap(i=i, j=j, length=min(a.size - i, b.size - j))


def _a_entirely_above(a_smooth: np.ndarray, b_smooth: np.ndarray) -> bool:
    """With no overlap: True when A starts at or above B and B never reaches A's start."""
    return a_smooth.size > 0 and b_smooth.size > 0 and bool(a_smooth[0] >= b_smooth[0])


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """A curve's valid raw points together with their smoothed values."""

    raw: np.ndarray
    smooth: np.ndarray


def _prepare(values: CurveLike, smoother: Smoother) -> _Curve:
    raw = valid_points(values)
    if raw.size == 0:
        return _Curve(raw, raw.copy())
    smooth = np.asarray(smoother(raw), dtype=float)
    if smooth.shape != raw.shape:
        raise ConfigError(
            f"smoother={smoother!r} returned shape {smooth.shape} for {raw.shape}: a smoother "
            "must return one value per point"
        )
    return _Curve(raw, smooth)


def _improvement(a: _Curve, b: _Curve) -> float:
    found = overlap(a.smooth, b.smooth)
    if found is not None:
        window_a = a.raw[found.i : found.i + found.length]
        window_b = b.raw[found.j : found.j + found.length]
        return float(window_a.max() - window_b.max())
    if not _a_entirely_above(a.smooth, b.smooth):
        return 0.0
    # A is entirely above B. The offsets tried are d_k = Ã[k] - B̃[0], one per smoothed point
    # of A: the shift that puts A's k-th point exactly on B's starting level, so the shifted A
    # climbs from where B starts. Only k with Ã[k] >= Ã[0] give an overlap. After the shift, A's
    # window starts at the first i with Ã[i] >= Ã[k] and B's at j = 0; comparing unshifted
    # values keeps that exact (subtracting d_k first could round a point just below the level).
    best = 0.0
    for k in np.flatnonzero(a.smooth >= a.smooth[0]):
        offset = float(a.smooth[k] - b.smooth[0])
        i = int(np.flatnonzero(a.smooth >= a.smooth[k])[0])
        length = min(a.raw.size - i, b.raw.size)
        score = float(a.raw[i : i + length].max() - offset - b.raw[:length].max())
        best = max(best, score)
    return best


def improvement(a: CurveLike, b: CurveLike, smoother: Smoother) -> float:
    """Improvement score Δ(A, B) (spec section 6): how much higher A climbs than B.

    With an overlap, ``Δ = max(A[i:i+L]) - max(B[j:j+L])`` on raw values. With no overlap:
    if A lies entirely above B, A is shifted down by each offset ``Ã[k] - B̃[0]`` (with
    ``Ã[k] >= Ã[0]``, i.e. every shift that makes A's k-th point start at B's starting level),
    Δ is recomputed for the shifted A, and the best non-negative value is returned (0 if
    none); if A lies below B, Δ = 0. Δ is not antisymmetric, and ``Δ(A, A) == 0``.

    Args:
        a: raw curve A (invalid points are dropped).
        b: raw curve B.
        smoother: used only to find the overlap.

    Returns:
        Δ(A, B) in metric units; 0.0 when either curve has no valid point.
    """
    return _improvement(_prepare(a, smoother), _prepare(b, smoother))


def _time_to_climb(a: _Curve, b: _Curve) -> float:
    if a.smooth.size == 0 or b.smooth.size == 0:
        return 0.0
    low = max(float(a.smooth[0]), float(b.smooth[0]))
    high = min(float(a.smooth.max()), float(b.smooth.max()))
    if high <= low:
        return 0.0

    def points_to_climb(smooth: np.ndarray) -> int:
        # Both levels are reached: low <= own max (via high) and high <= own max.
        return int(np.argmax(smooth >= high)) - int(np.argmax(smooth >= low))

    return float(points_to_climb(b.smooth) - points_to_climb(a.smooth))


def time_to_climb(a: CurveLike, b: CurveLike, smoother: Smoother) -> float:
    """The optional "time to climb" score (spec section 6, behind a flag).

    The common performance band is ``[max(Ã[0], B̃[0]), min(max Ã, max B̃)]``. For each
    curve, the climb time is the number of recorded points between first reaching the band's
    bottom and first reaching its top, measured on the *smoothed* curve (crossing times on raw
    values would be decided by noise). The score is B's climb time minus A's: positive when A
    crosses the band in fewer points, i.e. improves faster. 0.0 when the band is empty or a
    curve has no valid point. Like Δ, ``time_to_climb(A, A) == 0``.

    Args:
        a: raw curve A.
        b: raw curve B.
        smoother: the smoother that defines the crossings.

    Returns:
        Points (``eval_every`` units) that A saves over B; may be negative.
    """
    return _time_to_climb(_prepare(a, smoother), _prepare(b, smoother))


def _check_score(score: str) -> None:
    if score not in _SCORES:
        raise ConfigError(f"score={score!r}: must be one of {', '.join(_SCORES)}")


def _score(a: _Curve, b: _Curve, score: str) -> float:
    return _improvement(a, b) if score == "improvement" else _time_to_climb(a, b)


def score_curves(
    a: CurveLike, b: CurveLike, smoother: Smoother, score: ScoreName = "improvement"
) -> float:
    """Compare two curves with the chosen score: :func:`improvement` or :func:`time_to_climb`.

    Raises:
        ConfigError: ``score`` is not a known score name.
    """
    _check_score(score)
    return _score(_prepare(a, smoother), _prepare(b, smoother), score)


def fire_fitness(
    curves: Mapping[int, CurveLike], smoother: Smoother, score: ScoreName = "improvement",
    memo: PairMemo | None = None,
) -> dict[int, float]:
    """FIRE fitness of each member with an active evaluator (spec section 6).

    ``F(ρ) = Σ_{ρ' != ρ} Δ(C_ρ, C_ρ')`` over the given members, where ``C_ρ`` is the curve of
    ρ's evaluator. Each curve is smoothed once.

    Args:
        curves: member id -> its evaluator's raw curve, for the members of one sub-population
            that currently have an active evaluator.
        smoother: used only to find overlaps.
        score: ``"improvement"`` (Δ, the default) or ``"time_to_climb"``.
        memo: remembers each pair's score by the two curves' valid points (the same
            ``smoother`` and ``score`` must come with it): between two events only a few
            curves change, so only their pairs are scored again.

    Returns:
        Member id -> fitness; a lone member gets 0.0.
    """
    _check_score(score)
    if memo is None:
        prepared = {member: _prepare(curve, smoother) for member, curve in curves.items()}
        fitness: dict[int, float] = {}
        for member, mine in prepared.items():
            others = (theirs for other, theirs in prepared.items() if other != member)
            fitness[member] = float(sum(_score(mine, theirs, score) for theirs in others))
        return fitness
    raws = {member: valid_points(curve) for member, curve in curves.items()}
    keys = {member: raw.tobytes() for member, raw in raws.items()}
    ready: dict[int, _Curve] = {}

    def prep(member: int) -> _Curve:
        if member not in ready:
            ready[member] = _prepare(raws[member], smoother)
        return ready[member]

    fitness = {}
    for member in raws:
        total = 0.0
        for other in raws:
            if other == member:
                continue
            pair = (keys[member], keys[other])
            value = memo.get(pair)
            if value is None:
                value = _score(prep(member), prep(other), score)
                memo.put(pair, value)
            total += value
        fitness[member] = float(total)
    return fitness


class PairMemo:
    """A bounded least-recently-used memo of pair scores (a pure cache: see fire_fitness)."""

    def __init__(self, maxsize: int = 65536) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[bytes, bytes]) -> float | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: tuple[bytes, bytes], value: float) -> None:
        self._data[key] = value
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)


# --------------------------------------------------------------------------------------------
# Sign test and evaluator judgement
# --------------------------------------------------------------------------------------------


def _sign_test(evaluator: _Curve, child: _Curve) -> float | None:
    found = overlap(evaluator.smooth, child.smooth)
    if found is None:
        # Entirely above: the evaluator beats the child at every level it could be compared.
        return 0.0 if _a_entirely_above(evaluator.smooth, child.smooth) else None
    window_e = evaluator.raw[found.i : found.i + found.length]
    window_c = child.raw[found.j : found.j + found.length]
    wins = int(np.count_nonzero(window_e > window_c))
    # P[Binomial(L, 1/2) >= wins] = sf(wins - 1).
    from scipy.stats import binom  # here: readers of FIRE's records need no scipy

    return float(binom.sf(wins - 1, found.length, 0.5))


def sign_test(eval_curve: CurveLike, child_curve: CurveLike, smoother: Smoother) -> float | None:
    """One-sided sign test that the evaluator's curve is above the child's (spec section 7).

    The curves are aligned with :func:`overlap`; ``k`` counts aligned points where the
    evaluator is *strictly* higher (ties count as losses), and ``p = P[Binomial(L, 1/2) >= k]``.

    Args:
        eval_curve: the evaluator's raw curve.
        child_curve: the child's raw curve.
        smoother: used only to find the overlap.

    Returns:
        The p-value; 0.0 when there is no overlap and the evaluator is entirely above; None when
        the test can never succeed (no overlap with the evaluator below, or an empty curve).
    """
    return _sign_test(_prepare(eval_curve, smoother), _prepare(child_curve, smoother))


def _check_p_stat(p_stat: float) -> None:
    if not (isinstance(p_stat, int | float) and 0.0 < p_stat < 1.0):
        raise ConfigError(f"p_stat={p_stat!r}: must be a number in (0, 1)")


def stop_threshold(steps_trained: int, max_eval_steps: int, p_stat: float) -> float:
    """Stop-2 threshold ``p_stat + max(0, 1 - T / max_eval_steps)`` (spec section 7).

    It falls linearly from ``1 + p_stat`` at ``T = 0`` to ``p_stat`` at
    ``T >= max_eval_steps``, so early on no p-value can stop an evaluator.

    Raises:
        ConfigError: ``steps_trained < 0``, ``max_eval_steps <= 0`` or ``p_stat`` outside (0, 1).
    """
    if steps_trained < 0:
        raise ConfigError(f"steps_trained={steps_trained!r}: must be >= 0")
    if max_eval_steps <= 0:
        raise ConfigError(f"max_eval_steps={max_eval_steps!r}: must be > 0")
    _check_p_stat(p_stat)
    return p_stat + max(0.0, 1.0 - steps_trained / max_eval_steps)


def min_points_to_pass(p_stat: float) -> int:
    """Smallest number of aligned points ``L`` with ``0.5 ** L < p_stat``.

    Below it even a perfect L/L sign test cannot pass (7 for ``p_stat = 0.01``), which is why
    curves record about 10 points per interval (spec sections 4 and 8).

    Raises:
        ConfigError: ``p_stat`` outside (0, 1).
    """
    _check_p_stat(p_stat)
    length = 1
    # Counting up is exact, unlike ceil(log2(1 / p_stat)) at powers of two.
    while 0.5**length >= p_stat:
        length += 1
    return length


@dataclass(frozen=True)
class Judgement:
    """An evaluator's outcome at one ready point.

    Attributes:
        outcome: ``"continue"``, ``"stop_no_overlap"``, ``"stop_p_value"`` or ``"success"``.
        p_value: the sign test's p-value; None when not computed or when it can never succeed.
        delta: the score of the evaluator against the child (Δ unless another score is chosen);
            it also ranks several successes on one child.
    """

    outcome: str
    p_value: float | None
    delta: float


def judge(
    eval_curve: CurveLike,
    child_curve: CurveLike,
    steps_trained: int,
    max_eval_steps: int,
    p_stat: float,
    smoother: Smoother,
    min_points: int = 3,
    score: ScoreName = "improvement",
) -> Judgement:
    """Decide an evaluator's fate at one of its ready points (spec section 7, stops 1, 2, success).

    Checked in this order:

    1. Fewer than ``min_points`` valid points on either curve: not ready -> ``"continue"``,
       unless ``T >= max_eval_steps``, then ``"stop_no_overlap"`` (Decision: otherwise an
       evaluator whose curve is all NaN, e.g. diverged, would hold its worker forever).
    2. Success: ``Δ > 0`` and ``p < p_stat`` -> ``"success"`` (checked before the stops, so a
       winning evaluator is never discarded at its last ready point).
    3. Stop 1: no overlap and ``T >= max_eval_steps`` -> ``"stop_no_overlap"``.
    4. Stop 2: overlap and ``p > stop_threshold(T)`` -> ``"stop_p_value"``.
    5. Otherwise ``"continue"``.

    Stop 3 (parent or child overwritten) is the caller's business: it needs population state.

    Args:
        eval_curve: the evaluator's raw curve.
        child_curve: the child's raw curve.
        steps_trained: T, steps the evaluator has trained.
        max_eval_steps: the evaluation budget in steps (spec default: 3 intervals).
        p_stat: significance level of the sign test (spec default 0.01).
        smoother: used only to find the overlap.
        min_points: valid points both curves need before anything is judged.
        score: ``"improvement"`` (Δ, default) or ``"time_to_climb"`` for the success rule.

    Raises:
        ConfigError: an argument breaks its rule (see :func:`stop_threshold`), ``min_points < 1``
            or an unknown ``score``.
    """
    threshold = stop_threshold(steps_trained, max_eval_steps, p_stat)
    if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 1:
        raise ConfigError(f"min_points={min_points!r}: must be an integer >= 1")
    _check_score(score)
    out_of_time = steps_trained >= max_eval_steps

    evaluator = _prepare(eval_curve, smoother)
    child = _prepare(child_curve, smoother)
    if evaluator.raw.size < min_points or child.raw.size < min_points:
        return Judgement(STOP_NO_OVERLAP if out_of_time else CONTINUE, None, 0.0)

    p_value = _sign_test(evaluator, child)
    delta = _score(evaluator, child, score)
    if p_value is not None and delta > 0.0 and p_value < p_stat:
        return Judgement(SUCCESS, p_value, delta)
    has_overlap = overlap(evaluator.smooth, child.smooth) is not None
    if not has_overlap and out_of_time:
        return Judgement(STOP_NO_OVERLAP, p_value, delta)
    if has_overlap and p_value is not None and p_value > threshold:  # p is set when overlapping
        return Judgement(STOP_P_VALUE, p_value, delta)
    return Judgement(CONTINUE, p_value, delta)
